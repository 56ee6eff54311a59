"""Apply a weight quantizer to a model: the dequantized weights replace the originals in a copy.

The result is an ordinary transformers model computing with exactly the weights a weight-only
low-bit deployment computes with, so every metric runs on it unchanged (docs/science.md §3).
A quantizer is any callable `w (R, C) -> dequantized w` (RTN here, a backend's own
quantize→dequantize in backends/, GGUF formats later); those that also have `.quantize(w)`
expose integer codes for the collapse diagnostic.
"""
from __future__ import annotations

import copy
from typing import Callable, Iterator

import torch


def _lm_head(model) -> torch.nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    return get() if get else None


def select_weights(model, linear: bool = True, embeddings: bool = False, lm_head: bool = False,
                   include: str | None = None, exclude: str | None = None) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """(name, weight) of the modules to quantize, each distinct tensor once, oriented (out, in): a view of
    the parameter, so writing into it writes the model.

    Linear layers by default; the LM head and embeddings are left in full precision unless asked for
    (the usual deployment choice, docs/science.md §3). With tied embeddings the head and the embedding
    are one tensor: it is quantized if either is selected. `include`/`exclude` are regexes on names."""
    import re

    head = _lm_head(model)
    try:  # GPT-2-style Conv1D keeps its weight as (in, out); it is yielded transposed, as a view
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        Conv1D = ()
    seen: set[int] = set()
    for name, mod in model.named_modules():
        is_head = head is not None and mod is head
        if is_head:
            ok = lm_head
        elif isinstance(mod, torch.nn.Embedding):
            ok = embeddings
        elif isinstance(mod, (torch.nn.Linear, Conv1D)):
            ok = linear
        else:
            continue
        w = getattr(mod, "weight", None)
        if not ok or not isinstance(w, torch.Tensor) or w.dim() != 2:
            continue
        if include and not re.search(include, name) or exclude and re.search(exclude, name):
            continue
        if id(w) in seen:
            continue
        seen.add(id(w))
        yield f"{name}.weight", (w.T if Conv1D and isinstance(mod, Conv1D) else w)


@torch.no_grad()
def quantize_model(model, quantizer: Callable[[torch.Tensor], torch.Tensor], inplace: bool = False,
                   linear: bool = True, embeddings: bool = False, lm_head: bool = False,
                   include: str | None = None, exclude: str | None = None):
    """A copy of `model` (or `model` itself with inplace=True) whose selected weights are Q(w).

    Returns (model, info) where info = {"n_tensors", "n_weights", "names"}. One tensor at a time, so
    peak extra memory is one weight's grouped copy, not a second model beyond the copy itself."""
    m = model if inplace else copy.deepcopy(model)
    # a quantizer that picks a format per tensor (a llama.cpp file type, gguf_mix.GGUFMix) is bound to the model
    per = quantizer.bind(m) if hasattr(quantizer, "bind") else None
    names, n = [], 0
    for name, w in select_weights(m, linear, embeddings, lm_head, include, exclude):
        w.copy_((per[name] if per is not None else quantizer)(w.detach()).to(w.dtype))
        names.append(name)
        n += w.numel()
    if not names:
        raise ValueError("no weights matched the module selection; nothing was quantized")
    return m, {"n_tensors": len(names), "n_weights": n, "names": names}


def released_quantized(model, quantizer, **select):
    """The "released-quantized" target of docs/science.md §1b: the model's Linear weights rounded onto the
    quantizer's grid (dequantized, full-precision dtype), as if it came from a quantized release."""
    return quantize_model(model, quantizer, **select)[0]

