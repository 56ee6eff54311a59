"""One entry point for every quantizer name: `deploy(model, tok, name, calib_texts)` → (model copy, info),
and `with deployed(model, tok, name, calib_texts) as (m, info):` → the model itself quantized, restored on exit.

Per-weight quantizers (RTN, GGUF formats, HQQ, quanto, bnb, …: spec.quantizer_config) go through
apply.quantize_model. Calibrated ones (gptq*, awq*) need calibration texts: up to n_calib of them
(default 128, a seeded sample when there are more), one sequence each, tokenized with the model's own
tokenizer and cut at max_len = 512 tokens (calib.calib_batches). Either way the result is an ordinary
model whose Linear weights are the dequantized deployed weights, so every metric runs on it unchanged.

`deployed` holds one model, not two: it quantizes in place and puts the original weights back from
where they can be read one tensor at a time (attacks/restore.py: the saved safetensors, or a spill file),
also when quantizing fails halfway. `deploy(..., inplace=True)` is the bare in-place form.

Loaded ones (bnb_*_load: spec.LOADED) load the model's saved folder through transformers +
BitsAndBytesConfig (bnb_load.load_bnb): `path` names the folder, by default the one the model was
loaded from; the result computes with bitsandbytes' own modules, not dequantized weights.

"fp" is full precision: the model itself, not a copy (callers only read it). A name whose config has
`embed` (e.g. "q4_1_file": a GGUF file as llama.cpp writes it) also quantizes the token embedding (and with
`head`, as "q4_k_m_file", an untied output layer).

info: {"name", "config", "mode", "n_tensors", "n_weights", "wall_s", ...}; for calibrated quantizers also
"codes" ({weight name: QTensor}: integer codes, scales, zero points, dequantize() == the weight in the
copy), "calib_sequences", "calib_tokens" and the method's own record. For per-weight quantizers,
"quantizer" is the object itself (its .quantize(w) gives the codes, when it has one). "codes" and
"quantizer" are objects, not JSON: `json_info(info)` drops them.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from ...errors import UserError
from .spec import CALIBRATED, quantizer_config

CALIB_N, CALIB_MAX_LEN = 128, 512
OPTIONS = {"gptq": ("damp", "block", "static_groups", "true_sequential"), "awq": ("n_grid", "duo")}
_OBJECTS = ("codes", "quantizer")


def deploy(model, tok, name: str, calib_texts: list[str] | None = None, *, n_calib: int = CALIB_N,
           max_len: int = CALIB_MAX_LEN, seed: int = 0, options: dict | None = None, inplace: bool = False,
           path=None, **select):
    """Quantize `model` (not modified unless inplace=True) by vocabulary name. `select`: the module selection of
    quantize_model (include / exclude regexes; embeddings / lm_head for per-weight quantizers only).
    `options` overrides a calibrated method's settings (GPTQ: damp, block, static_groups,
    true_sequential; AWQ: n_grid, duo)."""
    if name.strip().lower() == "fp":
        return model, {"name": "fp", "config": None, "mode": "full precision", "wall_s": 0.0}
    try:
        cfg = quantizer_config(name)
    except ValueError as e:
        raise UserError(str(e)) from None
    backend = cfg["backend"]
    t0 = time.perf_counter()
    if backend == "bnb_load":
        if options or any(select.values()):
            raise UserError(f"{name} loads the saved folder as transformers does (every Linear but the LM head); "
                            "options and module selection do not apply")
        from .bnb_load import load_bnb

        m, info = load_bnb(model, cfg["kind"], cfg["double_quant"], path)
    elif backend not in CALIBRATED:
        if options:
            raise UserError(f"options= applies to calibrated quantizers (gptq*, awq*), not to {name}")
        from .apply import quantize_model
        from .backends import get_quantizer

        embed, head = cfg.pop("embed", None), cfg.pop("head", False)
        q = get_quantizer(**cfg)
        m, info = quantize_model(model, q, inplace=inplace, **select)
        if embed:  # the token embedding (and with head, an untied output) too, at its own format: a whole GGUF file
            quantize_model(m, get_quantizer(backend="gguf", kind=embed), inplace=True, linear=False, embeddings=True,
                           lm_head=head)
            cfg.update(embed=embed, **({"head": head} if head else {}))
        info = {**info, "mode": "dequantized", "quantizer": q}
    else:
        if not calib_texts:
            raise UserError(f"{name} needs calibration texts", "pass calib_texts / --calib DATA")
        if tok is None:
            raise UserError(f"{name} needs the model's tokenizer to encode the calibration texts: pass tok")
        bad = [k for k in select if select[k] and k not in ("include", "exclude")]
        if bad:
            raise UserError(f"{name} quantizes the decoder blocks' Linear layers only; {', '.join(bad)} is not supported")
        from .calib import calib_batches, model_device

        batches = calib_batches(tok, list(calib_texts), n_calib, max_len, seed, model_device(model))
        opts = dict(options or {})
        allowed = OPTIONS[backend]
        if set(opts) - set(allowed):
            raise UserError(f"unknown {backend} option(s) {sorted(set(opts) - set(allowed))}; available: {', '.join(allowed)}")
        if backend == "gptq":
            from .gptq import gptq_model

            m, codes, info = gptq_model(model, batches, bits=cfg["bits"], group=cfg["group"], sym=cfg["scheme"] == "sym",
                                        act_order=cfg["act_order"], include=select.get("include"),
                                        exclude=select.get("exclude"), inplace=inplace, **opts)
        else:
            if select.get("include") or select.get("exclude"):
                raise UserError(f"{name}: AWQ folds scales across a whole block; include/exclude is not supported")
            from .awq import awq_model

            m, codes, info = awq_model(model, batches, bits=cfg["bits"], group=cfg["group"], scheme=cfg["scheme"],
                                       clip=cfg["clip"], inplace=inplace, **opts)
        info = {**info, "mode": "dequantized", "codes": codes, "names": list(codes), "options": opts,
                "calib": {"n_texts": len(calib_texts), "n_calib": n_calib, "max_len": max_len, "seed": seed}}
    m.eval()
    return m, {"name": name.strip().lower(), "config": cfg, **info, "wall_s": round(time.perf_counter() - t0, 4)}


@contextmanager
def deployed(model, tok, name: str, calib_texts: list[str] | None = None, *, originals=None,
             **kw) -> Iterator[tuple]:
    """`model` itself quantized as `name` inside the block, (model, info) as deploy() gives; on exit, also
    on error, its original weights are back bit for bit. `originals` (attacks.restore.Originals) says
    where they are read from; without it they are spilled to a temporary file first."""
    from .spec import is_loaded

    if name.strip().lower() == "fp" or is_loaded(name):  # nothing of `model` changes: a loaded one is a new model
        yield deploy(model, tok, name, **({k: v for k, v in kw.items() if k == "path"}))
        return
    from ..restore import restoring

    with restoring(model, originals):
        yield deploy(model, tok, name, calib_texts, inplace=True, **kw)


def json_info(info: dict) -> dict:
    """info without the objects (codes, quantizer), for a JSON record."""
    return {k: v for k, v in info.items() if k not in _OBJECTS}
