"""`amnesiac demo` wall time, cold and warm, on this machine.

usage: python benchmarks/demo_time.py [--threads N] [--warm-only --home DIR] [--out ...] [-- extra demo options]

Without --threads the demo picks its own thread count (what `make demo` does: core/threads.py); the choice
is read back from the demo's summary.json and recorded.

cold: a fresh, empty $AMNESIAC_HOME in a temp dir, so the tiny models are prepared (tokenizer, base, target,
      retrained: the bulk of the time), then every unlearning run, quantization and metric is computed;
warm: the same command again with the same $AMNESIAC_HOME and output folder, so everything comes from caches.
Each run is `python -m amnesiac.cli demo --out OUT` in a subprocess (what `make demo` runs), timed end to end.
With --warm-only --home DIR, only the warm run is timed against an existing home (e.g. ~/.cache/amnesiac).
The demo uses both cores for minutes: run it alone (flock /tmp/amnesiac_cpu.lock python benchmarks/demo_time.py).
"""
import argparse
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import cli_env, machine, timed_cli  # noqa: E402


def timed_demo(home: Path, out: Path, threads: int | None, extra: list[str]) -> dict:
    args = ["demo", "--out", str(out), *extra]
    wall, stdout, summary = timed_cli(args, cli_env(home, threads), out)
    return {"wall_s": round(wall, 2), "command": "-m amnesiac.cli " + " ".join(args), "stdout_tail": stdout[-5:],
            "prepare_s": summary.get("prepare_s"), "unlearn_s": round(sum((summary.get("unlearn_s") or {}).values()), 1),
            "demo_threads": (summary.get("versions") or {}).get("torch_threads")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the demo (default: its own choice)")
    ap.add_argument("--warm-only", action="store_true")
    ap.add_argument("--home", default=None, help="existing AMNESIAC_HOME for --warm-only")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "demo_time-cpu.json"))
    ap.add_argument("extra", nargs="*", help="extra `amnesiac demo` options (after --)")
    a = ap.parse_args()
    if a.warm_only and not a.home:
        ap.error("--warm-only needs --home (a prepared AMNESIAC_HOME)")
    rec = {"benchmark": "demo_time", "threads": a.threads, "extra_options": a.extra}
    with tempfile.TemporaryDirectory(prefix="demo_time-") as d:
        home = Path(a.home) if a.warm_only else Path(d) / "home"
        out = Path(d) / "demo"
        if not a.warm_only:
            rec["cold"] = timed_demo(home, out, a.threads, a.extra)
            print(f"cold: {rec['cold']['wall_s']:.1f} s", flush=True)
        rec["warm"] = timed_demo(home, out, a.threads, a.extra)
        print(f"warm: {rec['warm']['wall_s']:.1f} s", flush=True)
    rec.update(machine=machine(), when=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    from amnesiac.io import write_json

    write_json(a.out, rec)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
