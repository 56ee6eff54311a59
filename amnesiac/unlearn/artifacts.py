"""What an unlearning run leaves behind: the weight drift from the input model (|Δw|, in units of the 4-bit
step), its peak memory, and OUT's final files (the model, then unlearn.json last: its presence marks a
finished run)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from ..io import write_json


def snapshot(model, source: Path | None) -> Callable[[], dict[str, torch.Tensor]]:
    """How to get θ_t back at the end for |Δw|: stream it from the source safetensors when they are exactly the
    loaded weights (a folder, a hub snapshot), else a CPU copy now (a dequantized .gguf; an adapter, whose
    files hold only the adapter's tensors, under names that are not the merged model's)."""
    from ..models.resolve import weights_dir

    wdir = weights_dir(source) if source is not None else None
    files = sorted(Path(wdir).glob("*.safetensors")) if wdir is not None else []
    if files:
        def load():
            from safetensors import safe_open

            d = {}
            for f in files:
                with safe_open(str(f), framework="pt") as h:
                    for k in h.keys():
                        d[k] = h.get_tensor(k)
            return d
        return load
    saved = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return lambda: saved


def weight_drift(model, before: dict[str, torch.Tensor], group: int = 64, bits: int = 4) -> dict:
    """mean |Δw| over all weights, and over ≥2-D weights in units of the target's symmetric RTN step
    Δ = max|w|/(2^(b−1) − 1) per group of `group` inputs (docs/science.md §3), i.e. the |Δw|/Δ the paper's
    mechanism is about (§1: below ½ a step, 4-bit quantization can snap θ_u back onto θ_t)."""
    tot = n = 0.0
    q_tot = q_n = 0.0
    changed = 0
    qmax = 2 ** (bits - 1) - 1
    for k, w in model.state_dict().items():
        if k not in before or before[k].shape != w.shape or not w.is_floating_point():
            continue
        w0 = before[k].float()
        d = (w.detach().float().cpu() - w0)
        tot += d.abs().sum().item()
        n += d.numel()
        changed += int((d != 0).sum())
        if w.dim() == 2 and w.shape[1] % group == 0:
            step = w0.view(w0.shape[0], -1, group).abs().amax(-1, keepdim=True) / qmax
            r = (d.view_as(step.expand(-1, -1, group)) / step.clamp_min(1e-12)).abs()
            q_tot += r.sum().item()
            q_n += r.numel()
    return {"mean_abs_dw": tot / max(n, 1), "fraction_changed": changed / max(n, 1),
            f"mean_abs_dw_over_{bits}bit_g{group}_step": (q_tot / q_n) if q_n else None}


def peak_memory(device: torch.device) -> dict:
    try:
        import resource  # Unix only

        d = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # Linux reports KiB
    except ImportError:
        d = {"peak_rss_bytes": None}
    if device.type == "cuda":
        d["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return d


def save_final(model, tok, out: Path, info: dict, keep_checkpoint: bool) -> None:
    """Model files into OUT (via models.save_model into a temp folder, then moved), unlearn.json written last:
    its presence marks a finished run."""
    from ..models.load import save_model

    tmp = out / ".final"
    save_model(model, tok, tmp)
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()
    for name in ("checkpoint.tmp", "checkpoint.old") + (() if keep_checkpoint else ("checkpoint",)):
        if (out / name).exists():
            shutil.rmtree(out / name)
    write_json(out / "unlearn.json", info)
