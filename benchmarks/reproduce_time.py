"""`amnesiac reproduce smollm2|tofu` wall time from a cold cache, on this machine.

usage: python benchmarks/reproduce_time.py smollm2|tofu [--threads N] [--out ...] [-- extra options]

cold: a fresh, empty $AMNESIAC_HOME in a temp dir. For smollm2 the fetched SmolLM2 folder of the real home is
linked into it (fetching is a download, not the protocol); everything else — known facts, every unlearning
run, every deployment and measurement, the sweep — is computed. Timed end to end as a subprocess, which is
what a user runs. Without --threads the CLI picks its own thread count (core/threads.py). Run it alone:
it keeps the CPU busy for many minutes. Budgets (issue "Speed and scale"): smollm2 ≤ 15 min, tofu ≤ 20 min.
"""
import argparse
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import cli_env, machine, timed_cli  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("protocol", choices=["smollm2", "tofu"])
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS (default: the CLI's own choice)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep", default=None, help="copy the protocol's output folder (tables, summary) here")
    ap.add_argument("extra", nargs="*", help="extra `amnesiac reproduce` options (after --)")
    a = ap.parse_args()
    from amnesiac.io import amnesiac_home, write_json

    out_json = Path(a.out or Path(__file__).parent / "results" / f"reproduce_time-{a.protocol}-cpu.json")
    with tempfile.TemporaryDirectory(prefix=f"reproduce_{a.protocol}-") as d:
        home = Path(d) / "home"
        if a.protocol == "smollm2":
            from amnesiac.models.fetch import SOURCES

            src = amnesiac_home() / "models" / SOURCES["smollm2"]["dir"]
            if not (src / "provenance.json").exists():
                raise SystemExit(f"SmolLM2 is not fetched at {src}: run `amnesiac models fetch smollm2` first")
            (home / "models").mkdir(parents=True)
            (home / "models" / src.name).symlink_to(src)
        env = cli_env(home, a.threads)
        out = Path(d) / "out"
        wall, stdout, summary = timed_cli(["reproduce", a.protocol, "--out", str(out), *a.extra], env, out)
        if a.keep:
            shutil.copytree(out, a.keep, dirs_exist_ok=True)
        rec = {"benchmark": "reproduce_time", "protocol": a.protocol, "threads": a.threads, "extra_options": a.extra,
               "cold_wall_s": round(wall, 1), "summary_wall_s": summary.get("wall_s"),
               "verdict": (summary.get("verdict") or {}).get("verdict")
               or {sc: v.get("verdict") for sc, v in (summary.get("verdicts") or {}).items()} or None,
               "cli_threads": (summary.get("versions") or {}).get("torch_threads"),
               "stdout_tail": stdout[-3:], "machine": machine(),
               "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json(out_json, rec)
    print(f"{a.protocol}: cold {rec['cold_wall_s']:.0f} s; wrote {out_json}")


if __name__ == "__main__":
    main()
