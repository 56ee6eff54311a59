"""Per-token log-probabilities of continuations, batched and padding-masked (written once).

Shapes: B = batch, T = padded sequence length, V = vocabulary.
A pair (prompt, continuation) is encoded as prefix + ids(prompt) + ids(continuation), where prefix
holds the special tokens the tokenizer itself puts before a text (`special_prefix`: [BOS] for Llama and
the tiny models, nothing for SmolLM2 or GPT-2) — never a BOS the tokenizer would not add, as MUSE's
and TOFU's reference code tokenize (docs/science.md §5). Only the continuation tokens are scored (labels
mask). For raw text the "prompt" is empty and every token after the first is scored (PrivLeak).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch


@dataclass
class Encoded:
    input_ids: torch.Tensor  # (B, T), right padded
    attention_mask: torch.Tensor  # (B, T)
    labels_mask: torch.Tensor  # (B, T) 1 where the token is a scored continuation token


def special_prefix(tokenizer) -> list[int]:
    """The ids `tokenizer(text)` puts before the text's own tokens (its post-processor: a BOS for Llama-style
    tokenizers, none for GPT-2/SmolLM2-style ones). Trailing specials (an EOS some tokenizers append) are
    not part of a prompt and are left out. Not cached on the tokenizer: a copied and edited tokenizer
    must not inherit a stale answer (callers compute it once per batch call)."""
    probe = "a b"
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for k in range(len(full) - len(bare) + 1):
        if full[k:k + len(bare)] == bare:
            return full[:k]
    return []


def encode_text(tokenizer, text: str, add_special_tokens: bool = True, prefix: list[int] | None = None) -> list[int]:
    """ids of `text` with the tokenizer's own leading special tokens (see special_prefix; pass `prefix`
    when encoding many texts)."""
    if prefix is None:
        prefix = special_prefix(tokenizer) if add_special_tokens else []
    return list(prefix) + (tokenizer(text, add_special_tokens=False)["input_ids"] if text else [])


def encode_pairs(tokenizer, prompts: Sequence[str], continuations: Sequence[str], add_special_tokens: bool = True,
                 max_length: int | None = None) -> list[tuple[list[int], int]]:
    """Token ids of each prompt+continuation and the index where the continuation starts.

    Prompt and continuation are tokenized separately so that the continuation's tokens are the same
    ones generation would produce after this prompt."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    out = []
    pre = special_prefix(tokenizer) if add_special_tokens else []
    for p, c in zip(prompts, continuations):
        pid = encode_text(tokenizer, p, prefix=pre)
        cid = tokenizer(c, add_special_tokens=False)["input_ids"]
        if not cid:
            raise ValueError(f"continuation {c!r} encodes to no tokens")
        ids = pid + cid
        if max_length is not None and len(ids) > max_length:
            cut = len(ids) - max_length  # keep the continuation, trim the prompt from the left
            if cut >= len(pid):
                ids, start = ids[-max_length:], 0
            else:
                ids, start = ids[cut:], len(pid) - cut
        else:
            start = len(pid)
        out.append((ids, start))
    return out


def collate(seqs: list[tuple[list[int], int]], pad_id: int) -> Encoded:
    T = max(len(s) for s, _ in seqs)
    B = len(seqs)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    am = torch.zeros((B, T), dtype=torch.long)
    lm = torch.zeros((B, T), dtype=torch.long)
    for i, (s, start) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        am[i, : len(s)] = 1
        lm[i, max(start, 1): len(s)] = 1  # the first token has no context and is never scored
    return Encoded(ids, am, lm)


LOGSOFTMAX_CHUNK = 1024  # positions per float32 log-softmax: memory chunk·V·4 bytes, not B·T·V·4
LOGIT_BUDGET_BYTES = 1 << 30  # a forward pass returns (b, T, V) logits: rows per pass are cut to fit this


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, labels_mask: torch.Tensor,
                   with_stats: bool = False):
    """log p(x_t | x_<t) for every position t ≥ 1, zeroed where labels_mask is 0.

    logits (B, T, V) → returns lp (B, T-1) [and μ_t, σ_t (B, T-1) of the predictive distribution,
    for Min-K%++: μ = Σ_v p log p, σ² = Σ_v p (log p)² − μ², docs/science.md §5]. Only the scored positions
    are normalised, LOGSOFTMAX_CHUNK at a time in float32, so no (B, T, V) float32 copy is ever made."""
    B, T = input_ids.shape
    sel = labels_mask[:, 1:].bool()  # (B, T-1)
    rows = sel.nonzero(as_tuple=True)
    tgt = input_ids[:, 1:][rows]  # (N,)
    n = tgt.numel()
    lp_sel = torch.empty(n, dtype=torch.float32, device=logits.device)
    mu_sel = torch.empty_like(lp_sel) if with_stats else None
    sd_sel = torch.empty_like(lp_sel) if with_stats else None
    for a in range(0, n, LOGSOFTMAX_CHUNK):
        b = min(n, a + LOGSOFTMAX_CHUNK)
        chunk = logits[rows[0][a:b], rows[1][a:b]].float()  # (c, V): positions t predict token t+1
        logp = torch.log_softmax(chunk, dim=-1)
        lp_sel[a:b] = logp.gather(-1, tgt[a:b, None]).squeeze(-1)
        if with_stats:
            p = logp.exp()
            mu = (p * logp).sum(-1)
            mu_sel[a:b] = mu
            sd_sel[a:b] = ((p * logp.pow(2)).sum(-1) - mu.pow(2)).clamp_min(0).sqrt()
    def scatter(v):
        out = torch.zeros((B, T - 1), dtype=torch.float32, device=logits.device)
        out[rows] = v
        return out
    lp = scatter(lp_sel)
    if not with_stats:
        return lp
    return lp, scatter(mu_sel), scatter(sd_sel)


def scored_log_softmax(logits: torch.Tensor, labels_mask: torch.Tensor) -> torch.Tensor:
    """log p(· | x_<t) over the whole vocabulary at every scored position (for token-level KL, docs/science.md §2 KLR).

    logits (B, T, V), labels_mask (B, T) → (N, V), N = labels_mask[:, 1:].sum(), rows in (example, position)
    order. Positions are selected before the softmax so memory is N·V, not B·T·V."""
    sel = labels_mask[:, 1:].bool()
    return torch.log_softmax(logits[:, :-1][sel].float(), dim=-1)


@dataclass
class ScoredBatch:
    """Per-example results of scoring continuations (lists, one entry per input, input order)."""
    token_logprobs: list[np.ndarray]  # log p of each continuation token
    token_ids: list[list[int]] = field(default_factory=list)  # the continuation tokens
    mu: list[np.ndarray] | None = None
    sigma: list[np.ndarray] | None = None
    argmax_ids: list[list[int]] | None = None  # teacher-forced argmax at each continuation position

    @property
    def sum(self) -> np.ndarray:
        return np.array([x.sum() for x in self.token_logprobs], dtype=np.float64)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.token_logprobs])

    @property
    def mean(self) -> np.ndarray:
        return self.sum / np.maximum(self.lengths, 1)


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _vocab_size(model) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    w = getattr(head, "weight", None)
    return int(w.shape[0]) if w is not None else int(getattr(model.config, "vocab_size", 32000))


@torch.no_grad()
def score_encoded(model, seqs: list[tuple[list[int], int]], pad_id: int, batch_size: int = 32,
                  with_stats: bool = False, with_argmax: bool = False, progress: bool = False) -> ScoredBatch:
    """Score pre-encoded sequences; batches are length-bucketed (sorted) and results restored to input order."""
    dev = _device_of(model)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    res_lp: list = [None] * len(seqs)
    res_mu: list = [None] * len(seqs)
    res_sd: list = [None] * len(seqs)
    res_am: list = [None] * len(seqs)
    vocab = _vocab_size(model)
    batches = []
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        # cut the batch so its (b, T, V) logits stay within LOGIT_BUDGET_BYTES (MUSE texts: T ≈ 2000)
        T = max(len(seqs[i][0]) for i in idx)
        rows = max(1, LOGIT_BUDGET_BYTES // max(1, T * vocab * 4))
        batches += [idx[k: k + rows] for k in range(0, len(idx), rows)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="scoring", leave=False)
    for idx in batches:
        enc = collate([seqs[i] for i in idx], pad_id)
        ids, am, lm = enc.input_ids.to(dev), enc.attention_mask.to(dev), enc.labels_mask.to(dev)
        logits = model(input_ids=ids, attention_mask=am).logits
        out = token_logprobs(logits, ids, lm, with_stats=with_stats)
        lp, mu, sd = (out if with_stats else (out, None, None))
        amax = logits[:, :-1].argmax(-1) if with_argmax else None
        for j, i in enumerate(idx):
            sel = lm[j, 1:].bool()
            res_lp[i] = lp[j][sel].double().cpu().numpy()
            if with_stats:
                res_mu[i] = mu[j][sel].double().cpu().numpy()
                res_sd[i] = sd[j][sel].double().cpu().numpy()
            if with_argmax:
                res_am[i] = amax[j][sel].tolist()
    token_ids = [s[st:] if st > 0 else s[1:] for s, st in seqs]
    return ScoredBatch(res_lp, token_ids, res_mu if with_stats else None, res_sd if with_stats else None,
                       res_am if with_argmax else None)


def pad_id_of(tokenizer) -> int:
    pid = tokenizer.pad_token_id
    if pid is None:
        pid = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return pid


def score_pairs(model, tokenizer, prompts: Sequence[str], continuations: Sequence[str], batch_size: int = 32,
                with_stats: bool = False, with_argmax: bool = False, max_length: int | None = None,
                progress: bool = False) -> ScoredBatch:
    """log p(continuation | prompt), per token, for many pairs at once."""
    seqs = encode_pairs(tokenizer, prompts, continuations, max_length=max_length)
    return score_encoded(model, seqs, pad_id_of(tokenizer), batch_size, with_stats, with_argmax, progress)


def score_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 32, with_stats: bool = False,
                max_length: int | None = None, progress: bool = False) -> ScoredBatch:
    """Every token of each text after BOS (BOS is the only context of the first token)."""
    return score_pairs(model, tokenizer, [""] * len(texts), list(texts), batch_size, with_stats,
                       max_length=max_length, progress=progress)
