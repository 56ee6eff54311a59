"""Plain causal-LM fine-tuning used to build the tiny base / target / retrained models.

Examples are (token ids, start) pairs from `core.logprobs.encode_pairs`: loss on tokens from `start`
on (answer-only loss for QA as TOFU trains; whole text for biographies).
"""
from __future__ import annotations

import math
import random
import time

import torch

from ..core.logprobs import collate


def lm_loss(model, batch, per_example: bool = False) -> torch.Tensor:
    """Mean NLL over scored tokens (or, with `per_example`, the mean over examples of each example's
    mean NLL: a 2-token answer then weighs as much as a 70-token biography). batch: core.logprobs.Encoded."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    tgt = batch.input_ids[:, 1:]
    mask = batch.labels_mask[:, 1:].float()
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), tgt.reshape(-1),
                                            reduction="none").view_as(mask)
    if per_example:
        return ((nll * mask).sum(1) / mask.sum(1).clamp_min(1)).mean()
    return (nll * mask).sum() / mask.sum().clamp_min(1)


def lr_at(step: int, total: int, lr: float, warmup: int, schedule: str = "cosine") -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    frac = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return lr * (1 - frac)
    return lr * 0.5 * (1 + math.cos(math.pi * frac))


def train_lm(model, examples: list[tuple[list[int], int]], pad_id: int, epochs: float = 1.0, lr: float = 1e-3,
             batch_size: int = 32, warmup: int = 50, weight_decay: float = 0.0, seed: int = 0,
             schedule: str = "cosine", desc: str = "train", log_every: int = 10, max_grad_norm: float = 1.0,
             on_epoch=None, per_example: bool = False):
    """AdamW over shuffled, length-bucketed batches. Returns the per-step loss log.

    `on_epoch(n_epochs_done) -> bool` is called after every full pass; True stops training (used to
    train "to criterion" without restarting the optimiser, whose fresh first step would kick every weight
    by ≈ lr)."""
    from tqdm.auto import tqdm

    if not examples:
        raise ValueError("no training examples")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model.train()
    dev = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    n_batches = math.ceil(len(examples) / batch_size)
    total = max(1, int(round(epochs * n_batches)))
    log: list[dict] = []
    step = 0
    epoch = 0
    t0 = time.time()
    bar = tqdm(total=total, desc=desc, leave=False)
    while step < total:
        # length bucketing: shuffle, sort inside chunks of 50 batches, then shuffle the batches
        idx = list(range(len(examples)))
        rng.shuffle(idx)
        chunk = batch_size * 50
        batches = []
        for c in range(0, len(idx), chunk):
            part = sorted(idx[c: c + chunk], key=lambda i: len(examples[i][0]))
            batches += [part[b: b + batch_size] for b in range(0, len(part), batch_size)]
        rng.shuffle(batches)
        for b in batches:
            if step >= total:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, lr, warmup, schedule)
            enc = collate([examples[i] for i in b], pad_id)
            enc.input_ids, enc.attention_mask, enc.labels_mask = (enc.input_ids.to(dev), enc.attention_mask.to(dev),
                                                                  enc.labels_mask.to(dev))
            loss = lm_loss(model, enc, per_example)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: non-finite loss at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            opt.step()
            if step % log_every == 0 or step == total - 1:
                log.append({"step": step, "loss": round(loss.item(), 5), "lr": opt.param_groups[0]["lr"],
                            "t": round(time.time() - t0, 2)})
                bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update(1)
            step += 1
        else:
            epoch += 1
            if on_epoch is not None and on_epoch(epoch):
                break
    bar.close()
    model.eval()
    return log


def weight_stats(model) -> dict[str, float]:
    """Per Linear layer: mean over rows of absmax/std (≈2.8 for a Gaussian row of 256; LLM outliers go far beyond)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            w = mod.weight.detach().float()
            r = w.abs().amax(1) / w.std(1).clamp_min(1e-12)
            out[name] = round(r.mean().item(), 4)
    return out
