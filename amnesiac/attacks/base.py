"""What every attack returns, and how its cost is measured.

An attack takes a model (and tokenizer) and returns an AttackResult: the transformed model when the
attack changes weights (quantization, relearning), or None when it only measures (prompt attacks,
probes), plus a JSON-able record {attack, config, cost, ...}. `apply_attack(name, model, tok, **config)`
runs one; the input model is never modified unless the caller hands the attack `originals=` (restore.py),
in which case the attack works on the model itself and the caller restores it.

The audit calls attacks by the names of its vocabulary ("rtn4_g64", "gptq4_g128", "paraphrase", "relearn",
…) through `attacked(name, model, tok, ctx)`. A registered attack joins that vocabulary with `@auditable`:
`accepts(name)` claims names, `bind(name, ctx)` turns the audit's context into the attack's keyword
arguments, `modifies(name)` says whether the weights change (then the attack runs in place inside
restore.restoring). Adding an attack to the audit is one file: the attack, registered and auditable.
"""
from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from ..registry import lookup, registry


@dataclass
class AttackResult:
    model: Any | None  # the attacked model (a copy, or the model itself in place), or None: unchanged weights
    record: dict[str, Any] = field(default_factory=dict)  # {attack, config, cost, ...}; JSON-able
    # how the audit measures the result (defaults: every forget and retain item, their own prompts)
    prompts: list[str] | None = None  # one prompt per forget item, in place of the item's question
    stop_strings: tuple[str, ...] | None = None  # generation stops for those prompts
    items: list[int] | None = None  # the forget items the attack is measured on (indices); None: all
    measure_retain: bool = True  # False: the attack concerns the forget prompts only


@dataclass
class AttackContext:
    """What the audit hands every attack: the data, calibration texts, seed, and where the model's
    original weights can be read back (restore.Originals) so that weight attacks run in place."""
    forget: list
    retain: list
    calib_texts: list[str] = field(default_factory=list)
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)  # per-attack audit settings, e.g. relearn_steps
    originals: Any = None
    fmt: Any = None  # the bound prompt format (data.prompt.BoundFormat) every prompt of the audit uses


@dataclass
class AuditSpec:
    accepts: Callable[[str], bool]
    bind: Callable[[str, AttackContext], dict]
    modifies: Callable[[str], bool]
    vocabulary: Callable[[], list[str]]  # the names it accepts, for "available: …" (families described)
    unavailable: Callable[[str], str | None] = lambda name: None  # why it cannot run here (missing extra)


def auditable(accepts: Callable[[str], bool], bind: Callable[[str, AttackContext], dict], *,
              modifies: bool | Callable[[str], bool] = True, vocabulary: Callable[[], list[str]] | None = None,
              unavailable: Callable[[str], str | None] | None = None):
    """Decorator (under @register("attacks", ...)): makes the attack callable by name from the audit."""
    def deco(fn):
        fn.audit = AuditSpec(accepts, bind, modifies if callable(modifies) else (lambda name: bool(modifies)),
                             vocabulary or (lambda: []), unavailable or (lambda name: None))
        return fn
    return deco


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return float("nan")


@contextmanager
def measure_cost() -> Iterator[dict]:
    """Fills the yielded dict with wall_s, rss_start_mb / rss_end_mb, peak_rss_mb (the process's
    high-water mark since start: on CPU a per-call peak cannot be isolated without a sampler) and,
    on CUDA, the peak allocated during the call (cuda_peak_mb)."""
    cost: dict[str, Any] = {"rss_start_mb": round(_rss_mb(), 1)}
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        yield cost
    finally:
        cost["wall_s"] = round(time.perf_counter() - t0, 4)
        cost["rss_end_mb"] = round(_rss_mb(), 1)
        cost["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        if cuda:
            cost["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        cost["threads"] = torch.get_num_threads()


def apply_attack(name: str, model, tok=None, /, **config) -> AttackResult:
    """Run the registered attack `name` (see `amnesiac ls attacks`) on a model; returns AttackResult."""
    from .. import attacks  # noqa: F401  (fills the registry)

    return lookup("attacks", name)(model, tok, **config)


def resolve_attack(name: str) -> tuple[str, AuditSpec]:
    """(registry key, its AuditSpec) of the auditable attack that claims `name`; KeyError listing the rest."""
    from .. import attacks  # noqa: F401  (fills the registry)

    n = name.strip().lower()
    for key, fn in sorted(registry("attacks").items()):
        spec = getattr(fn, "audit", None)
        if spec is not None and spec.accepts(n):
            return key, spec
    raise KeyError(f"unknown attack {name!r}; available: {', '.join(audit_vocabulary())}")


def audit_vocabulary() -> list[str]:
    from .. import attacks  # noqa: F401

    return [v for _, fn in sorted(registry("attacks").items()) if getattr(fn, "audit", None)
            for v in fn.audit.vocabulary()]


@contextmanager
def attacked(name: str, model, tok, ctx: AttackContext) -> Iterator[AttackResult]:
    """The audit attack `name` applied to `model`, for the duration of the block. A weight attack runs on
    the model itself and its original weights are back on exit, also on error (restore.restoring)."""
    key, spec = resolve_attack(name)
    kw = spec.bind(name.strip().lower(), ctx)
    if not spec.modifies(name.strip().lower()):
        yield apply_attack(key, model, tok, **kw)
        return
    from .restore import restoring

    with restoring(model, ctx.originals) as orig:
        yield apply_attack(key, model, tok, **kw, originals=orig)
