"""Real quantization libraries as optional backends (one file each; this one dispatches).

Every backend offers the same two things:
- a per-weight quantizer object: `q(w) -> dequantized w`, the library's *own* quantize→dequantize
  of one (R, C) weight, so `quantize_model(model, q)` gives a plain model that computes with exactly
  the library's deployed weights (any metric runs on it, CPU or GPU);
- `q.native(model)`: the library's model-level API, in place, with its real low-bit modules and
  kernels (what a user deploying the library runs); slower on CPU, used to check it still generates.
Measured on CPU (torch 2.13.0, transformers 5.24) — see tests/test_attacks_backends.py and
docs/guides/quantization-backends.md.
"""
from __future__ import annotations

import importlib.util

from ...errors import UserError

INSTALL = {  # extra name in pyproject → (import name, pip hint)
    "quanto": ("optimum.quanto", "pip install 'amnesiac[quanto]'  (optimum-quanto; keep your torch: add -c with torch==<yours>)"),
    "hqq": ("hqq", "pip install 'amnesiac[hqq]'  (hqq)"),
    "torchao": ("torchao", "pip install 'amnesiac[torchao]'  (torchao)"),
    "bnb": ("bitsandbytes", "pip install 'amnesiac[bnb]'  (bitsandbytes)"),
    "gguf": ("gguf", "pip install gguf  (llama.cpp's gguf-py; a core dependency of amnesiac)"),  # kind=q4_0|q4_1|q5_0|q5_1|q8_0
}
BACKENDS = ["rtn", *INSTALL]
LOADERS = {"bnb_load": "bnb"}  # model-level loaders (deploy applies them) → the library they need


class BackendMissing(UserError, ImportError):  # amnesiac.errors family (exit 2 in the CLI)
    pass


def install_hint(backend: str) -> str:
    return INSTALL[LOADERS.get(backend, backend)][1]


def available(backend: str) -> bool:
    backend = LOADERS.get(backend, backend)
    if backend in ("rtn", "gptq", "awq"):  # written in torch alone, always there
        return True
    mod = INSTALL[backend][0]
    try:
        return importlib.util.find_spec(mod) is not None
    except ModuleNotFoundError:  # parent package missing
        return False


def require(backend: str) -> None:
    if not available(backend):
        raise BackendMissing(f"quantization backend {backend!r} is not installed: {INSTALL[backend][1]}")


def get_quantizer(backend: str = "rtn", bits: int = 4, group: int | None = None, scheme: str = "sym", **kw):
    """The per-weight quantizer of a backend. scheme applies to RTN; bnb takes kind='nf4'|'fp4'|'int8'."""
    backend = backend.lower()
    if backend in LOADERS:
        raise ValueError(f"{backend} loads a saved model folder, not a per-weight quantizer: use "
                         "amnesiac.attacks.quant.deploy.deploy(model, tok, name) on a model loaded from its folder")
    if backend in ("gptq", "awq"):
        raise ValueError(f"{backend} is a calibrated quantizer (it needs calibration texts and the whole model), not a "
                         "per-weight one: use amnesiac.attacks.quant.deploy.deploy(model, tok, name, calib_texts)")
    if backend == "rtn":
        from .rtn import RTN

        return RTN(bits, group, scheme)
    if backend not in INSTALL:
        raise ValueError(f"unknown quantization backend {backend!r}; available: {', '.join(BACKENDS)}")
    require(backend)
    mod = importlib.import_module(f".{backend}_backend", __package__)
    return mod.make(bits=bits, group=group, **kw)
