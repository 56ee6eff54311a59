"""Relearning attack (docs/science.md §4): a few fine-tuning steps on part of the forget set bring back the rest?

The forget set F is split into a relearn part (fraction `fraction`) and a held-out part; the
unlearned model is fine-tuned for `steps` steps on the relearn part and exact-match recall is measured
on the held-out part before and after. Controls (benign fine-tuning, same number of steps):
control="retain" trains on retain-set QA instead; control="text" on given unrelated texts. A held-out
recall that rises with forget data but not with the controls is knowledge that was hidden, not erased.
"""
from __future__ import annotations

import copy
import random

import torch

from ..core import encode_pairs
from ..data.prompt import bind
from ..data.schema import QAItem
from ..errors import UserError, check_choice, check_number
from ..metrics.qa import exact_match_recall
from ..models.train import train_lm
from ..registry import register
from .base import AttackResult, auditable, measure_cost


def split_forget(items: list[QAItem], fraction: float = 0.5, by: str = "item", seed: int = 0):
    """(relearn part, held-out part). by="item": random facts (held-out facts may share a person with
    relearned ones); by="person": whole people held out (the harder, cross-person test)."""
    check_number("fraction", fraction, gt=0, lt=1)  # both parts must be non-empty
    rng = random.Random(seed)
    if by == "person":
        people = sorted({it.person or it.question for it in items})
        rng.shuffle(people)
        k = max(1, min(len(people) - 1, round(fraction * len(people))))
        train_p = set(people[:k])
        tr = [it for it in items if (it.person or it.question) in train_p]
        return tr, [it for it in items if (it.person or it.question) not in train_p]
    check_choice("by", by, ("item", "person"))
    idx = list(range(len(items)))
    rng.shuffle(idx)
    k = max(1, min(len(items) - 1, round(fraction * len(items))))
    return [items[i] for i in sorted(idx[:k])], [items[i] for i in sorted(idx[k:])]


def qa_examples(tok, items: list[QAItem], fmt=None) -> list[tuple[list[int], int]]:
    """Answer-only loss examples in the prompt format the models are trained and measured with (data.prompt;
    default: "Question: q\nAnswer:" → " answer</s>")."""
    eos = tok.eos_token or ""
    b = bind(fmt, tok)
    return encode_pairs(tok, [b.item_prompt(it) for it in items], [b.item_answer(it, it.answer) + eos for it in items])


def text_examples(tok, texts: list[str]) -> list[tuple[list[int], int]]:
    eos = tok.eos_token or ""
    return encode_pairs(tok, [""] * len(texts), [t + eos for t in texts])


def finetune(model, tok, examples, steps: int = 20, lr: float = 1e-4, batch_size: int = 8, seed: int = 0,
             schedule: str = "constant", warmup: int = 0, inplace: bool = False):
    """A fine-tuned copy (inplace=True: `model` itself) after exactly `steps` optimizer steps
    (models.train.train_lm). Returns (model, log)."""
    m = model if inplace else copy.deepcopy(model)
    for p in m.parameters():  # a released / unlearned model may come with frozen parameters
        p.requires_grad_(True)
    n_batches = -(-len(examples) // batch_size)
    log = train_lm(m, examples, tok.pad_token_id if tok.pad_token_id is not None else 0, epochs=steps / n_batches,
                   lr=lr, batch_size=batch_size, warmup=warmup, seed=seed, schedule=schedule, desc="relearn",
                   log_every=1)
    m.eval()
    return m, log


@torch.no_grad()
def _weight_change(a, b=None, originals=None) -> dict:
    """‖a − b‖₂ over all parameters, and relative to ‖b‖₂; b's tensors are read from `originals` one at a
    time when a was trained in place."""
    num = den = 0.0
    if originals is not None:
        from .restore import model_tensors

        pairs = ((p, originals.get(n)) for n, p in model_tensors(a).items() if isinstance(p, torch.nn.Parameter))
    else:
        pairs = ((p, q) for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()))
    for p, q in pairs:
        p, q = p.detach().double(), q.detach().to(p.device).double()
        num += float((p - q).pow(2).sum())
        den += float(q.pow(2).sum())
    return {"l2": num ** 0.5, "relative_l2": (num / den) ** 0.5 if den else None}


def check_relearn_options(fraction: float, steps: int, lr: float, batch_size: int, by: str,
                          control: str | None) -> None:
    """Every relearn option, before any model loads (UserError, one line)."""
    check_number("fraction", fraction, gt=0, lt=1)
    check_number("steps", steps, ge=1, integer=True)
    check_number("lr", lr, gt=0)
    check_number("batch_size", batch_size, ge=1, integer=True)
    check_choice("by", by, ("item", "person"))
    check_choice("control", control, ("retain", "text"), optional=True)


def check_forget_items(forget) -> None:
    if not forget:
        raise UserError("relearn needs forget=<list of QAItem> (the forget set)")
    if not all(isinstance(it, QAItem) for it in forget):
        raise UserError("relearn needs QA items (question/answer) in the forget set, got raw text",
                        "give a QA .jsonl or a bios:/tofu: split")
    if len(forget) < 2:
        raise UserError(f"relearn needs at least 2 forget items (one to train on, one held out), got {len(forget)}")


def _audit_args(name: str, ctx) -> dict:
    return {"forget": ctx.forget, "fraction": 0.5, "steps": ctx.settings.get("relearn_steps", 20),
            "lr": ctx.settings.get("relearn_lr", 1e-3), "seed": ctx.seed, "evaluate": False, "fmt": ctx.fmt}


@register("attacks", "relearn")
@auditable(lambda name: name == "relearn", _audit_args, vocabulary=lambda: ["relearn"])
def relearn_attack(model, tok, forget=None, fraction: float = 0.5, steps: int = 20, lr: float = 1e-4,
                   batch_size: int = 8, by: str = "item", control: str | None = None, retain=None,
                   texts: list[str] | None = None, seed: int = 0, evaluate: bool = True, fmt=None,
                   originals=None) -> AttackResult:
    """Fine-tune k steps on a fraction of the forget set (or a benign control); recall on the held-out rest.
    fmt: the prompt format of the relearning examples and the recall measurements (data.prompt).
    With `originals` (restore.Originals) the model itself is trained; the caller restores it. The result
    is measured on the held-out forget items (`items`)."""
    check_relearn_options(fraction, steps, lr, batch_size, by, control)
    check_forget_items(forget)
    fmt = bind(fmt, tok)
    train_items, held = split_forget(list(forget), fraction, by, seed)
    if control is None:
        ex, source = qa_examples(tok, train_items, fmt), "forget"
    elif control == "retain":
        if not retain:
            raise UserError("control='retain' needs a retain set", "pass --retain (retain=<list of QAItem>)")
        pool = list(retain)
        random.Random(seed).shuffle(pool)
        ex, source = qa_examples(tok, pool[: max(len(train_items), 1)], fmt), "retain"
    elif control == "text":
        if not texts:
            raise UserError("control='text' needs unrelated texts", "pass --texts (texts=<list of str>)")
        ex, source = text_examples(tok, list(texts)), "text"
    cfg = {"fraction": fraction, "steps": steps, "lr": lr, "batch_size": batch_size, "by": by, "control": control,
           "seed": seed, "n_train_examples": len(ex), "n_heldout": len(held), "train_source": source}
    rec: dict = {"attack": "relearn", "config": cfg, "prompt_format": fmt.record()}
    if evaluate:
        rec["heldout_recall_before"] = exact_match_recall(model, tok, held, fmt=fmt).value
    with measure_cost() as cost:
        out, log = finetune(model, tok, ex, steps, lr, batch_size, seed, inplace=originals is not None)
    rec.update(cost=cost, train_log=log,
               weight_change=_weight_change(out, originals=originals) if originals is not None else _weight_change(out, model))
    if evaluate:
        rec["heldout_recall_after"] = exact_match_recall(out, tok, held, fmt=fmt).value
        rec["relearned_recall_after"] = exact_match_recall(out, tok, train_items, fmt=fmt).value
    rec["heldout_questions"] = [it.question for it in held]
    hq = set(rec["heldout_questions"])
    return AttackResult(out, rec, items=[i for i, it in enumerate(forget) if it.question in hq])
