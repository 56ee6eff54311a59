"""GGUF out: write a Llama-architecture HF model (and its byte-level BPE tokenizer) as a `.gguf`
file, F32 or one of llama.cpp's block formats (issue 10 parts 1–2). GGUF *in* is `load.load_model`
(transformers dequantizes the file; weights, config, tokenizer and chat template all come from it).

Why: a user who unlearns a model released as GGUF ships a GGUF again. Writing one with the `gguf`
package's own quantizers gives the artefact that user ships, and reading it back through
transformers closes the loop (tests/test_gguf_io.py checks the weights come back as
GGUFQuantizer(kind)(w) bit for bit).

Layout follows llama.cpp's convert_hf_to_gguf.py (LlamaModel):
- tensor names  model.layers.N.self_attn.q_proj → blk.N.attn_q, …, model.norm → output_norm,
  lm_head → output (written only when not tied to the embedding);
- q_proj / k_proj rows are permuted per head (`_permute`: llama.cpp's rotary layout), which
  transformers' GGUF loader undoes (LlamaTensorProcessor._reverse_permute_weights);
- in a quantized file, 2-D Linear weights take the format, 1-D norms stay F32, the token embedding
  (and an untied output) take `embed_type` (default Q8_0, as in the SmolLM2 Q4_1 release), and a
  Linear whose width is not a multiple of 32 falls back to F16 (what the converter does).
Tokenizer: only byte-level BPE (GPT-2 style: tokens, merges, control tokens) is written, which is
what both the tiny test tokenizers and SmolLM2 use.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

NAME_MAP = [  # HF suffix → GGUF name, per decoder layer
    ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"), ("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm"),
]
# f32 … q8_0: one format for every Linear; q4_k_s … q6_k: llama.cpp's file types, each tensor at the type
# llama-quantize picks for it (gguf_mix.tensor_types: the embedding and output included)
FTYPES = ["f32", "f16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k"]


def gguf_name(hf_name: str) -> str:
    """'model.layers.3.mlp.up_proj.weight' → 'blk.3.ffn_up.weight'."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf_name in fixed:
        return fixed[hf_name]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", hf_name)
    if m:
        for hf, gg in NAME_MAP:
            if m.group(2) == hf:
                return f"blk.{m.group(1)}.{gg}.weight"
    raise ValueError(f"{hf_name}: no GGUF name for this tensor (only plain Llama weights are supported; "
                     "biases and other architectures are not)")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.LlamaModel.permute: (heads·2·d/2, C) → interleaved rotary halves."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tokenizer_fields(tok, n_vocab: int) -> dict:
    """tokens / token types / merges / special ids of a byte-level BPE tokenizer, padded to n_vocab."""
    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise ValueError("only byte-level BPE tokenizers (GPT-2 style) can be written to GGUF; this one is "
                         f"{model.get('type')} with pre-tokenizer {(spec.get('pre_tokenizer') or {}).get('type')}")
    vocab = dict(model["vocab"])
    used = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
    for a in spec.get("added_tokens", []):
        # transformers' GGUF tokenizer loader appends GPT2Tokenizer's default `<|endoftext|>` past the
        # vocabulary when the file has none; the model has no row for it, so it is not written back
        if a["id"] < n_vocab or a["id"] in used:
            vocab[a["content"]] = a["id"]
    if max(vocab.values()) >= n_vocab:
        raise ValueError(f"tokenizer has id {max(vocab.values())} but the model only {n_vocab} embedding rows")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [5] * n_vocab  # 5 = UNUSED (padding rows the tokenizer never emits)
    special = set(tok.all_special_ids) | {a["id"] for a in spec.get("added_tokens", []) if a.get("special")}
    for t, i in vocab.items():
        tokens[i] = t
        types[i] = 3 if i in special else 1  # 3 = CONTROL, 1 = NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre = json.dumps(spec.get("pre_tokenizer"))
    # llama.cpp's "smollm" pre-tokenizer = each digit apart, then the GPT-2 split (llama-vocab.cpp)
    pre_name = "smollm" if '"individual_digits": true' in pre else "default"
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre_name}


def _q_type(kind: str):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[kind.upper()]


@torch.no_grad()
def write_gguf(model, tokenizer, path: str | Path, ftype: str = "f32", embed_type: str | None = None,
               name: str | None = None) -> Path:
    """Write `model` (LlamaForCausalLM) + `tokenizer` to `path` (.gguf). ftype: one of FTYPES.
    embed_type: format of the token embedding / untied output (default: q8_0 when ftype is a legacy block
    format, the type llama.cpp picks for a K file type, else ftype). Written to a temp file first, then renamed."""
    import os

    import gguf

    from .gguf_backend import BLOCK, GGUFQuantizer

    ftype = ftype.lower()
    if ftype not in FTYPES:
        raise ValueError(f"unknown GGUF file type {ftype!r}; available: {', '.join(FTYPES)}")
    from .gguf_mix import FTYPES as MIXES
    from .gguf_mix import model_tensors, model_types, quantizer_for

    plan = None
    if ftype in MIXES:
        types = model_types(model, ftype)
        plan = {g: types[hf] for hf, g, _ in model_tensors(model)}
    if embed_type is None and plan is None:
        embed_type = "q8_0" if ftype.startswith("q") else ftype
    embed_type = embed_type.lower() if embed_type else None
    cfg = model.config
    if getattr(cfg, "model_type", None) != "llama":
        raise ValueError(f"write_gguf supports Llama-architecture models, not {cfg.model_type!r}")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise ValueError("write_gguf: Llama with biases is not supported")
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    if (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default") != "default":
        raise ValueError("write_gguf: rope scaling is not supported")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        w = gguf.GGUFWriter(str(tmp), "llama")
        w.add_name(name or getattr(cfg, "_name_or_path", "") or path.stem)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_rope_dimension_count(head_dim)
        w.add_rope_freq_base(float(rope))
        w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        w.add_vocab_size(cfg.vocab_size)
        w.add_file_type(getattr(gguf.LlamaFileType, "ALL_F32" if ftype == "f32" else f"MOSTLY_{ftype.upper()}"))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        tf = tokenizer_fields(tokenizer, cfg.vocab_size)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(tf["pre"])
        w.add_token_list(tf["tokens"])
        w.add_token_types(tf["types"])
        if tf["merges"]:
            w.add_token_merges(tf["merges"])
        for key, tid in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                         ("pad", tokenizer.pad_token_id), ("unk", tokenizer.unk_token_id)):
            if tid is not None:
                getattr(w, f"add_{key}_token_id")(int(tid))
        # what the tokenizer really does (its post-processor), not a flag that may not reflect it
        from ...core.logprobs import special_prefix

        adds_bos = tokenizer.bos_token_id is not None and special_prefix(tokenizer) == [tokenizer.bos_token_id]
        w.add_add_bos_token(bool(adds_bos))
        if getattr(tokenizer, "chat_template", None):
            w.add_chat_template(tokenizer.chat_template)

        tied = bool(getattr(cfg, "tie_word_embeddings", False))
        for hf_name, p in model.state_dict().items():
            if hf_name == "lm_head.weight" and tied:
                continue
            gname = gguf_name(hf_name)
            a = p.detach().float().cpu().numpy()
            if gname.endswith(("attn_q.weight", "attn_k.weight")):
                a = _permute(a, n_head if "attn_q" in gname else n_kv)
            if a.ndim == 1:
                kind = "f32"
            elif embed_type and gname.startswith(("token_embd", "output.")):
                kind = embed_type
            else:
                kind = plan[gname] if plan else ftype
            if kind.startswith("q") and a.shape[-1] % BLOCK:
                kind = "f16"  # the converter's fallback for rows that are not whole blocks
            if kind == "f32":
                w.add_tensor(gname, np.ascontiguousarray(a, dtype=np.float32))
            elif kind == "f16":
                w.add_tensor(gname, a.astype(np.float16))
            else:
                q = quantizer_for(kind) if plan or kind.endswith("_k") else GGUFQuantizer(kind)
                w.add_tensor(gname, q.pack(torch.from_numpy(np.ascontiguousarray(a))), raw_dtype=_q_type(q.stored_type(
                    a.shape[-1]) if hasattr(q, "stored_type") else kind))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
