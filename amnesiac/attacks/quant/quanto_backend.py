"""optimum-quanto backend (Hugging Face). int8 = per-output-channel symmetric absmax (bit-identical
to RTN(8, None, "sym"), tested); int4/int2 = affine (min/max scale + float shift, quanto's
MaxOptimizer) in groups. quanto has no 3-bit type. Runs on CPU."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def _qtype(bits: int):
    from optimum.quanto import qint2, qint4, qint8

    table = {8: qint8, 4: qint4, 2: qint2}
    if bits not in table:
        raise ValueError(f"quanto supports 8, 4 and 2 bits, not {bits}")
    return table[bits]


def default_group(in_features: int, group: int | None) -> int | None:
    """quanto's own rule (nn/qmodule.py): 128, stepped down by 32 until it divides in_features, else
    none (per channel). A user-given group is used when it divides in_features."""
    if group and in_features % group == 0 and in_features > group:
        return group
    g = 128
    if in_features > g:
        while in_features % g != 0 and g > 32:
            g -= 32
        if in_features % g == 0:
            return g
    return None


@dataclass(frozen=True)
class QuantoQuantizer:
    bits: int = 4
    group: int | None = None

    @property
    def name(self) -> str:
        return f"quanto_int{self.bits}" + (f"_g{self.group}" if self.group and self.bits < 8 else "")

    def config(self) -> dict:
        return {"backend": "quanto", "bits": self.bits, "group": self.group}

    @torch.no_grad()
    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        from optimum.quanto.tensor.optimizers import AbsmaxOptimizer, MaxOptimizer
        from optimum.quanto.tensor.weights import quantize_weight

        qt = _qtype(self.bits)
        wf = w.detach().float()
        if self.bits == 8:  # what QLinear does for qint8: symmetric per output channel
            scale, shift, g = AbsmaxOptimizer()(wf, qtype=qt, axis=0), None, None
        else:
            g = default_group(wf.shape[1], self.group)
            scale, shift = MaxOptimizer()(wf, qtype=qt, axis=0, group_size=g)
        q = quantize_weight(wf, qtype=qt, axis=0, scale=scale, shift=shift, group_size=g)
        return q.dequantize().reshape(w.shape).to(w.dtype)

    def native(self, model):
        """quanto.quantize + freeze in place: Linear → QLinear with packed weights (lm_head excluded)."""
        from optimum.quanto import freeze, quantize
        from optimum.quanto.nn import QModuleMixin

        quantize(model, weights=_qtype(self.bits), exclude=["lm_head"])
        if self.bits < 8:  # same group as __call__ (quanto would otherwise pick its own)
            for mod in model.modules():
                if isinstance(mod, QModuleMixin) and isinstance(mod, torch.nn.Linear):
                    mod.weight_group_size = default_group(mod.in_features, self.group)
        freeze(model)
        return model


def make(bits: int = 4, group: int | None = None, **_):
    _qtype(bits)
    return QuantoQuantizer(bits, group)
