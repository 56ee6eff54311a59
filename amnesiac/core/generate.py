"""Batched greedy generation with left padding and a KV cache (written once, used by every metric).

Prompts are sorted by length and cut into batches (length bucketing: little padding), each batch is
left-padded so that all prompts end at the same column, position ids follow the attention mask
(so a padded prompt sees exactly the positions it would see alone), and decoding stops per row at
EOS or at any stop string. Outputs come back in input order.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .logprobs import _device_of, encode_text, pad_id_of, special_prefix


def _cut_at_stops(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = len(text)
    for s in stops:
        k = text.find(s)
        if k != -1:
            cut = min(cut, k)
    return text[:cut], cut < len(text)


def _cache_kwarg(model) -> str:
    """transformers ≥ 5.2x renamed `past_key_values` to `cache` in forward(); accept both."""
    import inspect

    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _accepts(model, name: str) -> bool:
    import inspect

    return name in inspect.signature(type(model).forward).parameters


def _cache_of(out):
    """The KV cache of a forward output (`cache` in transformers ≥ 5.2x, `past_key_values` before)."""
    c = out.get("cache") if hasattr(out, "get") else None
    return c if c is not None else out.past_key_values


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 32,
                    stop_strings: Sequence[str] = (), batch_size: int = 32, add_special_tokens: bool = True,
                    skip_special_tokens: bool = True, progress: bool = False,
                    return_ids: bool = False):
    """Greedy continuation of each prompt. Returns decoded texts (cut before the first stop string),
    and the generated ids too when `return_ids`.

    Decoding: `skip_special_tokens=True, clean_up_tokenization_spaces=True` (MUSE's settings, docs/science.md §5).
    """
    dev = _device_of(model)
    pre = special_prefix(tokenizer) if add_special_tokens else []
    enc = [encode_text(tokenizer, p, prefix=pre) for p in prompts]
    if any(len(e) == 0 for e in enc):
        raise ValueError("empty prompt and the tokenizer adds no special token: nothing to condition on")
    pad = pad_id_of(tokenizer)
    eos = tokenizer.eos_token_id
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    texts: list[str] = [""] * len(enc)
    out_ids: list[list[int]] = [[] for _ in enc]
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="generating", leave=False)
    cache_kw = _cache_kwarg(model)
    keep_last = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    was_training = model.training
    model.eval()
    try:
        for s in starts:
            idx = order[s: s + batch_size]
            batch = [enc[i] for i in idx]
            T = max(len(b) for b in batch)
            B = len(batch)
            ids = torch.full((B, T), pad, dtype=torch.long)
            am = torch.zeros((B, T), dtype=torch.long)
            for j, b in enumerate(batch):
                ids[j, T - len(b):] = torch.tensor(b)
                am[j, T - len(b):] = 1
            ids, am = ids.to(dev), am.to(dev)
            pos = (am.cumsum(-1) - 1).clamp_min(0)
            gen = torch.empty((B, 0), dtype=torch.long, device=dev)
            done = torch.zeros(B, dtype=torch.bool, device=dev)
            # prefill: only the last position's logits are needed (a (B, T, V) tensor for long prompts otherwise)
            out = model(input_ids=ids, attention_mask=am, position_ids=pos, use_cache=True, **keep_last)
            past = _cache_of(out)
            for step in range(max_new_tokens):
                nxt = out.logits[:, -1].argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
                gen = torch.cat([gen, nxt[:, None]], 1)
                if eos is not None:
                    done |= nxt == eos
                if stop_strings and step % 4 == 3:  # decoding every row every step is wasteful
                    for j in range(B):
                        if not done[j] and _cut_at_stops(tokenizer.decode(gen[j], skip_special_tokens=True), stop_strings)[1]:
                            done[j] = True
                if bool(done.all()) or step == max_new_tokens - 1:
                    break
                am = torch.cat([am, torch.ones_like(am[:, :1])], 1)  # finished rows keep decoding pads; ignored
                pos = pos[:, -1:] + 1
                out = model(input_ids=nxt[:, None], attention_mask=am, position_ids=pos,
                            use_cache=True, **{cache_kw: past})
                past = _cache_of(out)
            for j, i in enumerate(idx):
                g = gen[j].tolist()
                if eos is not None and eos in g:
                    g = g[: g.index(eos) + 1]
                out_ids[i] = g
                t = tokenizer.decode(g, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=True)
                texts[i] = _cut_at_stops(t, stop_strings)[0] if stop_strings else t
    finally:
        model.train(was_training)
    return (texts, out_ids) if return_ids else texts
