"""GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022, arXiv 2210.17323), with torch alone, CPU or CUDA.

Per Linear layer with weight W (R, C) and calibration inputs X (C, N tokens), GPTQ minimises the layer
output error ‖WX − ŴX‖² (Eq. 1) one input column at a time: quantize column j, then spread its error
over the not-yet-quantized columns through the inverse Hessian H⁻¹ of that quadratic, H = 2XXᵀ (OBS,
Eqs. 2–3):  δ = (w_j − q(w_j)) / [H⁻¹]_jj;  W[:, j+1:] −= δ ⊗ [H⁻¹]_{j, j+1:}.
The paper's three steps: (i) one fixed column order for all rows (optionally act_order: columns by
diag(H) descending, the authors' code's `--act-order` heuristic), (ii) lazy batch updates — the error
of a block of B = 128 columns reaches the later columns once per block (Eq. 4: W[:, i2:] −= E · H⁻¹[i1:i2, i2:]),
(iii) the rows of H⁻¹ needed at step j, with the earlier columns eliminated (Eq. 3), are the rows of
the upper Cholesky factor of H⁻¹ up to a scale (§4, "Step 3: Cholesky Reformulation"), so H⁻¹ is never
updated explicitly.

Conventions (those of the authors' reference code, so codes can be compared with gptqmodel):
- H is the running mean over calibration *sequences* of 2·X_sXᵀ_s (the scale of H does not change the
  result: damping below is relative), accumulated in float32.
- damping λ = damp · mean(diag H) added to the diagonal (default damp = 1 %); a column that never saw a
  non-zero input ("dead", diag H = 0) gets H_jj = 1 and its weights are set to 0.
- grid: min/max over a group widened to include 0, integer zero point, codes in [0, 2^N − 1];
  sym sets the range to ±max|w| and the zero point to 2^(N−1). A group's grid is computed when
  quantization reaches its first column, from the current weights of the full matrix W (for columns
  inside the current lazy block W is as it was at the block start, as in the reference; with group |
  block size, the default, groups start on block boundaries and this makes no difference).
- act_order with groups always uses static groups: the grid of each group of consecutive *original*
  columns is computed from W before any update (the reference's `static_groups=True`). This keeps the
  groups contiguous, so the codes fit a QTensor without a g_idx. Non-static act_order groups (the
  reference default when static_groups=False) are not offered.
"""
from __future__ import annotations

import copy
import math
import time

import torch

from .calib import LLAMA_SEQUENTIAL, block_inputs, decoder_layers, qtensor, run_block, run_until
from .rtn import QTensor


def gptq_grid(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each row of w (R, n) on the reference GPTQ grid → (R,), (R,)."""
    maxq = 2 ** bits - 1
    lo = w.amin(1).clamp(max=0)
    hi = w.amax(1).clamp(min=0)
    if sym:  # range ±max|w|; a row with no negative weight keeps lo = 0, as in the reference
        hi = torch.maximum(lo.abs(), hi)
        lo = torch.where(lo < 0, -hi, lo)
    dead = (lo == 0) & (hi == 0)
    lo, hi = torch.where(dead, -torch.ones_like(lo), lo), torch.where(dead, torch.ones_like(hi), hi)
    scale = (hi - lo) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-lo / scale)
    return scale, zero


def _codes(w, scale, zero, maxq):
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


@torch.no_grad()
def gptq_weight(W: torch.Tensor, H: torch.Tensor, bits: int = 4, group: int | None = 128, sym: bool = True,
                act_order: bool = False, static_groups: bool = False, damp: float = 0.01,
                block: int = 128) -> tuple[QTensor, dict]:
    """GPTQ of one weight W (R, C) given its Hessian H (C, C). Returns (QTensor on the original column
    order, info {loss, damp}). Works in float64 when W is float64 (tests), else float32."""
    if not 2 <= bits <= 8:
        raise ValueError(f"GPTQ supports 2–8 bits, got {bits}")
    dt = torch.float64 if W.dtype == torch.float64 else torch.float32
    R, C = W.shape
    if H.shape != (C, C):
        raise ValueError(f"Hessian shape {tuple(H.shape)} does not match the weight's {C} input columns")
    W0 = W.detach().to(dt).clone()
    W, H = W0.clone(), H.detach().to(dt).clone()
    maxq = 2 ** bits - 1
    g = C if not group or group >= C else int(group)
    G = math.ceil(C / g)
    scales, zeros = W.new_zeros(R, G), W.new_zeros(R, G)
    if g == C:  # one grid per row, from the weights as given (before dead columns are zeroed)
        scales[:, 0], zeros[:, 0] = gptq_grid(W0, bits, sym)
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    static = g < C and (static_groups or act_order)
    if static:  # grids of the original consecutive groups, before any error feedback
        for k in range(G):
            scales[:, k], zeros[:, k] = gptq_grid(W[:, k * g:(k + 1) * g], bits, sym)
    perm = torch.argsort(H.diagonal(), descending=True) if act_order else torch.arange(C, device=W.device)
    if act_order:
        W, H = W[:, perm], H[perm][:, perm]
    # H⁻¹ via Cholesky, then its upper Cholesky factor: row j of it is [H⁻¹]_{j, j:} with columns < j
    # eliminated (Eq. 3), scaled by 1/sqrt of the pivot, which cancels in δ ⊗ row / pivot (§4 Step 3).
    mean_diag = H.diagonal().mean()
    lam = damp
    for _ in range(4):  # a singular H (too few tokens) is retried with 10× the damping
        Hd = H + lam * mean_diag * torch.eye(C, dtype=dt, device=H.device)
        L, bad = torch.linalg.cholesky_ex(Hd)
        if not bad:
            U, bad = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if not bad:
                break
        lam *= 10
    else:
        raise RuntimeError(f"GPTQ: the Hessian stayed singular up to damp={lam / 10:g}; give more calibration tokens")
    Hinv = U
    col_group = [p // g for p in perm.tolist()]  # group of the original column visited at step j (a list: no GPU sync per step)
    codes = torch.zeros(R, C, dtype=dt, device=W.device)
    loss = torch.zeros((), dtype=torch.float64, device=W.device)
    for i1 in range(0, C, block):
        i2 = min(i1 + block, C)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        E = torch.zeros_like(W1)  # (R, B) scaled errors δ of this block, for the lazy update (Eq. 4)
        for i in range(i2 - i1):
            j = i1 + i
            if g < C and not static and j % g == 0:  # group start: grid from the current weights
                scales[:, j // g], zeros[:, j // g] = gptq_grid(W[:, j:j + g], bits, sym)
            s, z = scales[:, col_group[j]], zeros[:, col_group[j]]
            w = W1[:, i]
            q = _codes(w, s, z, maxq)
            codes[:, j] = q
            d = Hinv1[i, i]
            err = (w - s * (q - z)) / d  # the OBS update of Eq. (2), up to the row of H⁻¹ it multiplies
            loss += (err.double() ** 2).sum() / 2
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            E[:, i] = err
        W[:, i2:] -= E @ Hinv[i1:i2, i2:]
    if act_order:
        codes = codes[:, torch.argsort(perm)]
    return qtensor(codes, scales, zeros, g if g < C else None), {"loss": float(loss), "damp": lam}


class Hessian:
    """Running H = (2/n) Σ_s X_s X_sᵀ over n calibration sequences (the reference's normalisation)."""

    def __init__(self, C: int, device):
        self.H = torch.zeros(C, C, dtype=torch.float32, device=device)
        self.n = 0
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:  # x (b, L, C) or (L, C): b sequences
        b = x.shape[0] if x.dim() == 3 else 1
        x = x.reshape(-1, x.shape[-1]).float()
        self.H *= self.n / (self.n + b)
        self.n += b
        self.tokens += x.shape[0]
        x = math.sqrt(2 / self.n) * x
        self.H += x.T @ x


def collect_hessians(layer, inputs, mods: dict[str, torch.nn.Module]) -> dict[str, Hessian]:
    """H of each module's input over the calibration inputs of `layer`. Modules fed the very same tensor
    (q/k/v, gate/up) share one Hessian, computed once."""
    hess: dict[str, Hessian] = {}
    alias: dict[str, str] = {}
    last: list = [None, None]  # (input tensor, name) of the previous hook call

    def make(n):
        def fn(x):
            if last[0] is x:  # the same tensor as the previous module's input
                alias[n] = last[1]
                return
            last[0], last[1] = x, n
            hess.setdefault(n, Hessian(x.shape[-1], x.device)).add(x)
        return fn

    run_until(layer, inputs, {mod: make(n) for n, mod in mods.items()})
    return {n: hess[alias.get(n, n)] for n in mods}


@torch.no_grad()
def gptq_model(model, batches: list[torch.Tensor], bits: int = 4, group: int | None = 128, sym: bool = True,
               act_order: bool = False, static_groups: bool = False, damp: float = 0.01, block: int = 128,
               true_sequential: bool = True, include: str | None = None, exclude: str | None = None,
               inplace: bool = False):
    """GPTQ of every Linear in the decoder blocks of a Llama (LM head and embeddings stay full precision).

    Block by block: the block's inputs are those produced by the already-quantized earlier blocks; inside
    a block the sets of LLAMA_SEQUENTIAL are quantized in order, each one's Hessian collected with the
    earlier sets already quantized (true-sequential). Returns (model copy, {weight name: QTensor}, info);
    inplace=True quantizes `model` itself (restore it with attacks.restore.restoring)."""
    import re

    decoder_layers(model, "GPTQ")  # refuse other architectures before copying
    m = (model if inplace else copy.deepcopy(model)).eval()
    layers = decoder_layers(m, "GPTQ")
    t0 = time.perf_counter()
    inputs = block_inputs(m, batches)
    sets = LLAMA_SEQUENTIAL if true_sequential else (tuple(n for s in LLAMA_SEQUENTIAL for n in s),)
    codes, per_layer, tokens = {}, {}, 0
    for li, layer in enumerate(layers):
        for names in sets:
            full = {n: f"model.layers.{li}.{n}.weight" for n in names}
            names = [n for n in names if not (include and not re.search(include, full[n]))
                     and not (exclude and re.search(exclude, full[n]))]
            if not names:
                continue
            mods = {n: layer.get_submodule(n) for n in names}
            hess = collect_hessians(layer, inputs, mods)
            for n in names:
                h = hess[n]
                qt, inf = gptq_weight(mods[n].weight, h.H, bits, group, sym, act_order, static_groups, damp, block)
                w = mods[n].weight
                w.copy_(qt.dequantize().to(w.dtype))
                codes[full[n]] = qt
                per_layer[full[n]] = {**inf, "calib_tokens": h.tokens}
                tokens = h.tokens
        inputs = [(run_block(layer, hs, kw), kw) for hs, kw in inputs]
    if not codes:
        raise ValueError("no weights matched the module selection; nothing was quantized")
    info = {"method": "gptq", "n_tensors": len(codes), "n_weights": sum(q.shape[0] * q.shape[1] for q in codes.values()),
            "calib_sequences": len(batches), "calib_tokens": tokens, "layers": per_layer,
            "algorithm_s": round(time.perf_counter() - t0, 3)}
    return m, codes, info
