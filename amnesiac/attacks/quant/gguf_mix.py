"""llama.cpp file types that mix formats per tensor (Q4_K_M, Q4_K_S, Q5_K_M, Q5_K_S, Q6_K), as
`llama-quantize` picks them for a Llama-architecture model without an importance matrix.

`tensor_types` follows llama-quant.cpp (llama_tensor_get_type and its fallback), for the tensors a
Llama GGUF holds, in file order:
- the default type: Q4_K for Q4_K_S/M, Q5_K for Q5_K_S/M, Q6_K for Q6_K;
- `output.weight`, and the token embedding when the file has no output (tied embeddings): Q6_K,
  or Q8_0 when its width is not a multiple of 256; an untied token embedding keeps the default;
- attn_v, counted in file order i of n: Q6_K where use_more_bits(i, n) for Q4_K_M / Q5_K_M, Q5_K
  for the first 4 in Q4_K_S; a 70B Llama (80 layers, grouped-query attention) bumps Q4_K to Q5_K;
- ffn_down of layer i of n_layer: Q6_K where use_more_bits for Q4_K_M / Q5_K_M, Q5_K for
  i < n_layer/8 in Q4_K_S;
  use_more_bits(i, n) = i < n/8 or i ≥ 7n/8 or (i − n/8) mod 3 = 2  (integer division);
- then a width that is not a multiple of the type's block falls back: Q4_K → Q5_0, Q5_K → Q5_1,
  Q6_K → Q8_0, and to F16 when it is not a multiple of 32 either. 1-D tensors (norms) stay F32.
SmolLM2-135M (hidden 576 = 2.25·256) is mostly Q5_0 under Q4_K_M for that reason: only ffn_down
(1536 inputs) holds K-quants.

`GGUFMix(ftype)` is the quantizer of such a file: it has no single rule for a lone weight, so it is
bound to a model (`bind(model)` → {weight name: quantizer}); apply.quantize_model and the collapse
diagnostic do that themselves.
"""
from __future__ import annotations

from dataclasses import dataclass

FTYPES = {"q4_k_s": "q4_k", "q4_k_m": "q4_k", "q5_k_s": "q5_k", "q5_k_m": "q5_k", "q6_k": "q6_k"}
_BLOCK = {"q4_k": 256, "q5_k": 256, "q6_k": 256, "q4_0": 32, "q4_1": 32, "q5_0": 32, "q5_1": 32, "q8_0": 32}
_FALLBACK = {"q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_types(tensors: list[tuple[str, tuple[int, ...]]], ftype: str, n_layer: int,
                 llama_70b: bool = False) -> dict[str, str]:
    """{GGUF tensor name: type} for (name, shape) in file order; shape is (rows, cols) as in torch."""
    ftype = ftype.lower()
    if ftype not in FTYPES:
        raise ValueError(f"unknown llama.cpp file type {ftype!r}; available: {', '.join(FTYPES)}")
    default = FTYPES[ftype]
    names = [n for n, _ in tensors]
    tied = "output.weight" not in names
    n_wv = sum("attn_v.weight" in n for n in names)
    i_wv = i_down = 0
    out = {}
    for name, shape in tensors:
        if len(shape) < 2 or not name.endswith("weight") or name.endswith("_norm.weight"):
            out[name] = "f32"
            continue
        cols, t = shape[-1], default
        if name == "output.weight" or (tied and name == "token_embd.weight"):
            t = "q8_0" if cols % _BLOCK[t] else "q6_k"
        elif "attn_v.weight" in name:
            if ftype in ("q4_k_m", "q5_k_m") and use_more_bits(i_wv, n_wv):
                t = "q6_k"
            elif ftype == "q4_k_s" and i_wv < 4:
                t = "q5_k"
            if llama_70b and t == "q4_k":
                t = "q5_k"
            i_wv += 1
        elif "ffn_down" in name:
            if ftype in ("q4_k_m", "q5_k_m") and use_more_bits(i_down, n_layer):
                t = "q6_k"
            elif ftype == "q4_k_s" and i_down < n_layer // 8:
                t = "q5_k"
            i_down += 1
        if cols % _BLOCK[t]:
            t = _FALLBACK.get(t, t)
            if cols % _BLOCK[t]:
                t = "f16"
        out[name] = t
    return out


def model_tensors(model) -> list[tuple[str, str, tuple[int, ...]]]:
    """(HF name, GGUF name, shape) of what gguf_io.write_gguf writes, in its order (a tied head is not written)."""
    from .gguf_io import gguf_name

    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return [(n, gguf_name(n), tuple(p.shape)) for n, p in model.state_dict().items()
            if not (n == "lm_head.weight" and tied)]


def model_types(model, ftype: str) -> dict[str, str]:
    """{HF weight name: type} for a Llama-architecture model (the tied lm_head, when selected, is the embedding)."""
    cfg = model.config
    if getattr(cfg, "model_type", None) != "llama":
        raise ValueError(f"llama.cpp's {ftype.upper()} type map is implemented for Llama-architecture models, "
                         f"not {getattr(cfg, 'model_type', None)!r}")
    rows = model_tensors(model)
    n_layer = cfg.num_hidden_layers
    big = n_layer == 80 and cfg.num_attention_heads != cfg.num_key_value_heads
    types = tensor_types([(g, s) for _, g, s in rows], ftype, n_layer, llama_70b=big)
    out = {hf: types[g] for hf, g, _ in rows}
    if "lm_head.weight" not in out and "model.embed_tokens.weight" in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def quantizer_for(kind: str):
    """The per-weight quantizer of one GGML type (K-quant with llama.cpp's fallback, or a legacy format)."""
    from .gguf_backend import GGUFQuantizer
    from .kquants import K_KINDS, KQuantizer

    return KQuantizer(kind) if kind in K_KINDS else GGUFQuantizer(kind, misfit="f16")


@dataclass(frozen=True)
class GGUFMix:
    """A llama.cpp file type: each weight gets the type llama-quantize gives it (see module doc)."""
    ftype: str = "q4_k_m"

    def __post_init__(self):
        if self.ftype not in FTYPES:
            raise ValueError(f"unknown llama.cpp file type {self.ftype!r}; available: {', '.join(FTYPES)}")

    @property
    def name(self) -> str:
        return f"gguf_{self.ftype}"

    @property
    def bits(self) -> int:
        return int(FTYPES[self.ftype][1])

    group = 256

    def config(self) -> dict:
        from importlib.metadata import version

        return {"backend": "gguf", "kind": self.ftype, "bits": self.bits, "mix": "llama_tensor_get_type",
                "gguf_version": version("gguf")}

    def bind(self, model) -> dict:
        """{weight name: the quantizer of the type llama-quantize picks for it} for this model."""
        cache: dict = {}
        # F16 (a width not a multiple of 32): any legacy format with misfit="f16" rounds such a weight to fp16
        return {n: cache.setdefault(t, quantizer_for("q8_0" if t == "f16" else t))
                for n, t in model_types(model, self.ftype).items() if t != "f32"}

    def _refuse(self, *_):
        raise ValueError(f"{self.ftype.upper()} picks a format per tensor from its name and layer: apply it to a "
                         "model (quantize_model / deploy), or use bind(model)[weight name] for one weight")

    __call__ = quantize = fake_quant = _refuse

    def native(self, model):
        from .gguf_backend import GGUFQuantizer

        return GGUFQuantizer.native(None, model)
