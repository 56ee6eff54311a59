"""`amnesiac.unlearn(...)`: load, set up method/regulariser/reference/LoRA/SURE, train, save OUT + unlearn.json."""
from __future__ import annotations

import dataclasses
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..io import hash_obj, versions, write_json
from ..registry import lookup
from . import distributed
from . import lora as lora_mod
from . import sure as sure_mod
from .common import Ctx, UnlearnError, make_split
from .config import SURE_DEFAULT_PERCENTILE, UnlearnConfig
from .reference import Reference
from .trainer import train


@dataclass
class UnlearnResult:
    model: Any  # the unlearned transformers model (LoRA already merged)
    tokenizer: Any
    info: dict  # what unlearn.json holds
    out: Path | None


def _load_data(spec, name: str):
    if spec is None:
        return None
    if isinstance(spec, (str, os.PathLike)):
        from ..data import load_dataset

        data = load_dataset(str(spec))
    else:
        data = list(spec)
    if not data:
        where = f" ({spec})" if isinstance(spec, (str, os.PathLike)) else ""
        raise UnlearnError(f"{name} set{where} is empty: nothing to train on")
    return data


_PARTIAL = {"log.jsonl", "checkpoint.tmp", "checkpoint.old", ".final"}  # what a run killed before its first checkpoint leaves


def _prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if resume and (out / "checkpoint").exists():
            return
        if resume and {f.name for f in out.iterdir()} <= _PARTIAL:
            overwrite = True  # killed before any checkpoint: start over
        if resume and (out / "unlearn.json").exists():
            raise UnlearnError(f"{out}: this run already finished (unlearn.json exists); nothing to resume")
        if not overwrite:
            hint = " (it holds a checkpoint: pass resume)" if (out / "checkpoint").exists() else ""
            raise UnlearnError(f"{out} already exists and is not empty{hint}; pass overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _snapshot(model, source: Path | None) -> Callable[[], dict[str, torch.Tensor]]:
    """How to get θ_t back at the end for |Δw|: stream it from the source safetensors, else a CPU copy now."""
    files = sorted(source.glob("*.safetensors")) if source is not None and source.is_dir() else []
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
    Δ = max|w|/(2^(b−1) − 1) per group of `group` inputs (SCIENCE.md §3), i.e. the |Δw|/Δ the paper's
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


def _peak_memory(device: torch.device) -> dict:
    try:
        import resource  # Unix only

        d = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # Linux reports KiB
    except ImportError:
        d = {"peak_rss_bytes": None}
    if device.type == "cuda":
        d["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return d


def unlearn(model, forget, retain=None, *, tokenizer=None, out: str | os.PathLike | None = None,
            config: UnlearnConfig | None = None, resume: bool = False, overwrite: bool = False,
            callbacks: Sequence[Callable[[dict], None]] = (), trust_remote_code: bool = False,
            **options) -> UnlearnResult:
    """Unlearn `forget` from `model`, keeping `retain` (SCIENCE.md §1–2).

    model: a model directory (safetensors + tokenizer) or a transformers model (trained in place; pass
    `tokenizer`). forget / retain: a data spec ("bios:forget10", "tofu:retain90", a .jsonl path) or a list of
    QAItem (loss on answer tokens) or of str (raw text, loss on every token). options: UnlearnConfig fields
    (method="npo_klr", lr=1e-5, epochs=5, sure_percentile=90, lora_rank=8, ...). With `out`, the model is saved
    there as a plain HF model dir plus unlearn.json and log.jsonl; checkpoint_every + resume continue a killed run.
    callbacks get each step's log record (after any checkpoint of that step)."""
    cfg = config if config is not None else UnlearnConfig.from_kwargs(**options)
    if config is not None and options:
        raise UnlearnError("pass either config or keyword options, not both")
    method_name, reg_name, use_sure = cfg.resolved()
    if use_sure and cfg.sure_percentile is None:  # "_sure" in the name: default percentile (copy, never mutate)
        cfg = dataclasses.replace(cfg, sure_percentile=SURE_DEFAULT_PERCENTILE)
    if use_sure and cfg.lora_rank:
        raise UnlearnError("SURE and LoRA do not combine (SURE masks rows of the full weights); pick one")
    if cfg.schedule not in ("constant", "linear", "cosine"):
        raise UnlearnError(f"unknown schedule {cfg.schedule!r}; available: constant, linear, cosine")
    if cfg.precision not in ("float32", "bfloat16", "bf16-mixed"):
        raise UnlearnError(f"unknown precision {cfg.precision!r}; available: float32, bfloat16, bf16-mixed")
    if cfg.grad_accum < 1 or cfg.batch_size < 1:
        raise UnlearnError("batch_size and grad_accum must be ≥ 1")
    _check_optimizer(cfg.optimizer)  # scale
    out = Path(out) if out is not None else None
    if resume and out is None:
        raise UnlearnError("resume needs the output directory that holds the checkpoint")
    if cfg.checkpoint_every and out is None:
        raise UnlearnError("checkpoint_every needs an output directory")
    method = lookup("unlearn_methods", method_name)(cfg)
    reg = lookup("regularizers", reg_name)(cfg)

    forget_items = _load_data(forget, "forget")
    retain_items = _load_data(retain, "retain")
    if reg.needs_retain and retain_items is None:
        raise UnlearnError(f"regulariser {reg_name!r} needs a retain set")
    if isinstance(model, (str, os.PathLike)):
        from ..models.load import check_model_dir

        check_model_dir(model)  # fail before touching OUT
    elif tokenizer is None:
        raise UnlearnError("pass tokenizer= with a model object (or give a model directory)")
    ddp, rank_device = distributed.init(cfg.device, cfg)  # scale: joins the group under torchrun / accelerate launch
    if out is not None and ddp.is_main:  # scale: rank 0 alone writes OUT
        _prepare_out(out, resume, overwrite)
    ddp.barrier()  # scale

    t_start = time.time()
    from ..models.load import load_model

    dev = torch.device(rank_device)  # scale: resolve_device(cfg.device), or cuda:LOCAL_RANK per process
    source = None
    if isinstance(model, (str, os.PathLike)):
        source = Path(model)
        model, tok = load_model(source, device=str(dev), dtype="bfloat16" if cfg.precision == "bfloat16" else "float32",
                                trust_remote_code=trust_remote_code)
    else:
        tok = tokenizer
        model.to(dev)
        if cfg.precision == "bfloat16":
            model.to(torch.bfloat16)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    snapshot = _snapshot(model, source)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    data = {"forget": make_split("forget", forget_items, tok, cfg.max_length)}
    if retain_items is not None:
        data["retain"] = make_split("retain", retain_items, tok, cfg.max_length)
    if cfg.early_stop_recall is not None and not data["forget"].is_qa:
        raise UnlearnError("early stopping measures exact-match recall: it needs QA forget data")
    model.eval()
    ctx = Ctx(model=model, tok=tok, cfg=cfg, data=data, device=dev)
    method.setup(ctx)
    needs = tuple(method.ref_needs) + (tuple(reg.ref_needs) if "retain" in data else ())
    trainable = method.trainable(model, ctx)
    if cfg.lora_rank and trainable is not None:
        raise UnlearnError(f"{method_name} chooses its own trainable parameters; it does not combine with LoRA")
    ctx.ref = Reference(cfg.reference, model, data, needs, ctx, batch_size=cfg.batch_size, max_gb=cfg.ref_max_gb,
                        lora=bool(cfg.lora_rank))
    if cfg.lora_rank:
        model = lora_mod.wrap(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        ctx.model = model
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    keep = set(trainable) if trainable is not None else None
    for n, p in model.named_parameters():
        p.requires_grad_(keep is None or n in keep)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora_rank:
            model.enable_input_require_grads()
        model.config.use_cache = False

    masks, sure_stats = None, None
    if cfg.sure_percentile is not None:
        sal = sure_mod.saliency(ctx, method, params, cfg.batch_size)
        masks, sure_stats = sure_mod.build_masks(sal, cfg.sure_percentile, cfg.sure_scope)
    params, masks = ddp.wrap(model, params, masks)  # scale: strategy fsdp shards the model here (fsdp.py)

    monitor = None
    if cfg.early_stop_recall is not None:
        from ..metrics.qa import exact_match_recall

        items = list(data["forget"].items)
        random.Random(f"monitor-{cfg.seed}").shuffle(items)
        items = items[: cfg.monitor_size]
        monitor = lambda: float(exact_match_recall(ctx.model, tok, items).value)  # noqa: E731

    robust = _robust(cfg, ctx.model)
    if robust is not None:
        monitor = robust.wrap_monitor(monitor)  # early stop on the *quantized* model's forget recall (§2b)

    res = train(ctx, method, reg, params, out=out, sure_masks=masks, resume=resume, monitor=monitor,
                callbacks=callbacks, config_hash=cfg.training_hash(), robust=robust)
    model = ctx.model = ddp.unwrap(model)  # scale: FSDP → a new plain model with the gathered weights

    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_disable()
        model.config.use_cache = True
    for p in model.parameters():
        p.requires_grad_(False)
    model = lora_mod.merge(model) if cfg.lora_rank else model
    model.eval()
    info = {
        "status": "stopped_early" if res["stopped_early"] else "complete",
        "method": method_name, "regularizer": reg_name, "sure": use_sure,
        "hparams": {**method.hparams(), "alpha": cfg.alpha, **({"rmu_layer": ctx.state["rmu_layer"]} if "rmu_layer" in ctx.state else {})}, "config": cfg.to_json(), "seed": cfg.seed,
        "model": str(source) if source else type(model).__name__,
        "data": {"forget": forget if isinstance(forget, str) else f"<{len(forget_items)} items>",
                 "retain": retain if isinstance(retain, (str, type(None))) else f"<{len(retain_items)} items>",
                 "n_forget": len(data["forget"]), "n_retain": len(data.get("retain", [])),
                 "forget_hash": hash_obj(data["forget"].seqs),
                 "retain_hash": hash_obj(data["retain"].seqs) if "retain" in data else None,
                 "kind": "qa" if data["forget"].is_qa else "text"},
        "device": str(dev), "distributed": ddp.describe(), "reference": ctx.ref.describe(),
        "trainable_params": int(sum(p.numel() for p in params.values())),
        "steps": res["steps"], "total_steps": res["total_steps"], "stopped_early": res["stopped_early"],
        "early_stop": {"threshold": res["early_stop_threshold"], "monitor_start": res["monitor_start"],
                       "monitor": res["monitor"]} if cfg.early_stop_recall is not None else None,
        "resumed_from_step": res["resumed_from"], "sure_mask": sure_stats,
        "drift": weight_drift(model, snapshot()),
        "robust": robust.describe() if robust is not None else None,
        "train_wall_s": res["train_wall_s"], "wall_s": time.time() - t_start, "memory": _peak_memory(dev),
        "versions": versions(), "losses": res["log"],
    }
    if out is not None and ddp.is_main:  # scale: rank 0 saves
        if robust is not None and robust.names:  # the shipped artefact is Q(θ): save it beside the latent θ
            from .robust import save_quantized

            info["robust"]["quantized"] = save_quantized(model, tok, out, robust.names)
        _save_final(model, tok, out, info, keep_checkpoint=cfg.keep_checkpoint)
    ddp.barrier()  # scale: other ranks return once OUT is complete
    return UnlearnResult(model, tok, info, out)


def _check_optimizer(name: str) -> None:  # scale
    import importlib.util

    if name not in ("adamw", "adamw8bit"):
        raise UnlearnError(f"unknown optimizer {name!r}; available: adamw, adamw8bit")
    if name == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise UnlearnError("optimizer 'adamw8bit' needs bitsandbytes (pip install 'amnesiac[bnb]')")


def _robust(cfg: UnlearnConfig, model):
    """The quantization-aware views (robust.py) asked for by robust_to / robust_noise / a `_robust` name."""
    from .config import wants_robust
    from .robust import Robust

    try:
        robust = Robust.build(cfg.robust_to, cfg.robust_noise, cfg.seed)
    except ValueError as e:
        raise UnlearnError(str(e)) from None
    if robust is None:
        if wants_robust(cfg.method):
            raise UnlearnError(f"method {cfg.method!r} is quantization-aware: name the deployment format(s) with "
                               "robust_to (e.g. robust_to='q4_1' or 'rtn4_g64,rtn8') and/or robust_noise > 0")
        return None
    robust.bind(model)
    return robust


def _save_final(model, tok, out: Path, info: dict, keep_checkpoint: bool) -> None:
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
