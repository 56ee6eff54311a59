"""llama.cpp's K-quant rounding rules (ggml-quants.c, no importance matrix), vectorised in torch.

The rules are the ones `llama-quantize` applies when it is given no imatrix (quantize_row_q*_K_ref);
this is a port of the rule, written anew, that reproduces its bytes: every float operation is done in
float32 in the C order. Three things make that work:
- `nearest_int(f)` in C adds 1.5·2^23 and reads the mantissa: round half to even for |f| < 2^22,
  which is torch.round;
- the C sums are left-to-right float32 loops; `_seqsum` adds the terms of a sub-block one index at a
  time (vectorised over all sub-blocks), never torch.sum (pairwise, or a double accumulator);
- constants such as 0.1f and rmin + rdelta·is + nmax are formed as float32 scalars first;
- sqrtf is taken in float64 and rounded once (torch's float32 sqrt is not always correctly rounded),
  and the signs of zeros follow the C comparisons (a −0 dmin is a different byte).

Layout: the weight (R, C) is split into super-blocks of QK_K = 256 consecutive inputs of one row, and
those into sub-blocks (32 inputs for Q4_K / Q5_K, 16 for Q6_K). The functions here take the
sub-blocks transposed, x of shape (n, B): n inputs of each of B sub-blocks, so x[i] is contiguous.

Rules (docs/guides/quantization-backends.md has the formats):
- make_qkx2 (Q4_K nmax 15, Q5_K nmax 31): affine x ≈ s·L − m with L ∈ [0, nmax]; start from the
  min/max grid, then try nstep+1 grids iscale = (rmin + rdelta·is + nmax)/(max − min), fit s, m by
  weighted least squares on each (weights av_x + |x|), keep the lowest weighted squared error.
- make_qx (Q6_K, nmax 32, weights x²): symmetric x ≈ s·L with L ∈ [−32, 31]; iscale = −nmax/max
  (max = the signed value of largest |x|), then 18 nearby grids −(nmax + 0.1·is)/max, keep the one
  with the largest (Σwxl)²/Σwl² (the least-squares optimum).
"""
from __future__ import annotations

import numpy as np
import torch

QK_K = 256
GROUP_MAX_EPS = float(np.float32(1e-15))
F32 = torch.float32


def _seqsum(terms: torch.Tensor) -> torch.Tensor:
    """(n, B) → (B,): terms[0] + terms[1] + … in that order, float32 (the C loop's accumulation)."""
    s = terms[0].clone()
    for i in range(1, terms.shape[0]):
        s += terms[i]
    return s


def _f(v) -> torch.Tensor:
    return torch.tensor(np.float32(v), dtype=F32)


def make_qkx2(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int):
    """x, w (n, B) float32 → (scale (B,), the_min (B,), L (n, B) float in [0, nmax]) with x ≈ scale·L − the_min."""
    mn = x.amin(0)
    mn = torch.where(mn > 0, torch.zeros((), dtype=F32), mn)  # `if (min > 0) min = 0`, keeping the sign of a zero
    mx = x.amax(0)
    sum_w = _seqsum(w)
    sum_x = _seqsum(w * x)
    flat = mx == mn
    one = torch.ones((), dtype=F32)
    rng = torch.where(flat, one, mx - mn)
    iscale = _f(nmax) / rng
    scale = one / iscale
    L = torch.clamp(torch.round(iscale * (x - mn)), 0, nmax)
    diff = scale * L + mn - x
    best = _seqsum(w * (diff * diff))
    for step in range(nstep + 1):
        num = np.float32(rmin) + np.float32(rdelta) * np.float32(step) + np.float32(nmax)
        rng = torch.where(flat, one, mx - mn)  # mn moves when a better grid is found (as in C)
        isc = _f(num) / rng
        la = torch.clamp(torch.round(isc * (x - mn)), 0, nmax)
        wl = w * la
        sum_l, sum_l2, sum_xl = _seqsum(wl), _seqsum(wl * la), _seqsum(wl * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        Ds = torch.where(ok, D, one)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / Ds
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / Ds
        pos = this_min > 0
        this_min = torch.where(pos, torch.zeros((), dtype=F32), this_min)
        this_scale = torch.where(pos, sum_xl / torch.where(sum_l2 != 0, sum_l2, one), this_scale)
        d = this_scale * la + this_min - x
        cur = _seqsum(w * (d * d))
        better = ok & (cur < best) & ~flat
        L = torch.where(better, la, L)
        best = torch.where(better, cur, best)
        scale = torch.where(better, this_scale, scale)
        mn = torch.where(better, this_min, mn)
    zero = torch.zeros((), dtype=F32)
    L = torch.where(flat, zero, L)
    scale = torch.where(flat, zero, scale)
    return scale, -mn, L


def _signed_absmax(v: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(|v| max, v at the first index reaching it) along dim: C's `if (ax > amax) {amax = ax; max = x}`."""
    a = v.abs()
    idx = a.argmax(dim, keepdim=True)  # first occurrence of the maximum
    return a.gather(dim, idx).squeeze(dim), v.gather(dim, idx).squeeze(dim)


def make_qx(x: torch.Tensor, nmax: int):
    """make_qx_quants with rmse_type 1 (weights x²), no imatrix. x (n, B) → (scale (B,), L (n, B) in [0, 2·nmax))."""
    amax, mx = _signed_absmax(x, 0)
    zero_blk = amax < GROUP_MAX_EPS
    one = torch.ones((), dtype=F32)
    mxs = torch.where(zero_blk, one, mx)
    w = x * x
    wx = w * x

    def fit(isc):
        la = torch.clamp(torch.round(isc * x), -nmax, nmax - 1)
        return la, _seqsum(wx * la), _seqsum((w * la) * la)

    la, sumlx, suml2 = fit(_f(-nmax) / mxs)
    L = la + nmax
    scale = torch.where(suml2 != 0, sumlx / torch.where(suml2 != 0, suml2, one), torch.zeros((), dtype=F32))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        num = -(np.float32(nmax) + np.float32(0.1) * np.float32(step))
        la, sumlx, suml2 = fit(_f(num) / mxs)
        upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = torch.where(upd, la + nmax, L)
        scale = torch.where(upd, sumlx / torch.where(suml2 > 0, suml2, one), scale)
        best = torch.where(upd, scale * sumlx, best)
    zero = torch.zeros((), dtype=F32)
    return torch.where(zero_blk, zero, scale), torch.where(zero_blk, zero, L)


def _fp16(v: torch.Tensor) -> torch.Tensor:
    """GGML_FP32_TO_FP16 then back: round to nearest even fp16 (subnormals included), as float32."""
    return v.half().float()


def _nearest_u8(v: torch.Tensor) -> torch.Tensor:
    """`uint8_t ls = nearest_int(v)`: the int wraps modulo 256 in the uint8 it is stored in."""
    return torch.round(v).to(torch.int64) & 0xFF


def quantize_affine_k(x: torch.Tensor, nmax: int, rmin: float, nstep: int) -> dict:
    """Q4_K (nmax 15, rmin −1, 20 steps) / Q5_K (nmax 31, rmin −0.5, 15 steps) of flat data (NB·256,).

    Returns integer sub-block scales ls, mins lm (NB, 8) in [0, 63], fp16 d and dmin (NB,) as float32,
    codes L (NB, 8, 32) in [0, nmax], and the float32 step d·ls and offset dmin·lm of each sub-block:
    value = (d·ls)·L − dmin·lm (dequantize_row_q4_K)."""
    NB = x.numel() // QK_K
    xs = x.reshape(NB * 8, 32).T.contiguous()  # (32, B) sub-blocks of 32
    # sqrtf is correctly rounded; torch's float32 sqrt on CPU is not always (seen 1 ulp off): take the
    # square root in float64 and round once to float32, which is the correctly rounded float32 result
    av_x = torch.sqrt((_seqsum(xs * xs) / _f(32)).double()).float()
    w = av_x + xs.abs()
    scales, mins, L = make_qkx2(xs, w, nmax, rmin, 0.1, nstep)
    scales, mins = scales.view(NB, 8), mins.view(NB, 8)
    zero = torch.zeros((), dtype=F32)
    # C starts from +0 and replaces it only by a larger value: a block of −0 minima keeps dmin = +0
    max_scale = torch.where(scales.amax(1) > 0, scales.amax(1), zero)
    max_min = torch.where(mins.amax(1) > 0, mins.amax(1), zero)
    inv_scale = torch.where(max_scale > 0, _f(63) / torch.where(max_scale > 0, max_scale, _f(1)), zero)
    inv_min = torch.where(max_min > 0, _f(63) / torch.where(max_min > 0, max_min, _f(1)), zero)
    ls = torch.clamp(_nearest_u8(inv_scale[:, None] * scales), max=63)
    lm = torch.clamp(_nearest_u8(inv_min[:, None] * mins), max=63)
    d = _fp16(max_scale / _f(63))
    dmin = _fp16(max_min / _f(63))
    step = d[:, None] * ls.to(F32)  # (NB, 8)
    off = dmin[:, None] * lm.to(F32)
    stepB, offB = step.reshape(1, -1), off.reshape(1, -1)
    requant = torch.clamp(torch.round((xs + offB) / torch.where(stepB != 0, stepB, _f(1))), 0, nmax)
    L = torch.where(stepB != 0, requant, L)  # a zero step keeps make_qkx2's codes (C: `if (!d) continue`)
    return {"ls": ls, "lm": lm, "d": d, "dmin": dmin, "L": L.T.reshape(NB, 8, 32).to(torch.int32),
            "step": step, "off": off}


def quantize_q6_k(x: torch.Tensor) -> dict:
    """Q6_K of flat data (NB·256,): int8 sub-block scales sc (NB, 16), fp16 d (NB,), codes L (NB, 16, 16)
    in [0, 63] and the float32 step d·sc; value = (d·sc)·(L − 32) (dequantize_row_q6_K)."""
    NB = x.numel() // QK_K
    xs = x.reshape(NB * 16, 16).T.contiguous()  # (16, B)
    scales, L = make_qx(xs, 32)
    scales = scales.view(NB, 16)
    max_abs, max_scale = _signed_absmax(scales, 1)
    zero_sb = max_abs < GROUP_MAX_EPS
    iscale = _f(-128) / torch.where(zero_sb, _f(1), max_scale)
    d = torch.where(zero_sb, torch.zeros((), dtype=F32), _fp16(_f(1) / iscale))
    sc = torch.clamp(torch.round(iscale[:, None] * scales), max=127).to(torch.int64)
    sc = torch.where(zero_sb[:, None], 0, sc)
    step = d[:, None] * sc.to(F32)  # (NB, 16)
    stepB = step.reshape(1, -1)
    requant = torch.clamp(torch.round(xs / torch.where(stepB != 0, stepB, _f(1))), -32, 31) + 32
    L = torch.where(stepB != 0, requant, L)
    L = L.T.reshape(NB, 16, 16)
    L = torch.where(zero_sb[:, None, None], torch.zeros((), dtype=F32), L)  # an all-zero super-block is memset 0
    return {"sc": sc, "d": d, "L": L.to(torch.int32), "step": step}
