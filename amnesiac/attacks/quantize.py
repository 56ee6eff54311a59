"""The quantization attack as a registered attack: model in, quantized copy out, with config and cost."""
from __future__ import annotations

import copy

from ..registry import register
from .base import AttackResult, measure_cost
from .quant import get_quantizer, quantize_model


def _lib_version(backend: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    dist = {"quanto": "optimum-quanto", "hqq": "hqq", "torchao": "torchao", "bnb": "bitsandbytes", "gguf": "gguf"}.get(backend)
    try:
        return version(dist) if dist else None
    except PackageNotFoundError:
        return None


@register("attacks", "quantize")
def quantize_attack(model, tok=None, backend: str = "rtn", bits: int = 4, group: int | None = None,
                    scheme: str = "sym", kind: str | None = None, embeddings: bool = False, lm_head: bool = False,
                    native: bool = False, include: str | None = None, exclude: str | None = None) -> AttackResult:
    """Weight quantization (RTN or a real backend): returns the deployed model (docs/science.md §3).

    native=False (default): a plain model whose weights are the backend's dequantized weights, exact
    for weight-only quantization and fast everywhere. native=True: the library's own low-bit modules
    and kernels (Linear layers only; embeddings / LM head stay full precision)."""
    q = get_quantizer(backend, bits, group, scheme, kind=kind)
    cfg = {**q.config(), "name": q.name, "embeddings": embeddings, "lm_head": lm_head, "native": native,
           "include": include, "exclude": exclude, "library_version": _lib_version(backend)}
    with measure_cost() as cost:
        if native and backend != "rtn":
            out, info = q.native(copy.deepcopy(model)), {"mode": "native"}
        else:
            out, info = quantize_model(model, q, embeddings=embeddings, lm_head=lm_head, include=include, exclude=exclude)
            info = {"mode": "dequantized", "n_tensors": info["n_tensors"], "n_weights": info["n_weights"]}
    out.eval()
    return AttackResult(out, {"attack": "quantize", "config": cfg, "cost": cost, **info})
