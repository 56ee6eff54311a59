"""HQQ backend (half-quadratic quantization: calibration-free optimisation of zero/scale, docs/science.md §3).
Through hqq's own API (transformers' HqqConfig path is not implemented in transformers 5.x).
8/4/3/2 bits, groups along the input dimension (axis=1); runs on CPU."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class HQQQuantizer:
    bits: int = 4
    group: int | None = 64

    @property
    def name(self) -> str:
        return f"hqq{self.bits}_g{self.group or 'ch'}"

    def config(self) -> dict:
        return {"backend": "hqq", "bits": self.bits, "group": self.group, "axis": 1}

    def _cfg(self, in_features: int):
        from hqq.core.quantize import BaseQuantizeConfig

        # hqq needs the group to divide the row; per channel = one group of the whole row
        g = self.group if self.group and in_features % self.group == 0 else in_features
        return BaseQuantizeConfig(nbits=self.bits, group_size=g, axis=1)

    @torch.no_grad()
    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        from hqq.core.quantize import HQQLinear

        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        lin.weight.data = w.detach().float().clone()
        hl = HQQLinear(lin, self._cfg(w.shape[1]), compute_dtype=torch.float32, device="cpu")
        return hl.dequantize().reshape(w.shape).to(device=w.device, dtype=w.dtype)

    def native(self, model):
        """Every Linear but the LM head → HQQLinear (packed weights, hqq's forward), in place."""
        from hqq.core.quantize import HQQLinear

        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        dev = next(model.parameters()).device
        for name, mod in list(model.named_modules()):
            for cname, child in list(mod.named_children()):
                if isinstance(child, torch.nn.Linear) and child is not head:
                    setattr(mod, cname, HQQLinear(child, self._cfg(child.in_features), compute_dtype=torch.float32,
                                                  device=str(dev)))
        return model


def make(bits: int = 4, group: int | None = 64, **_):
    if bits not in (8, 4, 3, 2, 1):
        raise ValueError(f"hqq supports 8/4/3/2/1 bits, not {bits}")
    return HQQQuantizer(bits, group)
