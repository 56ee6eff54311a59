"""Round-to-nearest (RTN) weight quantization, exact and vectorised (docs/science.md §3).

A quantizer is a pure function `w -> dequantized w` plus a `quantize(w) -> QTensor` accessor that
exposes integer codes, per-group scales and zero points. Later users (GGUF formats, fake-quant
training, §2b) build on the same two entry points, so everything here works under autograd:
`fake_quant(w)` returns Q(w) in the forward pass with the straight-through gradient (identity).

Shapes. A weight is (R, C): R output units (rows), C inputs. Groups of `group` consecutive inputs
share one scale, so a row splits into G = ceil(C / group) groups; `group=None` is one group per
row ("per output channel"). Everything runs on a grouped view (R, G, g).

Remainder group (C not a multiple of g, e.g. SmolLM2's 576 with g=128 → 4 full groups of 128 and
one of 64): the last group holds only the leftover columns and gets its own scale from them. To
keep the computation a single tensor op the row is padded by repeating its last column, which
changes neither the max, the min nor the absmax of that group; the padding is dropped afterwards.

Schemes (N = bits):
- sym  (absmax): Δ = max|w| / (2^(N−1) − 1), code = clamp(round(w/Δ), −2^(N−1), 2^(N−1) − 1),
       Q(w) = Δ·code  (the paper's formula; an all-zero group gets Δ = 1, codes 0).
- asym (min/max with integer zero point, the GPTQ reference quantizer's convention): the range is
       widened to include 0, lo = min(min w, 0), hi = max(max w, 0); Δ = (hi − lo)/(2^N − 1),
       z = round(−lo/Δ), code = clamp(round(w/Δ) + z, 0, 2^N − 1), Q(w) = Δ·(code − z).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass
class QTensor:
    """Integer codes and their grid, on the grouped view. dequantize() = scale·(codes − zero)."""
    codes: torch.Tensor  # (R, G, g) int32
    scale: torch.Tensor  # (R, G, 1) float32, the step Δ of each group
    zero: torch.Tensor  # (R, G, 1) float32 (integer valued; 0 for symmetric)
    shape: tuple[int, int]  # original (R, C)

    def _flat(self, t: torch.Tensor) -> torch.Tensor:
        R, C = self.shape
        return t.expand(self.codes.shape).reshape(R, -1)[:, :C]

    def dequantize(self) -> torch.Tensor:
        return self._flat(self.scale * (self.codes.to(self.scale.dtype) - self.zero))

    def codes_flat(self) -> torch.Tensor:  # (R, C)
        return self._flat(self.codes)

    def step_flat(self) -> torch.Tensor:  # (R, C) the Δ that applies to each weight
        return self._flat(self.scale)

    def zero_flat(self) -> torch.Tensor:
        return self._flat(self.zero)


def group_view(w: torch.Tensor, group: int | None) -> torch.Tensor:
    """(R, C) → (R, G, g), remainder group padded by repeating the last column (see module doc)."""
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight (out, in), got shape {tuple(w.shape)}")
    R, C = w.shape
    g = C if not group or group >= C else int(group)
    pad = (-C) % g
    if pad:
        w = torch.cat([w, w[:, -1:].expand(R, pad)], dim=1)
    return w.reshape(R, -1, g)


@dataclass(frozen=True)
class RTN:
    """Round-to-nearest quantizer. `RTN(4, 64, "sym")(w)` is Q(w) (dequantized), same shape/dtype as w."""
    bits: int = 4
    group: int | None = None  # None → per output channel
    scheme: str = "sym"  # "sym" | "asym"

    def __post_init__(self):
        if not 2 <= int(self.bits) <= 8:
            raise ValueError(f"RTN supports 2–8 bits, got {self.bits}")
        if self.scheme not in ("sym", "asym"):
            raise ValueError(f"scheme must be 'sym' or 'asym', got {self.scheme!r}")
        if self.group is not None and int(self.group) < 1:
            raise ValueError(f"group size must be ≥ 1 (or None for per channel), got {self.group}")

    @property
    def name(self) -> str:
        return f"rtn{self.bits}_{self.scheme}_" + (f"g{self.group}" if self.group else "ch")

    def config(self) -> dict:
        return {"backend": "rtn", **asdict(self)}

    def _grid(self, wg: torch.Tensor):
        """Scale and zero of each group. wg: (R, G, g) float32 → (R, G, 1) each."""
        if self.scheme == "sym":
            qmax = 2 ** (self.bits - 1) - 1
            amax = wg.abs().amax(-1, keepdim=True)
            scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
            return scale, torch.zeros_like(scale)
        qmax = 2 ** self.bits - 1
        lo = wg.amin(-1, keepdim=True).clamp(max=0)
        hi = wg.amax(-1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, torch.round(-lo / scale)

    def _levels(self) -> tuple[int, int]:
        if self.scheme == "sym":
            return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        return 0, 2 ** self.bits - 1

    @torch.no_grad()
    def quantize(self, w: torch.Tensor) -> QTensor:
        wg = group_view(w.detach().float(), self.group)
        scale, zero = self._grid(wg)
        lo, hi = self._levels()
        codes = torch.clamp(torch.round(wg / scale) + zero, lo, hi).to(torch.int32)
        return QTensor(codes, scale, zero, tuple(w.shape))

    def position(self, w: torch.Tensor, qt: QTensor | None = None) -> torch.Tensor:
        """Continuous grid coordinate w/Δ + z of every weight, (R, C); its fractional part is the grid offset."""
        qt = qt or self.quantize(w)
        return w.detach().float() / qt.step_flat() + qt.zero_flat()

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return self.quantize(w).dequantize().to(w.dtype)

    def fake_quant(self, w: torch.Tensor) -> torch.Tensor:
        """Q(w) forward, bit-identical to self(w); straight-through (identity) gradient backward (§2b)."""
        return _StraightThrough.apply(w, self(w.detach()))


class _StraightThrough(torch.autograd.Function):
    """Returns q exactly (w + (q − w).detach() can differ from q in the last bit); ∂/∂w = identity."""

    @staticmethod
    def forward(ctx, w, q):
        return q.clone()

    @staticmethod
    def backward(ctx, g):
        return g, None


def parse_rtn(spec: str) -> RTN:
    """'rtn4_sym_g64' / 'rtn8_asym_ch' / 'rtn4' (sym, per channel) → RTN."""
    import re

    m = re.fullmatch(r"rtn(\d)(?:_(sym|asym))?(?:_(?:g(\d+)|ch))?", spec.strip().lower())
    if not m:
        raise ValueError(f"cannot parse RTN spec {spec!r}; expected e.g. rtn4_sym_g64 or rtn8_asym_ch")
    return RTN(int(m.group(1)), int(m.group(3)) if m.group(3) else None, m.group(2) or "sym")
