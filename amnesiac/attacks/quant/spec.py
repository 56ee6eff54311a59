"""Quantizers by name: one vocabulary for attacks, audits and quantization-aware unlearning (`--robust-to`).

Accepted names: the audit's named attacks (`rtn8`, `rtn4_g64`, `hqq4`, `bnb_nf4`, …: NAMED below),
RTN specs (`rtn4_g128`, `rtn4_asym_g128`, `rtn8_ch`: attacks.quant.rtn.parse_rtn) and llama.cpp GGUF
formats (`q4_1`, `gguf_q8_0`, K-quants `q4_k`, `q6_k`, file types `q4_k_m`: gguf_backend.parse_gguf). Each resolves to `get_quantizer(**config)`, so
whoever asks for "q4_1" gets the very object the attack uses (one implementation, docs/science.md §2b).
Calibrated names (`gptq4_g128`, `awq4_g128`, …) resolve to a config too, but are applied to a whole
model with calibration texts by `deploy.deploy(model, tok, name, calib_texts)` (the one entry point for
every quantizer name). Loaded names (`bnb_fp4_load`, `bnb_nf4_load_dq`, `bnb_int8_load`, …: LOADED) are
what a user runs: the model's saved folder loaded through transformers + BitsAndBytesConfig
(attacks.quant.bnb_load), also applied by deploy(); `bnb_fp4`, `bnb_nf4_dq`, … simulate the same weights.
"""
from __future__ import annotations

import re

# name -> get_quantizer kwargs (the audit's attack names; amnesiac.audit re-exports this as QUANT)
NAMED = {
    "rtn8": dict(backend="rtn", bits=8, group=None, scheme="sym"),
    "rtn4_g64": dict(backend="rtn", bits=4, group=64, scheme="sym"),
    "rtn4_g128_asym": dict(backend="rtn", bits=4, group=128, scheme="asym"),
    "rtn3_g64": dict(backend="rtn", bits=3, group=64, scheme="sym"),
    "rtn2_g64": dict(backend="rtn", bits=2, group=64, scheme="sym"),
    "hqq4": dict(backend="hqq", bits=4, group=64),
    "quanto4": dict(backend="quanto", bits=4),
    "quanto8": dict(backend="quanto", bits=8),
    "torchao4": dict(backend="torchao", bits=4, group=32),
    "bnb_nf4": dict(backend="bnb", bits=4, kind="nf4"),
    "bnb_fp4": dict(backend="bnb", bits=4, kind="fp4"),  # BitsAndBytesConfig(load_in_4bit=True)'s default type
    "bnb_nf4_dq": dict(backend="bnb", bits=4, kind="nf4", double_quant=True),
    "bnb_fp4_dq": dict(backend="bnb", bits=4, kind="fp4", double_quant=True),
    "bnb_int8": dict(backend="bnb", bits=8, kind="int8"),
    # a whole GGUF file as llama.cpp writes it for Q4_1: Linear Q4_1 and the (tied) token embedding Q8_0
    "q4_1_file": dict(backend="gguf", kind="q4_1", embed="q8_0"),
    # llama-quantize's Q4_K_M / Q6_K files: every weight (token embedding and an untied output included)
    # at the type llama.cpp picks for it (gguf_mix.py)
    "q4_k_m_file": dict(backend="gguf", kind="q4_k_m", embed="q4_k_m", head=True),
    "q6_k_file": dict(backend="gguf", kind="q6_k", embed="q6_k", head=True),
}
# Loaded: the saved model folder through transformers' from_pretrained(quantization_config=BitsAndBytesConfig(...)),
# bitsandbytes' real modules and kernels (blocksize 64; _dq = bnb_4bit_use_double_quant; int8 = load_in_8bit
# with transformers' default outlier threshold 6.0). Applied by deploy(), which needs the folder (bnb_load.py).
LOADED = {
    "bnb_fp4_load": dict(backend="bnb_load", kind="fp4", double_quant=False),
    "bnb_fp4_load_dq": dict(backend="bnb_load", kind="fp4", double_quant=True),
    "bnb_nf4_load": dict(backend="bnb_load", kind="nf4", double_quant=False),
    "bnb_nf4_load_dq": dict(backend="bnb_load", kind="nf4", double_quant=True),
    "bnb_int8_load": dict(backend="bnb_load", kind="int8", double_quant=False),
}
# "N-bit" as the sweeps say it: RTN per-channel at 8 bits, symmetric group 64 below (16 = full precision)
BIT_WIDTHS = {16: "fp", 8: "rtn8", 4: "rtn4_g64", 3: "rtn3_g64", 2: "rtn2_g64"}
# GGUF formats: legacy 32-blocks, K-quants (256 super-blocks, llama.cpp's fallback for other widths), and
# llama.cpp file types that mix them per tensor (Linear weights only; the *_file names add the embedding)
GGUF_KINDS = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m")
_RTN = re.compile(r"rtn(\d)(?:_(sym|asym))?(?:_(?:g(\d+)|ch))?(?:_(sym|asym))?")
# Calibrated quantizers (they need calibration texts and the whole model, so they are applied by
# attacks.quant.deploy.deploy, not by a per-weight function): gptq<bits>[_sym|_asym][_g<group>|_ch][_actorder]
# (sym by default, as gptqmodel/AutoGPTQ) and awq<bits>[_sym|_asym][_g<group>|_ch][_noclip] (asym, as AutoAWQ).
# No group given means g128, the methods' usual setting; _ch is one group per output channel.
CALIBRATED = ("gptq", "awq")
CALIBRATED_NAMED = ("gptq4_g128", "gptq8_g128", "gptq3_g128", "gptq2_g64", "gptq4_g128_actorder", "awq4_g128")
_CAL = re.compile(r"(gptq|awq)(\d)(?:_(sym|asym))?(?:_(?:g(\d+)|(ch)))?(?:_(actorder|noclip))?")


def quantizer_config(name: str) -> dict:
    """get_quantizer kwargs for a quantizer name; unknown names raise ValueError listing the vocabulary."""
    s = name.strip().lower()
    if s == "fp":
        raise ValueError("'fp' is full precision, not a quantizer")
    if s in NAMED:
        return dict(NAMED[s])
    if s in LOADED:
        return dict(LOADED[s])
    g = s.removeprefix("gguf_")
    if g in GGUF_KINDS:
        return dict(backend="gguf", kind=g)
    m = _RTN.fullmatch(s)
    if m and not (m.group(2) and m.group(4)):
        return dict(backend="rtn", bits=int(m.group(1)), group=int(m.group(3)) if m.group(3) else None,
                    scheme=m.group(2) or m.group(4) or "sym")
    m = _CAL.fullmatch(s)
    if m and 2 <= int(m.group(2)) <= 8 and (m.group(6) or "") in ({"gptq": "actorder", "awq": "noclip"}[m.group(1)], ""):
        method, bits = m.group(1), int(m.group(2))
        group = None if m.group(5) else int(m.group(4) or 128)
        if method == "gptq":
            return dict(backend="gptq", bits=bits, group=group, scheme=m.group(3) or "sym", act_order=bool(m.group(6)))
        return dict(backend="awq", bits=bits, group=group, scheme=m.group(3) or "asym", clip=not m.group(6))
    raise ValueError(f"unknown quantizer {name!r}; available: {', '.join(NAMED)}, {', '.join(LOADED)}, "
                     f"{', '.join(GGUF_KINDS)} (or gguf_<kind>), RTN specs rtn<bits>[_sym|_asym][_g<group>|_ch], "
                     f"and calibrated {', '.join(CALIBRATED_NAMED)} (gptq<bits>[_sym|_asym][_g<group>|_ch][_actorder], "
                     "awq<bits>[_sym|_asym][_g<group>|_ch][_noclip])")


def is_calibrated(name: str) -> bool:
    """True for names that need calibration data (GPTQ, AWQ): apply them with deploy(), not quantize_model."""
    return quantizer_config(name)["backend"] in CALIBRATED


def is_loaded(name: str) -> bool:
    """True for names applied by loading the model's saved folder (bnb_*_load): deploy() needs that folder."""
    return quantizer_config(name)["backend"] == "bnb_load"


def is_quantizer(name: str) -> bool:
    """Whether `name` belongs to the vocabulary (full precision, "fp", does not)."""
    try:
        quantizer_config(name)
        return True
    except ValueError:
        return False


def quantizer_from_name(name: str):
    """The attack's own quantizer object for `name` (raises BackendMissing with an install hint).
    Calibrated names (gptq*, awq*) have no per-weight quantizer: they raise, pointing to deploy()."""
    from .backends import get_quantizer

    cfg = quantizer_config(name)
    if cfg["backend"] == "bnb_load":
        kind = f"bnb_{cfg['kind']}" + ("_dq" if cfg["double_quant"] else "")
        raise ValueError(f"{name} loads the model's saved folder through transformers + BitsAndBytesConfig, not a "
                         f"per-weight quantizer: use amnesiac.attacks.quant.deploy.deploy(model, tok, {name!r}) on a "
                         f"model loaded from its folder, or {kind!r} (the same weights, simulated per weight)")
    if cfg["backend"] in CALIBRATED:
        raise ValueError(f"{name} is calibrated ({cfg['backend'].upper()} needs calibration texts and the whole model), "
                         f"not a per-weight quantizer: use amnesiac.attacks.quant.deploy.deploy(model, tok, {name!r}, calib_texts)")
    return get_quantizer(**cfg)


def parse_names(spec: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """'q4_1,rtn8' or ['q4_1', 'rtn8'] → validated, de-duplicated, normalised names (order kept)."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for it in items:
        s = str(it).strip().lower()
        if not s:
            continue
        quantizer_config(s)
        if s not in out:
            out.append(s)
    return out
