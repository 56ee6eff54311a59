"""Machine description written into every benchmark JSON."""
import os
import platform


def machine() -> dict:
    import torch

    from amnesiac.io import versions

    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "versions": versions()}


def cli_env(home, threads: int | None) -> dict:
    """Environment of a timed `amnesiac` subprocess: its own $AMNESIAC_HOME; OMP_NUM_THREADS only when asked
    (otherwise the CLI's own thread choice, what a user gets)."""
    import os

    env = {**os.environ, "AMNESIAC_HOME": str(home)}
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def timed_cli(args: list[str], env: dict, out) -> tuple[float, list[str], dict]:
    """Run `python -m amnesiac.cli ARGS` as a user would (a subprocess with `env`), time it end to end and read the
    summary.json it wrote into `out` → (wall seconds, stdout lines, summary). A failing command ends the benchmark."""
    import json
    import subprocess
    import sys
    import time
    from pathlib import Path

    cmd = [sys.executable, "-m", "amnesiac.cli", *args]
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{args[0]} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return wall, r.stdout.splitlines(), json.loads((Path(out) / "summary.json").read_text())
