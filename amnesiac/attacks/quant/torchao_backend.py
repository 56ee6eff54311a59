"""torchao backend: `IntxWeightOnlyConfig` (weight-only intN, symmetric) with PerGroup or PerAxis
granularity, 8/4/3/2 bits on CPU. (`Int4WeightOnlyConfig` needs a GPU kernel and fails on CPU.)"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TorchaoQuantizer:
    bits: int = 4
    group: int | None = 64

    @property
    def name(self) -> str:
        return f"torchao_int{self.bits}_" + (f"g{self.group}" if self.group else "ch")

    def config(self) -> dict:
        return {"backend": "torchao", "bits": self.bits, "group": self.group, "config": "IntxWeightOnlyConfig"}

    def _config(self, in_features: int | None = None):
        from torchao.quantization import IntxWeightOnlyConfig
        from torchao.quantization.granularity import PerAxis, PerGroup

        per_group = self.group and (in_features is None or in_features % self.group == 0)
        gran = PerGroup(self.group) if per_group else PerAxis(0)
        return IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{self.bits}"), granularity=gran)

    @torch.no_grad()
    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        from torchao.quantization import quantize_

        lin = torch.nn.Sequential(torch.nn.Linear(w.shape[1], w.shape[0], bias=False))
        lin[0].weight.data = w.detach().float().clone()
        quantize_(lin, self._config(w.shape[1]))
        return lin[0].weight.dequantize().reshape(w.shape).to(device=w.device, dtype=w.dtype)

    def native(self, model):
        """torchao.quantize_ in place on every Linear except the LM head (tensor-subclass weights).
        Layers whose width the group does not divide are left in full precision by this path."""
        from torchao.quantization import quantize_

        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        cfg = self._config()
        quantize_(model, cfg, filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and m is not head
                  and (not self.group or m.in_features % self.group == 0))
        return model


def make(bits: int = 4, group: int | None = 64, **_):
    if not 1 <= bits <= 8:
        raise ValueError(f"torchao IntxWeightOnly supports 1–8 bits, not {bits}")
    return TorchaoQuantizer(bits, group)
