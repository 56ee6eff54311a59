"""AWQ, activation-aware weight quantization (Lin et al. 2024, arXiv 2306.00978), for Llama models.

Idea (§3.2 of the paper): scaling up the weight columns that meet large activations protects them from
rounding. For a Linear y = Wx, any per-input-channel s > 0 gives y = (W·diag(s))(diag(s)⁻¹x); quantizing
W·diag(s) instead of W shrinks the relative rounding error of the salient columns. The scale is
s = s_X^α (Eq. 5), s_X the mean |x| of each input channel over the calibration tokens, and α is
grid-searched over {0, 1/20, …, 19/20} to minimise the output error of the block the Linear sits in
(Eq. 4):  L(s) = ‖f(W, X) − f(Q(W·diag(s))·diag(s)⁻¹, X)‖²  (mean squared error).
AutoAWQ's refinements are kept: s is normalised by √(max s · min s); optionally ("duo") s = s_X^α / s_W^(1−α)
with s_W the mean group-normalised |W| of each column; then an optional clipping search shrinks each
group's range max|w| by up to 50 % (10 steps of 5 %) to minimise that group's output error on ≤ 512
sampled tokens (not for q/k, whose errors pass through the softmax); then group RTN on AutoAWQ's grid.

Where the scales go (the multiply by diag(s)⁻¹ must be folded into an earlier op to cost nothing):
  input_layernorm  → q, k, v   (RMSNorm weight /= s)      inspected output: the attention block
  v_proj           → o_proj    (v rows /= s)              only when v and o have the same shape (no GQA)
  post_attn norm   → gate, up  (RMSNorm weight /= s)      inspected output: the MLP
  up_proj          → down_proj (up rows /= s)             (down's input is act(gate)·up: linear in up)
Like AutoAWQ, all four searches of a block see the full-precision block, and the next block's inputs are
this block's full-precision outputs (not true-sequential).

What the copy holds: Linear weights Q(W·diag(s)) (dequantized; the codes are those of W·diag(s)), and the
RMSNorm weights / v and up rows divided by s in full precision — so unlike RTN or GPTQ, weights of the copy
are not comparable one to one with the original's (the function is: it is the deployed AWQ model).
Defaults follow the paper where AutoAWQ differs: s = s_X^α (AutoAWQ's default is duo scaling: duo=True).
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .calib import block_inputs, decoder_layers, run_block
from .rtn import RTN, QTensor, group_view


@dataclass(frozen=True)
class AWQGrid:
    """AutoAWQ's group RTN. asym: Δ = max(max w − min w, 1e-5)/(2^N − 1), z = clamp(−round(min w/Δ), 0, 2^N − 1),
    code = clamp(round(w/Δ) + z, 0, 2^N − 1) (the range is *not* widened to include 0, unlike RTN asym);
    sym: identical to RTN sym (Δ = max|w|/(2^(N−1) − 1), signed codes)."""
    bits: int = 4
    group: int | None = 128
    scheme: str = "asym"

    @property
    def name(self) -> str:
        return f"awq_grid{self.bits}_{self.scheme}_" + (f"g{self.group}" if self.group else "ch")

    def config(self) -> dict:
        return {"backend": "awq_grid", **asdict(self)}

    @torch.no_grad()
    def quantize(self, w: torch.Tensor) -> QTensor:
        if self.scheme == "sym":
            return RTN(self.bits, self.group, "sym").quantize(w)
        wg = group_view(w.detach().float(), self.group)
        maxint = 2 ** self.bits - 1
        lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
        scale = (hi - lo).clamp(min=1e-5) / maxint
        zero = (-torch.round(lo / scale)).clamp(0, maxint)
        codes = torch.clamp(torch.round(wg / scale) + zero, 0, maxint).to(torch.int32)
        return QTensor(codes, scale, zero, tuple(w.shape))

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return self.quantize(w).dequantize().to(w.dtype)


def mean_abs(xs: list[torch.Tensor]) -> torch.Tensor:
    """s_X: mean |x| of each input channel over all calibration tokens, (C,) float32."""
    tot = sum(x.reshape(-1, x.shape[-1]).float().abs().sum(0) for x in xs)
    return tot / sum(x.numel() // x.shape[-1] for x in xs)


def weight_mean(linears, group: int | None) -> torch.Tensor:
    """s_W (duo scaling): |w| / max|w| of its group, averaged over all rows of the linears, (C,)."""
    w = torch.cat([lin.weight.detach().float() for lin in linears], 0)
    wg = group_view(w.abs(), group)
    wg = wg / wg.amax(-1, keepdim=True).clamp(min=1e-12)
    return wg.reshape(w.shape[0], -1)[:, : w.shape[1]].mean(0)


def candidate_scale(x_mean: torch.Tensor, alpha: float, w_mean: torch.Tensor | None = None) -> torch.Tensor:
    """s = s_X^α (Eq. 5), or s_X^α / s_W^(1−α) (duo), clamped at 1e-4 and normalised by √(max·min)."""
    s = x_mean.pow(alpha) if w_mean is None else x_mean.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4)
    s = s.clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


@torch.no_grad()
def search_scale(forward: Callable[[], list[torch.Tensor]], linears: list[torch.nn.Linear], x_mean: torch.Tensor,
                 quant, n_grid: int = 20, w_mean: torch.Tensor | None = None) -> tuple[torch.Tensor, float, list[float]]:
    """Grid search of α (Eq. 4–5). forward() runs the inspected module on the calibration inputs with the
    linears' current weights; each candidate sets W ← Q(W·diag(s))·diag(s)⁻¹. Returns (best s, best α,
    the error of every α). The linears' weights are restored."""
    ref = forward()
    n = sum(r.numel() for r in ref)
    orig = [lin.weight.detach().clone() for lin in linears]
    errs, best = [], (float("inf"), None, None)
    try:
        for k in range(n_grid):
            alpha = k / n_grid
            s = candidate_scale(x_mean, alpha, w_mean)
            for lin, w0 in zip(linears, orig):
                lin.weight.copy_((quant(w0.float() * s) / s).to(w0.dtype))
            err = float(sum(((o.float() - r.float()) ** 2).sum() for o, r in zip(forward(), ref))) / n
            errs.append(err)
            if err < best[0]:  # strict: the smallest α wins a tie, as in AutoAWQ
                best = (err, alpha, s)
    finally:
        for lin, w0 in zip(linears, orig):
            lin.weight.copy_(w0)
    if best[2] is None:
        raise RuntimeError("AWQ scale search: every candidate gave a non-finite error (inf/nan activations?)")
    return best[2], best[1], errs


@torch.no_grad()
def fold_scale(prev: torch.nn.Module, linears: list[torch.nn.Linear], s: torch.Tensor) -> None:
    """prev's output /= s (an RMSNorm's weight, or a Linear's rows and bias); the linears' columns *= s.
    The network computes the same function (up to float rounding)."""
    s = s.to(prev.weight.device)
    if isinstance(prev, torch.nn.Linear):
        prev.weight.div_(s.view(-1, 1).to(prev.weight.dtype))
    else:
        prev.weight.div_(s.to(prev.weight.dtype))
    if getattr(prev, "bias", None) is not None:
        prev.bias.div_(s.to(prev.bias.dtype))
    for lin in linears:
        lin.weight.mul_(s.view(1, -1).to(lin.weight.dtype))


@torch.no_grad()
def search_clip(w: torch.Tensor, x: torch.Tensor, quant, group: int | None, n_grid: int = 20, max_shrink: float = 0.5,
                n_tokens: int = 512) -> torch.Tensor:
    """Per-group clip range m (R, G): w is clamped to [−m, m] before quantization; m = (1 − i/n_grid)·max|w|
    for i < max_shrink·n_grid, chosen per (row, group) to minimise the mean squared group output error
    Σ_t (Σ_j x_tj w_j − Σ_j x_tj Q(clamp w)_j)² on ≤ n_tokens tokens taken at an even stride."""
    R, C = w.shape
    x = x.reshape(-1, C).float()
    x = x[:: max(1, x.shape[0] // n_tokens)][:n_tokens]
    wg = group_view(w.float(), group)  # (R, G, g)
    g = wg.shape[-1]
    xg = torch.nn.functional.pad(x, (0, wg.shape[1] * g - C)).reshape(x.shape[0], -1, g)  # padded inputs are 0
    org = torch.einsum("tkj,rkj->rtk", xg, wg)
    m0 = wg.abs().amax(-1)  # (R, G)
    best_err = torch.full_like(m0, float("inf"))
    best_m = m0.clone()
    for i in range(int(max_shrink * n_grid)):
        m = m0 * (1 - i / n_grid)
        cw = torch.maximum(torch.minimum(wg, m[..., None]), -m[..., None]).reshape(R, -1)[:, :C]
        qw = group_view(quant(cw), group)
        err = (torch.einsum("tkj,rkj->rtk", xg, qw) - org).pow(2).mean(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_m = torch.where(better, m, best_m)
    return best_m


def apply_clip(w: torch.Tensor, m: torch.Tensor, group: int | None) -> None:
    R, C = w.shape
    wg = group_view(w.detach(), group)
    mm = m[..., None].to(w.dtype)
    w.copy_(torch.maximum(torch.minimum(wg, mm), -mm).reshape(R, -1)[:, :C])


def scaling_groups(layer) -> list[dict]:
    """The (prev op, linears, inspected module, input name) sets of a Llama block, in the order above."""
    at, mlp = layer.self_attn, layer.mlp
    groups = [dict(name="qkv", prev=layer.input_layernorm, linears=[at.q_proj, at.k_proj, at.v_proj],
                   inp="self_attn.q_proj", inspect="attn")]
    if at.v_proj.weight.shape == at.o_proj.weight.shape:  # GQA: v has fewer rows than o has columns
        groups.append(dict(name="o", prev=at.v_proj, linears=[at.o_proj], inp="self_attn.o_proj", inspect=at.o_proj))
    groups.append(dict(name="gate_up", prev=layer.post_attention_layernorm, linears=[mlp.gate_proj, mlp.up_proj],
                       inp="mlp.gate_proj", inspect=mlp))
    groups.append(dict(name="down", prev=mlp.up_proj, linears=[mlp.down_proj], inp="mlp.down_proj", inspect=mlp.down_proj))
    return groups


LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
INPUTS = {"self_attn.q_proj": "self_attn.q_proj", "self_attn.k_proj": "self_attn.q_proj",
          "self_attn.v_proj": "self_attn.q_proj", "self_attn.o_proj": "self_attn.o_proj",
          "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.gate_proj", "mlp.down_proj": "mlp.down_proj"}


@torch.no_grad()
def awq_block(layer, inputs, quant, n_grid: int = 20, duo: bool = False, clip: bool = True,
              quantize: bool = True) -> tuple[list[torch.Tensor], dict, dict]:
    """AWQ of one decoder block in place. Returns (full-precision outputs, {linear: QTensor}, search record).
    quantize=False stops after folding the scales (the block then computes what it did before)."""
    feats: dict[str, list[torch.Tensor]] = {n: [] for n in set(INPUTS.values())}
    hooks = [layer.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: feats[n].append(a[0].detach()))
             for n in feats]
    try:
        outs = [run_block(layer, hs, kw) for hs, kw in inputs]
    finally:
        for h in hooks:
            h.remove()
    record, found = {}, []
    for gr in scaling_groups(layer):
        xs = feats[gr["inp"]]
        if gr["inspect"] == "attn":
            fwd = lambda xs=xs: [layer.self_attn(hidden_states=x, **kw)[0] for x, (_, kw) in zip(xs, inputs)]  # noqa: E731
        else:
            fwd = lambda xs=xs, mod=gr["inspect"]: [mod(x) for x in xs]  # noqa: E731
        w_mean = weight_mean(gr["linears"], quant.group) if duo else None
        s, alpha, errs = search_scale(fwd, gr["linears"], mean_abs(xs), quant, n_grid, w_mean)
        record[gr["name"]] = {"alpha": alpha, "errors": errs}
        found.append((gr, s))
    for gr, s in found:  # all searches saw the full-precision block (AutoAWQ's order); now fold them
        fold_scale(gr["prev"], gr["linears"], s)
        feats[gr["inp"]] = [x / s.to(x.dtype) for x in feats[gr["inp"]]]  # inputs of the scaled linears
    codes = {}
    if not quantize:
        return outs, codes, record
    for n in LINEARS:
        lin = layer.get_submodule(n)
        if clip and n not in ("self_attn.q_proj", "self_attn.k_proj"):
            x = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats[INPUTS[n]]], 0)
            apply_clip(lin.weight, search_clip(lin.weight, x, quant, quant.group), quant.group)
        qt = quant.quantize(lin.weight)
        lin.weight.copy_(qt.dequantize().to(lin.weight.dtype))
        codes[n] = qt
    return outs, codes, record


@torch.no_grad()
def awq_model(model, batches: list[torch.Tensor], bits: int = 4, group: int | None = 128, scheme: str = "asym",
              n_grid: int = 20, duo: bool = False, clip: bool = True, inplace: bool = False):
    """AWQ of every Linear in the decoder blocks (LM head and embeddings stay full precision).
    Returns (model copy with folded scales and dequantized weights, {weight name: QTensor}, info);
    inplace=True changes `model` itself (restore it with attacks.restore.restoring)."""
    decoder_layers(model, "AWQ")
    m = (model if inplace else copy.deepcopy(model)).eval()
    quant = AWQGrid(bits, group, scheme)
    t0 = time.perf_counter()
    inputs = block_inputs(m, batches)
    codes, search = {}, {}
    for li, layer in enumerate(decoder_layers(m, "AWQ")):
        outs, c, rec = awq_block(layer, inputs, quant, n_grid, duo, clip)
        codes.update({f"model.layers.{li}.{n}.weight": q for n, q in c.items()})
        search[f"model.layers.{li}"] = {k: v["alpha"] for k, v in rec.items()}
        inputs = [(o, kw) for o, (_, kw) in zip(outs, inputs)]
    info = {"method": "awq", "n_tensors": len(codes), "n_weights": sum(q.shape[0] * q.shape[1] for q in codes.values()),
            "calib_sequences": len(batches), "calib_tokens": sum(int(b.shape[1]) for b in batches),
            "alpha": search, "grid": quant.config(), "duo": duo, "clip": clip,
            "algorithm_s": round(time.perf_counter() - t0, 3)}
    return m, codes, info
