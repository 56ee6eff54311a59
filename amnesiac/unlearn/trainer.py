"""The one unlearning loop: AdamW, lr schedule with warmup, gradient accumulation, clipping, paired
forget/retain batches, SURE row masks, early stopping on forget recall, pickle-free checkpoints, resume.

Determinism: which examples a micro-batch holds is a pure function of (seed, micro-batch number), so the data
"cursor" is just the step; the lr is a pure function of the step (no scheduler object to save). A checkpoint
holds the trained tensors, AdamW's moments and step counts, and the RNG states, as safetensors, and scalars as
JSON; resuming from it reproduces the uninterrupted run bit for bit on CPU.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from ..errors import AmnesiacError
from ..io import read_json, write_json
from ..models.train import lr_at
from . import distributed
from . import sure as sure_mod
from .common import Ctx, Method, Regularizer, UnlearnError


class UnlearnDiverged(AmnesiacError, FloatingPointError):
    """A non-finite loss, gradient or weight; the last good checkpoint (if any) is left in place (exit 1)."""


class Sampler:
    """Endless epochs over n examples, a fresh seeded permutation each epoch; batch k is a pure function of k."""

    def __init__(self, n: int, batch_size: int, seed: int, stream: str):
        self.n, self.bs, self.seed, self.stream = n, min(batch_size, n), seed, stream
        self.per_epoch = math.ceil(n / self.bs)  # the last batch of an epoch may be smaller
        self._cache: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._cache:
            perm = list(range(self.n))
            random.Random(f"{self.stream}-{self.seed}-{epoch}").shuffle(perm)
            self._cache = {epoch: perm}
        return self._cache[epoch]

    def __call__(self, k: int) -> list[int]:
        epoch, j = divmod(k, self.per_epoch)
        return self._perm(epoch)[j * self.bs: (j + 1) * self.bs]


# ----- checkpoints (no pickle: safetensors for tensors, JSON for scalars) -----

def save_checkpoint(path: Path, params: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer, state: dict) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, str(tmp / "params.safetensors"))
    opt_t, opt_meta = {}, {}
    plist = list(params.values())
    seen: set[int] = set()  # bitsandbytes shares its quantization maps between parameters; safetensors
    for i, p in enumerate(plist):  # refuses shared storage, so a repeated tensor is saved as its own copy
        st = opt.state.get(p, {})
        for k, v in st.items():
            if torch.is_tensor(v):
                t = v.detach().cpu().contiguous()
                ptr = t.untyped_storage().data_ptr()
                opt_t[f"{i}.{k}"] = t.clone() if ptr in seen else t
                seen.add(ptr)
            else:
                opt_meta[f"{i}.{k}"] = v
    save_file(opt_t or {"_empty": torch.zeros(0)}, str(tmp / "optimizer.safetensors"))
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["torch_cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / "rng.safetensors"))
    write_json(tmp / "state.json", {**state, "param_names": list(params), "opt_scalars": opt_meta,
                                    "python_random": _py_rng_state()})
    old = path.with_name(path.name + ".old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)


def _py_rng_state():
    v, s, g = random.getstate()
    return [v, list(s), g]


def load_checkpoint(path: Path, params: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer) -> dict:
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    if state["param_names"] != list(params):
        raise ValueError(f"{path}: checkpoint trains different parameters than this run; refusing to resume")
    saved = load_file(str(path / "params.safetensors"))
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n].to(p.device))
    # AdamW state is keyed by parameter object; restore it the same way it was saved (by position in `params`).
    # Hyper-parameters come from the config and the lr from the step, so param_groups need no restoring.
    opt_t = {**load_file(str(path / "optimizer.safetensors")), **state["opt_scalars"]}
    plist = list(params.values())
    for key, v in opt_t.items():
        if key == "_empty":
            continue
        i, k = key.split(".", 1)
        p = plist[int(i)]
        if torch.is_tensor(v) and k != "step":  # keep the saved dtype (8-bit states are uint8 + fp32 scales)
            v = v.to(device=p.device)
        opt.state[p][k] = v
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["torch_cuda"])
    v, s, g = state["python_random"]
    random.setstate((v, tuple(s), g))
    return state


# ----- the loop -----

def total_steps(cfg, n_forget: int) -> int:
    if cfg.max_steps is not None:
        return int(cfg.max_steps)
    per_epoch = math.ceil(n_forget / min(cfg.batch_size, n_forget))
    return max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))


def make_optimizer(params: dict[str, torch.nn.Parameter], cfg, sure_masks) -> tuple[torch.optim.Optimizer, dict]:
    """AdamW with decay on ≥2-D tensors. Under SURE the decay moves to sure.masked_weight_decay (returned map)."""
    wd_map = {n: (cfg.weight_decay if p.dim() >= 2 else 0.0) for n, p in params.items()}
    names = list(params)
    if sure_masks is not None:
        groups = [{"params": [params[n] for n in names], "weight_decay": 0.0}]
    else:
        decay = [params[n] for n in names if wd_map[n]]
        no = [params[n] for n in names if not wd_map[n]]
        groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay}, {"params": no, "weight_decay": 0.0})
                  if g["params"]]
    opt = _optimizer_class(getattr(cfg, "optimizer", "adamw"))(  # adamw | adamw8bit
        groups, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps)
    return opt, wd_map


def _optimizer_class(name: str):  # the `optimizer` choice (8-bit states: bitsandbytes, runs on CPU too)
    if name == "adamw":
        return torch.optim.AdamW
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ValueError("optimizer 'adamw8bit' needs bitsandbytes: pip install 'amnesiac[bnb]'") from None
        return bnb.optim.AdamW8bit
    raise ValueError(f"unknown optimizer {name!r}; available: adamw, adamw8bit")


def train(ctx: Ctx, method: Method, reg: Regularizer, params: dict[str, torch.nn.Parameter],
          out: Path | None = None, sure_masks: dict | None = None, resume: bool = False,
          monitor: Callable[[], float] | None = None, callbacks=(), config_hash: str = "",
          robust=None, identity: dict | None = None) -> dict:
    """Run the unlearning loop on ctx.model; returns {log, steps, stopped_early, monitor, resumed_from}.

    robust: an unlearn.robust.Robust (or None): every loss is computed on its quantized views (§2b).
    identity: content hashes of the model and data ({"model", "forget", "retain"}), saved in checkpoints; a
    resume from a checkpoint of another model or data is refused."""
    from tqdm.auto import tqdm

    cfg = ctx.cfg
    model = ctx.model
    forget = ctx.data["forget"]
    use_retain = "retain" in ctx.data and (reg.needs_retain or type(method).retain_loss is not Method.retain_loss)
    fs = Sampler(len(forget), cfg.batch_size, cfg.seed, "forget")
    rs = Sampler(len(ctx.data["retain"]), cfg.retain_batch_size or cfg.batch_size, cfg.seed, "retain") if use_retain else None
    total = total_steps(cfg, len(forget))
    opt, wd_map = make_optimizer(params, cfg, sure_masks)
    plist = list(params.values())
    ckpt = out / "checkpoint" if out is not None else None
    ddp = distributed.current()  # a world of 1 unless launched by torchrun / accelerate
    monitor = ddp.prepare(ctx, method, reg, params, sure_masks, monitor)  # weighted losses, rank-0 state
    log_path = out / "log.jsonl" if out is not None and ddp.is_main else None  # rank 0 writes

    torch.manual_seed(cfg.seed)
    state = {"step": 0, "log": [], "elapsed": 0.0, "monitor": [], "config_hash": config_hash,
             "identity": identity or {}}
    resumed_from = None
    if resume and ckpt is not None and ckpt.exists():
        full, full_opt = ddp.full_state(params, opt, gather=False)  # FSDP loads full tensors, then shards
        state = load_checkpoint(ckpt, full, full_opt)
        ddp.restore(params, opt, full, full_opt)
        if state.get("config_hash") != config_hash:
            raise UnlearnError(f"{ckpt}: saved by a run with a different training config",
                               "use the same options to resume, or start over with overwrite (--overwrite)")
        check_identity(ckpt, state.get("identity") or {}, identity or {})
        state["identity"] = identity or state.get("identity") or {}
        resumed_from = state["step"]
    if log_path is not None:  # the JSONL log always matches the state we continue from
        log_path.write_text("".join(json.dumps(r) + "\n" for r in state["log"]))
    start, log, mon_log = state["step"], state["log"], state["monitor"]
    threshold = None
    if monitor is not None and cfg.early_stop_recall is not None:
        if cfg.early_stop_relative:
            if "monitor_start" not in state:
                state["monitor_start"] = monitor()
            threshold = cfg.early_stop_recall * state["monitor_start"]
        else:
            threshold = cfg.early_stop_recall

    # the share of weights whose computed update the step did not apply (bf16: |u| < ulp(w)/2, docs/science.md
    # §1c); costs one copy of the trained weights per step, so by default only for ≤ TRACK_MAX trained values
    track = cfg.track_rounding if cfg.track_rounding is not None else sum(p.numel() for p in plist) <= TRACK_MAX
    rounded: list[float] = list(state.get("rounded_away", []))
    model.train()
    t0 = time.time() - state["elapsed"]
    stopped_early = False
    bar = tqdm(total=total, initial=start, desc=f"unlearn {cfg.method}", disable=not (cfg.progress and ddp.is_main), leave=False)
    step = start
    for step in range(start, total):
        lr = lr_at(step, total, cfg.lr, cfg.warmup_steps, cfg.schedule)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        parts = {"loss": 0.0, "forget": 0.0, "retain_term": 0.0, "reg": 0.0}
        for k in range(cfg.grad_accum):
            m = step * cfg.grad_accum + k
            fidx = ddp.shard(fs(m), "forget")  # this rank's slice of the micro-batch
            ridx = ddp.shard(rs(m), "retain") if rs is not None else None
            # quantization-aware (robust.py, §2b): the same micro-batch once per view θ → Q(θ), losses summed
            for view in (robust.views(m) if robust is not None else (contextlib.nullcontext,)):
                with view(), ctx.autocast():
                    lf = method.forget_loss(ctx, fidx)
                    terms = {"forget": lf}
                    if ridx is not None:
                        lr_m = method.retain_loss(ctx, ridx)
                        if lr_m is not None:
                            terms["retain_term"] = lr_m
                        lreg = reg.loss(ctx, ridx)
                        if lreg is not None:
                            terms["reg"] = lreg
                    loss = terms["forget"] + terms.get("retain_term", 0.0) + cfg.alpha * terms.get("reg", 0.0)
                    vals = {k2: float(v.detach()) for k2, v in terms.items()}
                    if not math.isfinite(float(loss.detach())):
                        raise UnlearnDiverged(_diverged_msg(step, vals, ckpt))
                    (loss / cfg.grad_accum).backward()  # inside the view: backward needs Q(θ) as saved
                parts["loss"] += float(loss.detach()) / cfg.grad_accum
                for k2, v in vals.items():
                    parts[k2] += v / cfg.grad_accum
        ddp.sync_grads(plist, parts)  # average gradients and logged losses over ranks
        if sure_masks is not None:
            sure_mod.mask_grads(params, sure_masks)
        gn = torch.nn.utils.clip_grad_norm_(plist, cfg.max_grad_norm or float("inf"))
        if not torch.isfinite(gn):
            raise UnlearnDiverged(_diverged_msg(step, {"grad_norm": float(gn)}, ckpt))
        if sure_masks is not None:
            sure_mod.masked_weight_decay(params, sure_masks, lr, wd_map)
        before = [q.detach().clone() for q in plist] if track else None
        opt.step()
        if before is not None:
            away = _rounded_away(opt, plist, before)
            if away is not None:
                rounded.append(away)
        if not _weights_finite(plist):  # lr inf / huge: the loss of the *next* step would be the first to see it
            raise UnlearnDiverged(_diverged_msg(step, {}, ckpt, "weights"))

        rec = {"step": step + 1, "lr": lr, "grad_norm": _sig(float(gn)),
               **{k: _sig(v) for k, v in parts.items() if k == "loss" or k in terms},
               **({"rounded_away": _sig(rounded[-1])} if before is not None and rounded else {}),
               "t": round(time.time() - t0, 3)}
        if threshold is not None and (step + 1) % cfg.early_stop_every == 0:
            r = monitor()
            model.train()
            rec["monitor_recall"] = r
            mon_log.append({"step": step + 1, "recall": r})
            stopped_early = r <= threshold
        if (step + 1) % cfg.log_every == 0 or step + 1 == total or stopped_early:
            log.append(rec)
            if log_path is not None:
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
        bar.set_postfix({k: f"{rec[k]:.4g}" for k in ("loss", "forget", "reg", "retain_term") if k in rec})
        bar.update(1)
        if ckpt is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
            full, full_opt = ddp.full_state(params, opt)  # FSDP all-gathers (every rank), else as is
            if ddp.is_main:
                save_checkpoint(ckpt, full, full_opt, {**state, "step": step + 1, "log": log, "monitor": mon_log,
                                                       "elapsed": time.time() - t0, "rounded_away": rounded})
        for cb in callbacks:
            cb(rec)
        if stopped_early:
            break
    bar.close()
    model.eval()
    return {"log": log, "steps": (step + 1) if total > start else start, "total_steps": total,
            "stopped_early": stopped_early, "early_stop_threshold": threshold, "monitor": mon_log,
            "monitor_start": state.get("monitor_start"), "resumed_from": resumed_from,
            "train_wall_s": time.time() - t0, "rounded_away": _rounding_summary(rounded)}


TRACK_MAX = 300_000_000  # trained values up to which the rounded-away share is tracked by default


@torch.no_grad()
def _rounded_away(opt, plist, before) -> float | None:
    """Share of trained weights with a non-zero AdamW update (first moment m ≠ 0 after the step) whose value the
    step left unchanged: the update was below half a unit in the last place of the weight's dtype and rounded
    away. None when the optimizer keeps no first moment (8-bit states)."""
    n_upd, n_away = 0, 0
    for p, b in zip(plist, before):
        m = opt.state.get(p, {}).get("exp_avg")
        if m is None or m.shape != p.shape:
            return None
        upd = m != 0
        n_upd += int(upd.sum())
        n_away += int((upd & (p == b)).sum())
    return n_away / n_upd if n_upd else 0.0


def _rounding_summary(rounded: list[float]) -> dict | None:
    """Per-step shares of rounded-away updates → mean, first, last, and the share of steps where at least half
    of the updates rounded away."""
    if not rounded:
        return None
    return {"mean": _sig(sum(rounded) / len(rounded)), "first": _sig(rounded[0]), "last": _sig(rounded[-1]),
            "steps_majority_away": _sig(sum(r >= 0.5 for r in rounded) / len(rounded)), "steps": len(rounded)}


def _sig(x: float) -> float:
    """7 significant digits: compact logs without flattening tiny losses (SimNPO's can be ~1e-7) to 0."""
    return float(f"{x:.7g}")


def _weights_finite(plist) -> bool:
    """One device sync for all trained tensors (a per-tensor .item() would sync once each)."""
    with torch.no_grad():
        return bool(torch.stack([torch.isfinite(p).all() for p in plist]).all()) if plist else True


def check_identity(ckpt: Path, saved: dict, now: dict) -> None:
    """A checkpoint continues only the model and data it was made from (content hashes, not paths)."""
    what = {"model": "--model", "forget": "--forget data", "retain": "--retain data"}
    for k, opt in what.items():
        if saved.get(k) and now.get(k) and saved[k] != now[k]:
            raise UnlearnError(f"{ckpt}: the checkpoint was made from another {opt} (content hash {saved[k]}, "
                               f"now {now[k]})", "resume with the same model and data, or start over with --overwrite")


def check_resume(out: Path, config_hash: str, identity: dict) -> None:
    """Refuse, before any model loads, to continue a checkpoint made from other options, model or data."""
    st = out / "checkpoint" / "state.json"
    if not st.is_file():
        return
    state = read_json(st)
    if state.get("config_hash") != config_hash:
        raise UnlearnError(f"{out / 'checkpoint'}: saved by a run with a different training config",
                           "use the same options to resume, or start over with overwrite (--overwrite)")
    check_identity(out / "checkpoint", state.get("identity") or {}, identity)


def model_key(model) -> str:
    """What the model is (content, not path): io.content_key of a folder; of an in-memory model, its tensors."""
    if isinstance(model, (str, os.PathLike)):
        from ..models.resolve import model_content_key

        return model_content_key(model)  # a folder, .gguf, hub id or adapter: what it is, not where
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _diverged_msg(step: int, vals: dict, ckpt: Path | None, what: str = "loss or gradient") -> str:
    where = (f"the last good checkpoint is kept at {ckpt}" if ckpt is not None and ckpt.exists()
             else "no checkpoint was written yet (use checkpoint_every)")
    nums = f" ({', '.join(f'{k}={v:.4g}' for k, v in vals.items())})" if vals else ""
    return (f"non-finite {what} at step {step + 1}{nums}; {where} — "
            "lower the learning rate, use float32, or add a regulariser")
