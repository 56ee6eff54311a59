"""How many intra-op threads torch uses, chosen per workload and recorded in every output.

Why: on a busy 2-core machine two OpenMP threads of a tiny model spin-wait against other jobs; the
demo's fine-tune ran ~40× slower than with one thread under a load average of 6 (benchmarks/README.md,
load robustness). A model this small has matmuls too narrow to split anyway, so one thread costs
nothing idle. Larger models get one thread per physical core (hyper-threads share the FPU).

Precedence: an explicit request (`--threads`, `AMNESIAC_THREADS`, `set_requested`) > the user's
`OMP_NUM_THREADS` > the workload rule (parameters < SMALL_MODEL_PARAMS → 1, else physical cores).
"""
from __future__ import annotations

import os

SMALL_MODEL_PARAMS = 50_000_000  # below this a forward pass is a few ms; splitting it only adds sync cost

_requested: int | None = None
_record: dict = {}


def physical_cores() -> int:
    """Physical cores this process may run on (affinity ÷ hyper-threads per core, at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        n = os.cpu_count() or 1
    try:
        sib = open("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list").read().strip()
        per = sum(int(b) - int(a) + 1 if "-" in part else 1
                  for part in sib.split(",") for a, _, b in [part.partition("-")])
    except (OSError, ValueError):
        per = 1
    return max(1, n // max(1, per))


def _parse(value: str | int | None, source: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}={value!r}: expected a whole number of threads ≥ 1") from None
    if n < 1:
        raise ValueError(f"{source}={value!r}: expected a whole number of threads ≥ 1")
    return n


def set_requested(n: int | None) -> None:
    """An explicit thread count (the CLI's --threads); None returns to the automatic choice."""
    global _requested
    _requested = _parse(n, "--threads")
    if _requested is not None:
        configure()


def choose(n_params: int | None = None) -> tuple[int, str]:
    """(threads, why) for a workload of `n_params` parameters (None: not known yet)."""
    if _requested is not None:
        return _requested, "requested (--threads)"
    env = _parse(os.environ.get("AMNESIAC_THREADS"), "AMNESIAC_THREADS")
    if env is not None:
        return env, "AMNESIAC_THREADS"
    omp = _parse(os.environ.get("OMP_NUM_THREADS"), "OMP_NUM_THREADS")
    if omp is not None:
        return omp, "OMP_NUM_THREADS"
    if n_params is None:
        return 1, "default before a model is known (tiny workloads: 1)"
    if n_params < SMALL_MODEL_PARAMS:
        return 1, f"small model ({n_params / 1e6:.1f} M < {SMALL_MODEL_PARAMS / 1e6:.0f} M parameters)"
    return physical_cores(), f"{n_params / 1e6:.0f} M parameters: one thread per physical core"


def configure(model_or_n_params=None) -> dict:
    """Set torch's intra-op threads for this workload (a model or its parameter count); returns the record."""
    import torch

    n_params = model_or_n_params
    if model_or_n_params is not None and not isinstance(model_or_n_params, int):
        n_params = sum(p.numel() for p in model_or_n_params.parameters())
    n, why = choose(n_params)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _record.update(threads=n, why=why, physical_cores=physical_cores())
    return dict(_record)


def record() -> dict:
    """The last choice (threads, why), for provenance; configures the default when nothing ran yet."""
    return dict(_record) if _record else configure()
