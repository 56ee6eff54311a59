"""The quantization attacks as registered attacks: model in, quantized copy out, with config and cost.
`quantize`: per-weight quantizers (RTN, backends); `gptq` and `awq`: calibrated (quant.deploy); `deploy`:
any quantizer by vocabulary name ("rtn4_g64", "gptq4_g128", "q4_k_m", "bnb_fp4_load", "fp"), the form the audit
calls. With `originals=` (restore.Originals) the model itself is quantized (no copy) and the caller restores it;
`bnb_load`: the saved folder loaded through transformers + BitsAndBytesConfig (quant.bnb_load)."""
from __future__ import annotations

import copy

from ..registry import register
from .base import AttackResult, auditable, measure_cost
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
                    native: bool = False, include: str | None = None, exclude: str | None = None,
                    originals=None) -> AttackResult:
    """Weight quantization (RTN or a real backend): returns the deployed model (docs/science.md §3).

    native=False (default): a plain model whose weights are the backend's dequantized weights, exact
    for weight-only quantization and fast everywhere. native=True: the library's own low-bit modules
    and kernels (Linear layers only; embeddings / LM head stay full precision). native=True always works on a
    copy: the library swaps modules, which restoring weights would not undo."""
    q = get_quantizer(backend, bits, group, scheme, kind=kind)
    cfg = {**q.config(), "name": q.name, "embeddings": embeddings, "lm_head": lm_head, "native": native,
           "include": include, "exclude": exclude, "library_version": _lib_version(backend)}
    with measure_cost() as cost:
        if native and backend != "rtn":
            out, info = q.native(copy.deepcopy(model)), {"mode": "native"}
        else:
            out, info = quantize_model(model, q, inplace=originals is not None, embeddings=embeddings, lm_head=lm_head,
                                       include=include, exclude=exclude)
            info = {"mode": "dequantized", "n_tensors": info["n_tensors"], "n_weights": info["n_weights"]}
    out.eval()
    return AttackResult(out, {"attack": "quantize", "config": cfg, "cost": cost, **info})


def _calibrated(method: str, model, tok, calib_texts, name: str, n_calib: int, max_len: int, seed: int,
                options: dict | None, include: str | None, exclude: str | None, originals=None) -> AttackResult:
    from .quant.deploy import deploy, json_info

    with measure_cost() as cost:
        out, info = deploy(model, tok, name, calib_texts, n_calib=n_calib, max_len=max_len, seed=seed,
                           options=options, include=include, exclude=exclude, inplace=originals is not None)
    rec = json_info(info)
    cfg = {**rec.pop("config"), "name": rec.pop("name"), "include": include, "exclude": exclude,
           "calib": rec.pop("calib"), "options": rec.pop("options"), "library_version": None}
    return AttackResult(out, {"attack": method, "config": cfg, "cost": cost, **rec})


def calibrated_name(method: str, bits: int, group: int | None, scheme: str | None, flag: bool = False) -> str:
    """The vocabulary name of a GPTQ / AWQ setting, e.g. gptq4_sym_g128_actorder, awq4_asym_g128_noclip."""
    scheme = scheme or ("sym" if method == "gptq" else "asym")
    name = f"{method}{bits}_{scheme}_" + (f"g{group}" if group else "ch")
    return name + ("_actorder" if method == "gptq" and flag else "_noclip" if method == "awq" and flag else "")


@register("attacks", "gptq")
def gptq_attack(model, tok=None, calib_texts: list[str] | None = None, bits: int = 4, group: int | None = 128,
                scheme: str = "sym", act_order: bool = False, damp: float = 0.01, n_calib: int = 128,
                max_len: int = 512, seed: int = 0, include: str | None = None, exclude: str | None = None,
                originals=None) -> AttackResult:
    """GPTQ (Frantar et al. 2022) with calibration texts: returns the deployed model (dequantized weights)."""
    return _calibrated("gptq", model, tok, calib_texts, calibrated_name("gptq", bits, group, scheme, act_order),
                       n_calib, max_len, seed, {"damp": damp}, include, exclude, originals)


@register("attacks", "awq")
def awq_attack(model, tok=None, calib_texts: list[str] | None = None, bits: int = 4, group: int | None = 128,
               scheme: str = "asym", clip: bool = True, duo: bool = False, n_calib: int = 128, max_len: int = 512,
               seed: int = 0, originals=None) -> AttackResult:
    """AWQ (Lin et al. 2024) with calibration texts: activation-aware scales folded, then group RTN."""
    return _calibrated("awq", model, tok, calib_texts, calibrated_name("awq", bits, group, scheme, not clip),
                       n_calib, max_len, seed, {"duo": duo}, None, None, originals)


def _is_deployment(name: str) -> bool:
    from .quant.spec import is_quantizer

    return name == "fp" or is_quantizer(name)


def _missing_backend(name: str) -> str | None:
    from .quant.backends import available, install_hint
    from .quant.spec import quantizer_config

    if name == "fp":
        return None
    b = quantizer_config(name)["backend"]
    return None if b == "rtn" or available(b) else f"backend {b!r} not installed: {install_hint(b)}"


def _modifies(name: str) -> bool:
    """Whether the deployment changes the model's own weights (loaded ones build a new model from its folder)."""
    from .quant.spec import is_loaded

    return name != "fp" and not is_loaded(name)


def _vocabulary() -> list[str]:
    from .quant.spec import NAMED

    return ["fp", *sorted(NAMED), "GGUF kinds and RTN specs (amnesiac ls attacks)"]


@register("attacks", "deploy")
@auditable(_is_deployment, lambda name, ctx: {"name": name, "calib_texts": ctx.calib_texts, "seed": ctx.seed},
           modifies=_modifies, vocabulary=_vocabulary, unavailable=_missing_backend)
def deploy_attack(model, tok=None, name: str = "fp", calib_texts: list[str] | None = None, seed: int = 0,
                  originals=None, **select) -> AttackResult:
    """Any quantizer by vocabulary name (RTN specs, GGUF kinds, backends, gptq*/awq*; "fp": unchanged)."""
    from .quant.deploy import deploy, json_info

    with measure_cost() as cost:
        out, info = deploy(model, tok, name, calib_texts, seed=seed, inplace=originals is not None, **select)
    rec = json_info(info)
    return AttackResult(out, {"attack": "deploy", "config": {"name": rec.pop("name"), "config": rec.pop("config")},
                              "cost": cost, "mode": rec.get("mode"), "n_tensors": rec.get("n_tensors")})


@register("attacks", "bnb_load")
def bnb_load_attack(model, tok=None, kind: str = "fp4", double_quant: bool = False, path: str | None = None) -> AttackResult:
    """bitsandbytes as users load it: the saved folder through transformers + BitsAndBytesConfig (fp4 | nf4 | int8)."""
    from .quant.deploy import deploy

    name = f"bnb_{kind}_load" + ("_dq" if double_quant else "")
    with measure_cost() as cost:
        out, info = deploy(model, tok, name, path=path)
    cfg = {**info.pop("config"), "name": info.pop("name"), "library_version": _lib_version("bnb")}
    return AttackResult(out, {"attack": "bnb_load", "config": cfg, "cost": cost, **info})
