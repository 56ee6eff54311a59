"""Shared pieces of every unlearning method: encoded data splits, the method/regulariser interface,
the training context, and forward helpers that route all log-prob math through core.logprobs.

Shapes: B = batch, T = padded length, V = vocabulary, H = hidden size, N = scored positions in a batch.
"""
from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..core.logprobs import Encoded, collate, encode_pairs, pad_id_of, scored_log_softmax, token_logprobs
from ..data.prompt import bind
from ..data.schema import QAItem
from ..errors import UserError


class UnlearnError(UserError):
    """Bad unlearning input (data, names, options); the message says what to change."""


@dataclass
class Split:
    """One encoded data set. `seqs[i]` = (token ids, start of the scored part) from core.encode_pairs.

    QA: prompt = fmt.item_prompt(q), continuation = fmt.item_answer(a) + EOS (data.prompt: the run's prompt format,
    the one every measurement uses) → loss on answer tokens only (docs/science.md §2).
    Raw text: empty prompt → every token after BOS is scored."""
    name: str
    items: list  # QAItem | str
    seqs: list[tuple[list[int], int]]
    pad_id: int
    n_truncated: int = 0  # sequences cut to max_length (or the model's context) when encoded
    fmt: Any = None  # data.prompt.BoundFormat the QA prompts were built with

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def is_qa(self) -> bool:
        return bool(self.items) and isinstance(self.items[0], QAItem)

    def encode(self, idx: Sequence[int], device) -> Encoded:
        enc = collate([self.seqs[i] for i in idx], self.pad_id)
        return Encoded(enc.input_ids.to(device), enc.attention_mask.to(device), enc.labels_mask.to(device))


def make_split(name: str, items: list, tok, max_length: int | None = None,
               answers: Sequence[str] | None = None, fmt=None) -> Split:
    """Encode QA items (or raw strings). `answers` overrides the gold answers (IdkDPO refusals); `fmt` is the
    prompt format (data.prompt.PromptFormat or a bound one; None: the default)."""
    b = bind(fmt, tok)
    if not items:
        raise UnlearnError(f"{name} set is empty: nothing to train on")
    kinds = {type(x) for x in items}
    if kinds == {QAItem}:
        ans = list(answers) if answers is not None else [it.answer for it in items]
        prompts = [b.item_prompt(it) for it in items]
        conts = [b.item_answer(it, a) + (tok.eos_token or "") for it, a in zip(items, ans)]
    elif kinds == {str}:
        if answers is not None:
            raise UnlearnError(f"{name}: replacement answers need QA items, got raw text")
        prompts, conts = [""] * len(items), [t + (tok.eos_token or "") for t in items]
    else:
        raise UnlearnError(f"{name} set mixes {sorted(k.__name__ for k in kinds)}; give QA items or raw strings, not both")
    seqs, n_cut = truncate(encode_pairs(tok, prompts, conts), max_length)
    return Split(name, list(items), seqs, pad_id_of(tok), n_cut, b)


def truncate(seqs: list[tuple[list[int], int]], max_length: int | None) -> tuple[list[tuple[list[int], int]], int]:
    """Sequences cut to max_length as core.encode_pairs does (prompt trimmed from the left first), and how many
    were cut: counted here so that the caller can say so."""
    if max_length is None:
        return seqs, 0
    out, n = [], 0
    for ids, start in seqs:
        if len(ids) > max_length:
            n += 1
            cut = len(ids) - max_length
            ids, start = (ids[-max_length:], 0) if cut >= start else (ids[cut:], start - cut)
        out.append((ids, start))
    return out, n


def item_key(it) -> str:
    return f"{it.question}\x1f{it.answer}" if isinstance(it, QAItem) else str(it)


def data_key(items) -> str | None:
    """Content hash of a data set (what it holds, not where it came from): recorded in checkpoints for resume."""
    from ..io import hash_obj

    return None if items is None else hash_obj([item_key(it) for it in items])


def check_overlap(forget: list, retain: list | None, allow: bool) -> int:
    """Items in both forget and retain pull the model two ways; refused unless allow (then a warning)."""
    if not retain:
        return 0
    fk = {item_key(it) for it in forget}
    both = [it for it in retain if item_key(it) in fk]
    if not both:
        return 0
    ex = both[0].question if isinstance(both[0], QAItem) else both[0][:60]
    msg = f"{len(both)} item(s) are in both the forget and the retain set (e.g. {ex!r})"
    if not allow:
        raise UnlearnError(msg, "remove them from one of the sets, or pass --allow-overlap (allow_overlap=True)")
    from ..errors import warn

    warn(msg + "; training on them anyway (allow_overlap)")
    return len(both)


# ----- forward helpers (everything goes through core.logprobs.token_logprobs / scored_log_softmax) -----

def decoder_layers(model) -> torch.nn.ModuleList:
    """The transformer block list (Llama/Mistral/Qwen `model.layers`, GPT-2 `transformer.h`, ...): the longest
    ModuleList whose name ends in layers/h/blocks. Works through a peft wrapper too."""
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and name.split(".")[-1] in ("layers", "h", "blocks", "layer"):
            if best is None or len(mod) > len(best):
                best = mod
    if best is None:
        raise UnlearnError(f"{type(model).__name__}: cannot find the decoder layer list (needed by RMU)")
    return best


@dataclass
class Fwd:
    """Outputs of one forward pass, computed lazily from what the loss asks for."""
    lp: torch.Tensor | None = None  # (B, T-1) per-token log p of scored tokens, 0 elsewhere
    mask: torch.Tensor | None = None  # (B, T-1) float, 1 on scored tokens
    dist: torch.Tensor | None = None  # (N, V) log-softmax at scored positions
    hidden: torch.Tensor | None = None  # (N, H) output of the probed decoder layer at scored positions

    @property
    def seq_lp(self) -> torch.Tensor:  # (B,) log π(y|x) = Σ_t log p(y_t|x, y_<t)
        return self.lp.sum(-1)

    @property
    def lengths(self) -> torch.Tensor:  # (B,) |y|
        return self.mask.sum(-1)


def forward(model, enc: Encoded, need_dist: bool = False, layer: int | None = None) -> Fwd:
    """Run the model once; return per-token log-probs (+ full distributions / a layer's hidden states).

    Hidden states of decoder layer ℓ are taken by a forward hook on that block (its raw output, before any
    final norm), at the positions that *predict* scored tokens: h[:, :-1] where labels_mask[:, 1:] = 1."""
    captured: dict[str, torch.Tensor] = {}
    handle = None
    if layer is not None:
        block = decoder_layers(model)[layer]

        def hook(_m, _inp, out):
            captured["h"] = out[0] if isinstance(out, (tuple, list)) else out

        handle = block.register_forward_hook(hook)
    try:
        logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits  # (B, T, V)
    finally:
        if handle is not None:
            handle.remove()
    lp = token_logprobs(logits, enc.input_ids, enc.labels_mask)
    out = Fwd(lp=lp, mask=enc.labels_mask[:, 1:].to(lp.dtype))
    if need_dist:
        out.dist = scored_log_softmax(logits, enc.labels_mask)
    if layer is not None:
        out.hidden = captured["h"][:, :-1][enc.labels_mask[:, 1:].bool()].float()
    return out


# ----- the interface every method and regulariser implements -----

@dataclass
class Ctx:
    """What a loss may touch: the trained model, data splits, the reference, the config, the device."""
    model: Any
    tok: Any
    cfg: Any  # UnlearnConfig
    data: dict[str, Split]
    device: torch.device
    ref: Any = None  # reference.Reference
    state: dict[str, Any] = field(default_factory=dict)  # method-owned tensors (e.g. RMU direction u)

    def autocast(self):
        if self.cfg.precision == "bf16-mixed":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


class Method(abc.ABC):
    """An unlearning objective on the forget set. Subclasses set `name`, `ref_needs` and implement forget_loss.

    ref_needs: (split, kind) pairs the reference must provide; kind ∈ {"seq", "dist", "hidden"}."""
    name = "method"
    default_beta: float | None = None
    ref_needs: tuple[tuple[str, str], ...] = ()

    def __init__(self, cfg):
        self.cfg = cfg
        self.beta = cfg.beta if cfg.beta is not None else self.default_beta

    def setup(self, ctx: Ctx) -> None:
        """Add extra splits (IdkDPO refusals) or state (RMU direction); runs before the reference is built."""

    def trainable(self, model, ctx: Ctx) -> list[str] | None:
        """Names of the parameters this method trains (None = all)."""
        return None

    @abc.abstractmethod
    def forget_loss(self, ctx: Ctx, idx: list[int]) -> torch.Tensor:
        """Scalar loss to minimise on the forget examples `idx` (indices into ctx.data["forget"])."""

    def retain_loss(self, ctx: Ctx, idx: list[int]) -> torch.Tensor | None:
        """A method's own utility term (RMU); None for methods that rely on the regulariser."""
        return None

    def hparams(self) -> dict[str, Any]:
        return {"beta": self.beta} if self.beta is not None else {}


class Regularizer:
    name = "none"
    needs_retain = False
    ref_needs: tuple[tuple[str, str], ...] = ()

    def __init__(self, cfg):
        self.cfg = cfg

    def loss(self, ctx: Ctx, idx: list[int]) -> torch.Tensor | None:
        return None
