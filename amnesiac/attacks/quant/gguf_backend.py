"""llama.cpp's GGUF block formats as quantizers (docs/science.md §1b, §3).

Quantize→dequantize is done by the `gguf` package's own reference code (`gguf.quants.quantize` /
`dequantize`, the numpy port of ggml-quants.c that llama.cpp's converter uses), so "re-quantize to
the release format" here is exactly what a user shipping a GGUF gets. Formats (blocks of 32
consecutive inputs of one row; d, m stored as fp16):

    Q4_0  value = d·(q − 8),  q ∈ [0, 15],   d = (signed absmax)/−8
    Q4_1  value = d·q + m,    q ∈ [0, 15],   d = (max − min)/15, m = min
    Q5_0  value = d·(q − 16), q ∈ [0, 31],   d = (signed absmax)/−16
    Q5_1  value = d·q + m,    q ∈ [0, 31],   d = (max − min)/31, m = min
    Q8_0  value = d·q,        q ∈ [−127, 127], d = absmax/127

`quantize(w)` decodes the packed blocks gguf produced into integer codes, scales and (for the _1
formats) block minima, as a QTensor for the collapse diagnostic. Its dequantize() repeats gguf's
float arithmetic operation for operation (d·q + m, d·(q − z)), so it equals gguf.quants.dequantize
bit for bit (tests/test_gguf.py checks every format). For the grid position used by the collapse
diagnostic a _1 block's zero point is −m/d (w/d + zero = (w − m)/d, the code coordinate); see
GGUFQTensor.step_flat / zero_flat for the negative d of Q4_0/Q5_0.

Rows whose width C is not a multiple of 32 have no GGUF encoding (gguf raises; llama.cpp's
converter stores such tensors as F16 instead). `misfit="error"` (default) raises a ValueError naming
the shape; `misfit="f16"` mirrors the converter (the weight rounded to fp16); `misfit="keep"` leaves
it unchanged. quantize() always raises for a misfit row: an F16 tensor has no integer codes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .rtn import QTensor

BLOCK = 32
# kind → (bits, has block minimum m, code offset z subtracted before scaling)
KINDS = {"q4_0": (4, False, 8), "q4_1": (4, True, 0), "q5_0": (5, False, 16), "q5_1": (5, True, 0),
         "q8_0": (8, False, 0)}
DEFAULT_KIND = {4: "q4_0", 5: "q5_0", 8: "q8_0"}


def _qtype(kind: str):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[kind.upper()]


@dataclass
class GGUFQTensor(QTensor):
    """QTensor on the (R, C/32, 32) block view. `minv` (R, G, 1) is the block minimum m of Q4_1/Q5_1
    (None otherwise); then dequantize() = scale·codes + minv, as ggml computes it."""
    minv: torch.Tensor | None = None

    def dequantize(self) -> torch.Tensor:
        if self.minv is None:
            return super().dequantize()
        return self._flat(self.scale * self.codes.to(torch.float32) + self.minv)

    def step_flat(self) -> torch.Tensor:
        """|d| per weight. Q4_0/Q5_0 store a negative d (the signed absmax is mapped to code 0); a
        constant block has d = 0 and reports a unit step so |Δw|/Δ and grid offsets stay finite."""
        s = self._flat(self.scale).abs()
        return torch.where(s > 0, s, torch.ones_like(s))

    def zero_flat(self) -> torch.Tensor:
        """zero·sign(d), so that w/step_flat + zero_flat = ±(w/d + zero): ± the code coordinate, the
        same distance to the nearest grid point (what the collapse diagnostic's grid offset reads)."""
        sign = torch.where(self.scale < 0, -1.0, 1.0)
        return self._flat(self.zero * sign)

    def position(self, w: torch.Tensor) -> torch.Tensor:
        """The code coordinate w/d + zero of every weight, (R, C): round-half-up of it is the code
        (up to the clip at the format's range)."""
        d = self._flat(self.scale)
        return w.detach().float() / torch.where(d != 0, d, torch.ones_like(d)) + self._flat(self.zero)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(…, 16) packed bytes → (…, 32) 4-bit values: byte j holds element j (low) and j+16 (high)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def decode_blocks(raw: np.ndarray, kind: str, shape: tuple[int, int]) -> GGUFQTensor:
    """gguf's packed uint8 array (R, C/32·bytes_per_block) → codes (int32), d, m as tensors."""
    R, C = shape
    G = C // BLOCK
    b = raw.reshape(R, G, -1)
    f16 = lambda a: a.copy().view(np.float16).astype(np.float32)  # noqa: E731  (bytes → fp16 → fp32, as gguf)
    bits, has_min, z = KINDS[kind]
    d = f16(b[..., 0:2])
    m = f16(b[..., 2:4]) if has_min else None
    o = 4 if has_min else 2
    if kind == "q8_0":
        codes = b[..., o:o + BLOCK].copy().view(np.int8).astype(np.int32)
    elif bits == 4:
        codes = _nibbles(b[..., o:o + 16]).astype(np.int32)
    else:  # 5 bits: a uint32 of high bits (bit i → element i) then 16 bytes of low nibbles
        qh = b[..., o:o + 4].copy().view(np.uint32)
        high = (qh >> np.arange(BLOCK, dtype=np.uint32)) & 1
        codes = (_nibbles(b[..., o + 4:o + 20]) | (high.astype(np.uint8) << 4)).astype(np.int32)
    scale = torch.from_numpy(d)
    if has_min:
        minv = torch.from_numpy(m)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.where(scale > 0, -minv / safe, torch.zeros_like(minv))
    else:
        minv, zero = None, torch.full_like(scale, float(z))
    return GGUFQTensor(torch.from_numpy(codes), scale, zero, (R, C), minv)


@dataclass(frozen=True)
class GGUFQuantizer:
    """`GGUFQuantizer("q4_1")(w)` = gguf's dequantize(quantize(w)) for an (R, C) weight, C % 32 == 0."""
    kind: str = "q4_1"
    misfit: str = "error"  # "error" | "f16" | "keep": rows whose width is not a multiple of 32

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown GGUF format {self.kind!r}; available: {', '.join(KINDS)}")
        if self.misfit not in ("error", "f16", "keep"):
            raise ValueError(f"misfit must be 'error', 'f16' or 'keep', got {self.misfit!r}")

    @property
    def name(self) -> str:
        return f"gguf_{self.kind}"

    @property
    def bits(self) -> int:
        return KINDS[self.kind][0]

    group = BLOCK

    def config(self) -> dict:
        from importlib.metadata import version

        return {"backend": "gguf", "kind": self.kind, "bits": self.bits, "group": BLOCK, "misfit": self.misfit,
                "gguf_version": version("gguf")}

    def _fits(self, w: torch.Tensor) -> bool:
        if w.dim() != 2:
            raise ValueError(f"expected a 2-D weight (out, in), got shape {tuple(w.shape)}")
        return w.shape[1] % BLOCK == 0

    def _misfit_error(self, w: torch.Tensor) -> ValueError:
        return ValueError(f"GGUF {self.kind.upper()} quantizes rows in blocks of {BLOCK}; this weight is "
                          f"{tuple(w.shape)} ({w.shape[1]} inputs, not a multiple of {BLOCK}). llama.cpp's "
                          "converter stores such tensors as F16: pass misfit='f16' to do the same, or leave the "
                          "module out (exclude=<regex>)")

    @torch.no_grad()
    def pack(self, w: torch.Tensor) -> np.ndarray:
        """The packed GGUF blocks (uint8, (R, C/32·bytes)) exactly as they would be written to a file."""
        import gguf

        if not self._fits(w):
            raise self._misfit_error(w)
        return gguf.quants.quantize(w.detach().float().cpu().numpy(), _qtype(self.kind))

    @torch.no_grad()
    def quantize(self, w: torch.Tensor) -> GGUFQTensor:
        qt = decode_blocks(self.pack(w), self.kind, tuple(w.shape))
        dev = w.device
        return GGUFQTensor(qt.codes.to(dev), qt.scale.to(dev), qt.zero.to(dev), qt.shape,
                           None if qt.minv is None else qt.minv.to(dev))

    def position(self, w: torch.Tensor, qt: GGUFQTensor | None = None) -> torch.Tensor:
        """Continuous code coordinate w/d + zero of every weight, (R, C) (as RTN.position)."""
        return (qt or self.quantize(w)).position(w)

    @torch.no_grad()
    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        import gguf

        if not self._fits(w):
            if self.misfit == "error":
                raise self._misfit_error(w)
            return w.half().to(w.dtype) if self.misfit == "f16" else w.clone()
        out = gguf.quants.dequantize(self.pack(w), _qtype(self.kind)).reshape(w.shape)
        return torch.from_numpy(np.ascontiguousarray(out)).to(device=w.device, dtype=w.dtype)

    def fake_quant(self, w: torch.Tensor) -> torch.Tensor:
        """Q(w) forward, bit-identical to self(w); straight-through (identity) gradient backward (§2b).
        (w + (q − w).detach() would differ from q in the last bit: the attack must be reproduced exactly.)"""
        from .rtn import _StraightThrough

        return _StraightThrough.apply(w, self(w.detach()))

    def native(self, model):
        """GGUF's own runtime is llama.cpp, not a torch module; refuse rather than pretend."""
        raise RuntimeError(
            "GGUF formats have no in-torch native runtime: native=False already computes with exactly the "
            "weights a .gguf file holds (gguf's own dequantize). To run llama.cpp itself, write the file with "
            "amnesiac.attacks.quant.gguf_io.write_gguf and load it with llama-cpp-python (no PyPI wheel for Linux; "
            "it compiles llama.cpp from source)")


def _all_kinds() -> list[str]:
    from .gguf_mix import FTYPES
    from .kquants import K_KINDS

    return [*KINDS, *K_KINDS, *(f for f in FTYPES if f not in K_KINDS)]


def _for_kind(kind: str, misfit: str | None = None):
    """The quantizer of a legacy format (GGUFQuantizer), a K-quant (KQuantizer) or a mixed file type (GGUFMix)."""
    from .gguf_mix import FTYPES, GGUFMix
    from .kquants import K_KINDS, KQuantizer

    if kind in KINDS:
        return GGUFQuantizer(kind, misfit or "error")
    if kind in K_KINDS:
        return KQuantizer(kind, misfit or "fallback")
    if kind in FTYPES:
        if misfit:
            raise ValueError(f"{kind}: a llama.cpp file type applies llama.cpp's own fallback per tensor; misfit= "
                             "is not available")
        return GGUFMix(kind)
    raise ValueError(f"unknown GGUF format {kind!r}; available: {', '.join(_all_kinds())}")


def parse_gguf(spec: str):
    """'gguf_q4_1' / 'q4_1' / 'Q8_0' / 'q4_k' / 'q4_k_m' → the quantizer of that GGUF format or file type."""
    s = spec.strip().lower()
    s = s[5:] if s.startswith("gguf_") else s
    if s not in _all_kinds():
        raise ValueError(f"cannot parse GGUF spec {spec!r}; expected one of "
                         f"{', '.join('gguf_' + k for k in _all_kinds())}")
    return _for_kind(s)


def make(bits: int = 4, group: int | None = None, kind: str | None = None, misfit: str | None = None, **_):
    """backends.get_quantizer entry: `kind` names the format (q4_0 … q8_0, q4_k / q5_k / q6_k, or a file
    type q4_k_m …); without it, bits picks Q4_0 / Q5_0 / Q8_0."""
    if kind is None:
        if group not in (None, BLOCK):
            raise ValueError(f"GGUF formats use blocks of {BLOCK}; group={group} is not available")
        if bits not in DEFAULT_KIND:
            raise ValueError(f"GGUF legacy formats exist at 4, 5 and 8 bits, not {bits}; or pass kind=q4_1 etc.")
        kind = DEFAULT_KIND[bits]
    q = _for_kind(kind.lower().removeprefix("gguf_"), misfit)
    if group not in (None, q.group):
        raise ValueError(f"GGUF {q.name} uses blocks of {q.group}; group={group} is not available")
    return q
