"""The frozen reference π_ref (= the target before unlearning, docs/science.md §2) for NPO, IdkDPO, KLR, RMU.

Two ways, same numbers (tests/test_unlearn.py checks it):
- "precompute": one pass over the needed splits before training; keep per-example results on CPU
  (summed log-probs: 4 bytes/example; KLR distributions: 4·V bytes per scored token; RMU hidden
  states: 4·H bytes per scored token). No second model in memory.
- "copy": a frozen deep copy of the model, run on each training batch (with LoRA: the live model with its
  adapter switched off, so no copy at all).
"auto" precomputes when that fits in `ref_max_gb`, else keeps a copy.
"""
from __future__ import annotations

import contextlib
import copy
import logging

import torch

from .common import Split, forward

log = logging.getLogger(__name__)


class Reference:
    def __init__(self, mode: str, model, data: dict[str, Split], needs, ctx, batch_size: int = 16,
                 max_gb: float = 2.0, lora: bool = False):
        """needs: (split, kind[, layer]) triples; kind ∈ seq | dist | hidden. Build *before* training starts."""
        self.needs = {(s, k) for s, k in needs}
        self.ctx = ctx
        self.layer = ctx.state.get("rmu_layer")
        self.store: dict[tuple[str, str], object] = {}
        if not self.needs:
            self.mode = "none"
            return
        est = self.estimate_bytes(model, data)
        if mode == "auto":
            mode = "precompute" if est <= max_gb * 2**30 else "copy"
        if mode not in ("precompute", "copy"):
            raise ValueError(f"unknown reference mode {mode!r}; available: auto, precompute, copy")
        self.mode, self.bytes_estimate = mode, est
        self.model = None
        if mode == "precompute":
            for split, kind in sorted(self.needs):
                self.store[(split, kind)] = self._precompute(model, data[split], kind, batch_size)
        elif not lora:
            self.model = copy.deepcopy(model).eval().requires_grad_(False)
        # with LoRA + copy, self.model stays None: the live model runs with its adapter disabled

    def estimate_bytes(self, model, data) -> int:
        cfg = model.config
        n = 0
        for split, kind in self.needs:
            tokens = sum(len(ids) - max(start, 1) for ids, start in data[split].seqs)
            n += {"seq": 4 * len(data[split]), "dist": 4 * tokens * cfg.vocab_size,
                  "hidden": 4 * tokens * cfg.hidden_size}[kind]
        return n

    def describe(self) -> dict:
        return {"mode": self.mode, "needs": sorted(f"{s}:{k}" for s, k in self.needs),
                "bytes_estimate": getattr(self, "bytes_estimate", 0)}

    # ----- one forward of the reference -----
    @contextlib.contextmanager
    def _ref_model(self, live=None):
        m = self.model if self.model is not None else live
        was = m.training
        m.eval()
        ctx = m.disable_adapter() if (self.model is None and hasattr(m, "disable_adapter")) else contextlib.nullcontext()
        try:
            with torch.no_grad(), ctx, self.ctx.autocast():
                yield m
        finally:
            m.train(was)

    def _run(self, m, enc, kind):
        f = forward(m, enc, need_dist=kind == "dist", layer=self.layer if kind == "hidden" else None)
        return {"seq": f.seq_lp.float() if kind == "seq" else None, "dist": f.dist, "hidden": f.hidden}[kind]

    def _precompute(self, model, split: Split, kind: str, batch_size: int):
        """Per example, in split order: seq → (n,) tensor; dist/hidden → list of (n_i, ·) CPU tensors."""
        per: list = []
        with self._ref_model(model) as m:
            for s in range(0, len(split), batch_size):
                idx = list(range(s, min(s + batch_size, len(split))))
                enc = split.encode(idx, self.ctx.device)
                val = self._run(m, enc, kind).detach().cpu()
                if kind == "seq":
                    per.extend(val.unbind(0))
                else:  # rows are (example, position)-ordered; cut them back per example
                    counts = enc.labels_mask[:, 1:].sum(-1).tolist()
                    per.extend(val.split(counts, dim=0))
        return torch.stack(per) if kind == "seq" else per

    def _get(self, split, kind, idx, enc):
        if self.mode == "precompute":
            v = self.store[(split, kind)]
            out = v[torch.as_tensor(idx)] if kind == "seq" else torch.cat([v[i] for i in idx], 0)
            return out.to(self.ctx.device)
        with self._ref_model(self.ctx.model) as m:
            return self._run(m, enc, kind)

    def seq(self, split: str, idx: list[int], enc) -> torch.Tensor:
        """(B,) summed reference log-probs log π_ref(y|x) of the batch."""
        return self._get(split, "seq", idx, enc)

    def dist(self, split: str, idx: list[int], enc) -> torch.Tensor:
        """(N, V) reference log-softmax at the batch's scored positions."""
        return self._get(split, "dist", idx, enc)

    def hidden(self, split: str, idx: list[int], enc, layer: int) -> torch.Tensor:
        """(N, H) reference hidden states of decoder layer `layer` at the batch's scored positions."""
        assert layer == self.layer
        return self._get(split, "hidden", idx, enc)
