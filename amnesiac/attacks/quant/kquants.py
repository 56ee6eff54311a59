"""llama.cpp's K-quants Q4_K, Q5_K, Q6_K as quantizers: codes, packed GGUF bytes, dequantized weights.

The gguf package only dequantizes K-quants, so the rounding rule is ported (kquant_rules.py: the
rule llama-quantize applies without an importance matrix; benchmarks/conformance/kquants.py checks
the bytes against llama.cpp's own). Formats, super-blocks of 256 inputs of one row, d and dmin fp16:

    Q4_K  8 sub-blocks of 32: value = (d·ls)·q − dmin·lm,  q ∈ [0, 15], ls, lm ∈ [0, 63]   144 bytes
    Q5_K  same, q ∈ [0, 31]                                                                 176 bytes
    Q6_K  16 sub-blocks of 16: value = (d·sc)·(q − 32),     q ∈ [0, 63], sc ∈ [−128, 127]  210 bytes

`quantize(w)` returns a GGUFQTensor on the sub-block view (R, C/g, g): codes q, scale d·ls (d·sc),
and for Q4_K/Q5_K minv = −dmin·lm, so dequantize() = scale·q + minv, operation for operation what
gguf.quants.dequantize computes from the packed bytes (tests/test_kquants.py checks bit equality).

Rows whose width is not a multiple of 256 have no K encoding. llama.cpp then falls back to a
32-block format (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0; F16 when the width is not a multiple of 32
either): misfit="fallback" (default) does the same, with gguf's own legacy quantizer, so quantize()
returns that format's codes; misfit="error" refuses with the shape named.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .gguf_backend import BLOCK, GGUFQTensor, GGUFQuantizer
from .kquant_rules import QK_K, quantize_affine_k, quantize_q6_k

# kind → (bits, sub-block size, bytes per super-block)
K_KINDS = {"q4_k": (4, 32, 144), "q5_k": (5, 32, 176), "q6_k": (6, 16, 210)}
FALLBACK = {"q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}  # llama-quant.cpp tensor_type_fallback
_AFFINE = {"q4_k": (15, -1.0, 20), "q5_k": (31, -0.5, 15)}  # nmax, rmin, nstep of make_qkx2


def _fp16_bytes(v: torch.Tensor) -> np.ndarray:
    return v.half().numpy().view(np.uint8).reshape(*v.shape, 2)


def _pack_scales(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """6-bit scales and mins (NB, 8) → the 12 bytes of block_q4_K.scales: bytes 0–3 ls[0:4] (+ the top
    2 bits of ls[4:8] in bits 6–7), 4–7 lm[0:4] (+ top bits of lm[4:8]), 8–11 low nibbles of ls/lm[4:8]."""
    lo, hi = ls[:, :4] | ((ls[:, 4:] >> 4) << 6), lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    return np.concatenate([lo, hi, (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)], axis=1).astype(np.uint8)


def unpack_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of _pack_scales (get_scale_min_k4): (NB, 12) bytes → ls, lm (NB, 8)."""
    s = s.astype(np.int64)
    ls = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    lm = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return ls, lm


def pack_blocks(kind: str, r: dict) -> np.ndarray:
    """The rule's output (kquant_rules) → packed bytes (NB, bytes per super-block), ggml's struct layout."""
    if kind == "q6_k":
        L = r["L"].reshape(-1, 2, 4, 32).numpy().astype(np.uint8)  # (NB, half, quarter, 32)
        ql = np.concatenate([(L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4),
                             (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)], axis=2).reshape(-1, 128)
        qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4)
              | ((L[:, :, 3] >> 4) << 6)).reshape(-1, 64)
        sc = r["sc"].numpy().astype(np.int8).view(np.uint8)
        return np.concatenate([ql, qh, sc, _fp16_bytes(r["d"])], axis=1)
    L = r["L"].reshape(-1, 4, 2, 32).numpy().astype(np.uint8)  # (NB, 64-chunk, half, 32)
    head = [_fp16_bytes(r["d"]), _fp16_bytes(r["dmin"]), _pack_scales(r["ls"].numpy(), r["lm"].numpy())]
    qs = ((L[:, :, 0] & 0xF) | ((L[:, :, 1] & 0xF) << 4)).reshape(-1, 128)
    if kind == "q4_k":
        return np.concatenate([*head, qs], axis=1)
    bit = np.arange(4, dtype=np.uint8)[None, :, None] * 2  # chunk c: its first half → bit 2c, second → 2c+1
    qh = (((L[:, :, 0] >> 4) << bit) | ((L[:, :, 1] >> 4) << (bit + 1))).sum(1, dtype=np.uint8)
    return np.concatenate([*head, qh, qs], axis=1)


def unpack_blocks(raw: np.ndarray, kind: str, shape: tuple[int, int]) -> GGUFQTensor:
    """Packed bytes (R, C/256·bytes) → codes, sub-block step (and minimum) as a GGUFQTensor."""
    R, C = shape
    b = raw.reshape(-1, K_KINDS[kind][2])
    f16 = lambda a: torch.from_numpy(a.copy().view(np.float16).astype(np.float32)).reshape(-1, 1)  # noqa: E731
    if kind == "q6_k":
        ql, qh = b[:, :128].reshape(-1, 2, 2, 32), b[:, 128:192].reshape(-1, 2, 1, 32)
        low = np.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
        high = (qh >> (np.arange(4, dtype=np.uint8) * 2)[None, None, :, None]) & 3
        codes = torch.from_numpy((low | (high << 4)).astype(np.int32)).reshape(R, C // 16, 16)
        step = f16(b[:, 208:210]) * torch.from_numpy(b[:, 192:208].copy().view(np.int8).astype(np.float32))
        scale = step.reshape(R, C // 16, 1)
        return GGUFQTensor(codes, scale, torch.full_like(scale, 32.0), (R, C))
    ls, lm = unpack_scales(b[:, 4:16])
    qs = b[:, -128:].reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    q = (qs & 0xF).astype(np.int32)
    if kind == "q5_k":
        qh = b[:, 16:48].reshape(-1, 1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 4, 2, 1)
        q = q | ((qh & 1).astype(np.int32) << 4)
    scale = (f16(b[:, 0:2]) * torch.from_numpy(ls.astype(np.float32))).reshape(R, C // 32, 1)
    minv = -(f16(b[:, 2:4]) * torch.from_numpy(lm.astype(np.float32))).reshape(R, C // 32, 1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.where(scale > 0, -minv / safe, torch.zeros_like(minv))
    return GGUFQTensor(torch.from_numpy(q).reshape(R, C // 32, 32), scale, zero, (R, C), minv)


def _rule(kind: str, x: torch.Tensor) -> dict:
    if kind == "q6_k":
        return quantize_q6_k(x)
    nmax, rmin, nstep = _AFFINE[kind]
    return quantize_affine_k(x, nmax, rmin, nstep)


@dataclass(frozen=True)
class KQuantizer:
    """`KQuantizer("q4_k")(w)` = the dequantized weights of llama-quantize's Q4_K encoding of w (R, C)."""
    kind: str = "q4_k"
    misfit: str = "fallback"  # "fallback" (llama.cpp's: Q5_0 / Q5_1 / Q8_0, else F16) | "error"
    chunk_rows: int = 4096  # rows per pass (bounds the temporary memory; the result does not depend on it)

    def __post_init__(self):
        if self.kind not in K_KINDS:
            raise ValueError(f"unknown K-quant {self.kind!r}; available: {', '.join(K_KINDS)}")
        if self.misfit not in ("fallback", "error"):
            raise ValueError(f"misfit must be 'fallback' or 'error', got {self.misfit!r}")

    @property
    def name(self) -> str:
        return f"gguf_{self.kind}"

    @property
    def bits(self) -> int:
        return K_KINDS[self.kind][0]

    @property
    def group(self) -> int:
        return K_KINDS[self.kind][1]

    def config(self) -> dict:
        from importlib.metadata import version

        return {"backend": "gguf", "kind": self.kind, "bits": self.bits, "group": self.group, "super_block": QK_K,
                "misfit": self.misfit, "fallback": FALLBACK[self.kind], "gguf_version": version("gguf")}

    def stored_type(self, n_cols: int) -> str:
        """The GGML type a row of n_cols inputs is stored as: the K-quant, its fallback, or f16."""
        if n_cols % QK_K == 0:
            return self.kind
        if self.misfit == "error":
            raise ValueError(f"GGUF {self.kind.upper()} quantizes rows in super-blocks of {QK_K}; this weight has "
                             f"{n_cols} inputs, not a multiple of {QK_K}. llama-quantize stores such tensors as "
                             f"{FALLBACK[self.kind].upper()}: pass misfit='fallback' to do the same, or leave the "
                             "module out (exclude=<regex>)")
        return FALLBACK[self.kind] if n_cols % BLOCK == 0 else "f16"

    def _check(self, w: torch.Tensor) -> str:
        if w.dim() != 2:
            raise ValueError(f"expected a 2-D weight (out, in), got shape {tuple(w.shape)}")
        return self.stored_type(w.shape[1])

    @torch.no_grad()
    def _encode(self, w: torch.Tensor) -> tuple[np.ndarray, list[dict]]:
        x = w.detach().float().cpu()
        parts = [_rule(self.kind, x[i:i + self.chunk_rows].reshape(-1)) for i in range(0, x.shape[0], self.chunk_rows)]
        return np.concatenate([pack_blocks(self.kind, p) for p in parts]), parts

    def pack(self, w: torch.Tensor) -> np.ndarray:
        """Packed blocks (uint8, (R, C/256·bytes)) exactly as llama-quantize writes them (or the fallback's)."""
        t = self._check(w)
        if t != self.kind:
            if t == "f16":
                raise ValueError(f"{tuple(w.shape)}: {w.shape[1]} inputs is not a multiple of {BLOCK}; llama.cpp "
                                 "stores this tensor as F16, which has no blocks")
            return GGUFQuantizer(t).pack(w)
        return self._encode(w)[0].reshape(w.shape[0], -1)

    @torch.no_grad()
    def quantize(self, w: torch.Tensor) -> GGUFQTensor:
        t = self._check(w)
        if t != self.kind:
            return GGUFQuantizer(t).quantize(w)  # raises for F16: no integer codes
        R, C = w.shape
        parts = self._encode(w)[1]
        g = self.group
        codes = torch.cat([p["L"].reshape(-1, C // g, g) for p in parts])
        scale = torch.cat([p["step"].reshape(-1, C // g, 1) for p in parts])
        if self.kind == "q6_k":
            qt = GGUFQTensor(codes, scale, torch.full_like(scale, 32.0), (R, C))
        else:
            minv = -torch.cat([p["off"].reshape(-1, C // g, 1) for p in parts])
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            qt = GGUFQTensor(codes, scale, torch.where(scale > 0, -minv / safe, torch.zeros_like(minv)), (R, C), minv)
        dev = w.device
        return GGUFQTensor(qt.codes.to(dev), qt.scale.to(dev), qt.zero.to(dev), qt.shape,
                           None if qt.minv is None else qt.minv.to(dev))

    def position(self, w: torch.Tensor, qt: GGUFQTensor | None = None) -> torch.Tensor:
        return (qt or self.quantize(w)).position(w)

    @torch.no_grad()
    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        if self._check(w) == "f16":
            return w.half().to(w.dtype)
        return self.quantize(w).dequantize().to(w.dtype)

    def fake_quant(self, w: torch.Tensor) -> torch.Tensor:
        from .rtn import _StraightThrough

        return _StraightThrough.apply(w, self(w.detach()))

    def native(self, model):
        return GGUFQuantizer.native(None, model)  # same refusal: llama.cpp is the runtime, not torch
