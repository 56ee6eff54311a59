"""Calibration plumbing shared by GPTQ (gptq.py) and AWQ (awq.py).

Both methods quantize a Llama decoder block by block: the hidden states entering block 0 are captured
once (a forward pre-hook that stops the model there), then each block is run on its own with the
keyword arguments the model passed it (rotary cos/sin, causal mask, position ids). Sequences are kept
separate (batch 1, no padding), so no attention mask or padding token can leak into the statistics.

Calibration texts: `calib_batches` takes up to n texts (a seeded sample when there are more), one
sequence per text, tokenized with the model's own tokenizer and truncated at max_len tokens.
"""
from __future__ import annotations

import random

import torch

from .rtn import QTensor, group_view

SUPPORTED = ("LlamaForCausalLM",)  # SmolLM2 and the tiny models are Llamas
# True-sequential order inside a Llama block (GPTQ's `true_sequential`): each set is quantized, then
# the block is re-run so the next set sees the outputs of already-quantized layers.
LLAMA_SEQUENTIAL = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
                    ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))


def decoder_layers(model, method: str):
    """The decoder blocks of a supported model, or a one-line error naming what is supported."""
    arch = type(model).__name__
    layers = getattr(getattr(model, "model", None), "layers", None)
    if arch not in SUPPORTED or layers is None:
        raise ValueError(f"{method} supports Llama-family models only ({', '.join(SUPPORTED)}: the tiny models, "
                         f"SmolLM2); got {arch}. Use a per-weight quantizer (rtn*, q4_1, hqq4, …) for this model")
    return layers


def calib_texts_from_items(items, fmt=None) -> list[str]:
    """Texts of a data set: a text item is itself; a QA item is its prompt followed by its answer, in prompt
    format `fmt` (a data.prompt.BoundFormat; None: the default format)."""
    from ...data.prompt import DEFAULT_FORMAT

    b = fmt if fmt is not None else DEFAULT_FORMAT.bind(None)
    return [it if isinstance(it, str) else b.item_prompt(it) + b.item_answer(it, it.answer) for it in items]


def calib_batches(tok, texts: list[str], n: int = 128, max_len: int = 512, seed: int = 0,
                  device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Up to n token sequences (1, L) from `texts`: a seeded sample of n texts (all if fewer), each
    tokenized alone and truncated at max_len tokens. Empty encodings are dropped."""
    if not texts:
        raise ValueError("no calibration texts given: pass calib_texts / --calib DATA")
    idx = list(range(len(texts)))
    if len(idx) > n:
        idx = sorted(random.Random(seed).sample(idx, n))
    out = []
    for i in idx:
        ids = tok(texts[i], return_tensors="pt", truncation=True, max_length=max_len)["input_ids"]
        if ids.shape[1]:
            out.append(ids.to(device))
    if not out:
        raise ValueError("every calibration text tokenized to nothing")
    return out


class _Stop(Exception):
    """Raised inside a hook to end a forward pass once what it needed has been seen."""


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def block_inputs(model, batches: list[torch.Tensor]) -> list[tuple[torch.Tensor, dict]]:
    """(hidden_states (1, L, D), kwargs) entering decoder block 0, one pair per calibration sequence."""
    layers = decoder_layers(model, "calibration")
    got: list[tuple[torch.Tensor, dict]] = []

    def grab(mod, args, kwargs):
        kw = dict(kwargs)
        hs = args[0] if args else kw.pop("hidden_states")
        got.append((hs.detach(), kw))
        raise _Stop

    h = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for ids in batches:
            try:
                model(input_ids=ids, use_cache=False)
            except _Stop:
                pass
    finally:
        h.remove()
    return got


def run_block(layer, hs: torch.Tensor, kw: dict) -> torch.Tensor:
    out = layer(hs, **kw)
    return out[0] if isinstance(out, tuple) else out  # older transformers return (hidden_states, ...)


@torch.no_grad()
def run_until(layer, inputs, hooks: dict[torch.nn.Module, callable], stop: bool = True) -> None:
    """Run `layer` on every calibration input, calling hooks[mod](x) with each hooked Linear's input x;
    with stop=True a pass ends as soon as every hooked module has been seen (the rest of the block is
    not needed), which saves most of the work for the early sets of the true-sequential order."""
    seen: set[int] = set()

    def make(mod, fn):
        def hook(m, args):
            fn(args[0])
            seen.add(id(m))
            if stop and len(seen) == len(hooks):
                raise _Stop
        return mod.register_forward_pre_hook(hook)

    hs_ = [make(m, fn) for m, fn in hooks.items()]
    try:
        for hs, kw in inputs:
            seen.clear()
            try:
                run_block(layer, hs, kw)
            except _Stop:
                pass
    finally:
        for h in hs_:
            h.remove()


def qtensor(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int | None) -> QTensor:
    """QTensor from flat codes (R, C) and per-group scale/zero (R, G) on the original column order."""
    R, C = codes.shape
    cg = group_view(codes.to(torch.int32), group)  # remainder group padded by repeating the last column
    return QTensor(cg, scale.float().reshape(R, -1, 1), zero.float().reshape(R, -1, 1), (R, C))
