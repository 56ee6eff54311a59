"""`amnesiac.unlearn(...)`: load, set up method/regulariser/reference/LoRA/SURE, train, save OUT + unlearn.json."""
from __future__ import annotations

import dataclasses
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import UserError, warn
from ..io import OUTPUT_MARKER, claim_output, hash_obj, read_json, read_marker, versions, write_json
from ..registry import lookup
from . import distributed
from . import lora as lora_mod
from . import sure as sure_mod
from .common import Ctx, UnlearnError, check_overlap, data_key, make_split
from .config import SURE_DEFAULT_PERCENTILE, UnlearnConfig
from .reference import Reference
from .artifacts import peak_memory, save_final, snapshot, weight_drift  # noqa: F401  (weight_drift: public)
from .trainer import UnlearnDiverged, check_resume, model_key, train


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


_PARTIAL = {"log.jsonl", "checkpoint.tmp", "checkpoint.old", ".final", OUTPUT_MARKER}  # a run killed before its first checkpoint


def _claim_out(out: Path, inputs: list, resume: bool, overwrite: bool):
    """The OutputClaim for OUT (io.claim_output, in place: checkpoints must survive a kill), after the checks
    that only unlearn knows (resume of a finished or failed run, a checkpoint without resume). No side effects."""
    if out.is_dir() and any(out.iterdir()) and read_marker(out) is not None:
        names = {f.name for f in out.iterdir()}
        done = read_json(out / "unlearn.json") if (out / "unlearn.json").is_file() else None
        if resume and done is not None:
            what = (f"this run failed ({done.get('error', 'see unlearn.json')})" if done.get("status") == "failed"
                    else "this run already finished (unlearn.json exists)")
            raise UnlearnError(f"{out}: {what}; nothing to resume", "start over with --overwrite (overwrite=True)")
        if resume and "checkpoint" not in names and names <= _PARTIAL:
            resume, overwrite = False, True  # killed before any checkpoint: start over
        if not resume and not overwrite and "checkpoint" in names:
            raise UnlearnError(f"{out} already exists and holds a checkpoint",
                               "pass resume (--resume) to continue it, or overwrite (--overwrite) to start over")
    if resume and not (out / "checkpoint").is_dir():
        resume = False  # nothing to continue from: a fresh run into OUT
    return claim_output(out, inputs, overwrite=overwrite, kind="unlearn", resume=resume, inplace=True, lock=False), resume


def unlearn(model, forget, retain=None, *, tokenizer=None, out: str | os.PathLike | None = None,
            config: UnlearnConfig | None = None, resume: bool = False, overwrite: bool = False,
            callbacks: Sequence[Callable[[dict], None]] = (), trust_remote_code: bool = False,
            allow_overlap: bool = False, **options) -> UnlearnResult:
    """Unlearn `forget` from `model`, keeping `retain` (docs/science.md §1–2).

    model: a model directory (safetensors + tokenizer) or a transformers model (trained in place; pass
    `tokenizer`). forget / retain: a data spec ("bios:forget10", "tofu:retain90", a .jsonl path) or a list of
    QAItem (loss on answer tokens) or of str (raw text, loss on every token). options: UnlearnConfig fields
    (method="npo_klr", lr=1e-5, epochs=5, sure_percentile=90, lora_rank=8, ...). With `out`, the model is saved
    there as a plain HF model dir plus unlearn.json and log.jsonl; checkpoint_every + resume continue a killed run.
    callbacks get each step's log record (after any checkpoint of that step).

    Everything is checked before any model loads (amnesiac.errors.UserError subclasses, one-line messages):
    options (UnlearnConfig), OUT (io.claim_output: never an input, never a folder amnesiac did not write;
    `overwrite` replaces an earlier run only once the inputs have loaded), data (items in both forget and retain
    are refused unless allow_overlap), sequence length (cut to max_length, else to the model's context, with a
    warning), and on resume the checkpoint's options, model and data (content hashes). A non-finite loss,
    gradient or weight raises UnlearnDiverged (status "failed" in OUT/unlearn.json, last checkpoint kept)."""
    plan = _validate(model, forget, retain, tokenizer, out, config, resume, overwrite, trust_remote_code,
                     allow_overlap, options)
    ddp, rank_device = distributed.init(plan.cfg.device, plan.cfg)  # joins the group under torchrun / accelerate launch
    writes = plan.claim is not None and ddp.is_main  # rank 0 alone writes OUT (other ranks have no claim)
    if not writes:
        plan.claim = None
    try:
        if writes:
            plan.claim.lock()  # a second process on this OUT is refused now, before its model loads
        run = _set_up(plan, model, ddp, rank_device, trust_remote_code)
        if plan.claim is not None:
            plan.claim.begin()  # late: an --overwrite'n earlier run is replaced only now that everything above worked
        ddp.barrier()
        res = _train(plan, run, callbacks)
        return _finish(plan, run, res)
    finally:
        if writes:
            plan.claim.unlock()


@dataclass
class _Plan:
    """Everything checked and loaded before a model: what the run will do, on which data, into which OUT."""
    cfg: UnlearnConfig
    method: Any
    reg: Any
    robust: Any
    method_name: str
    reg_name: str
    use_sure: bool
    source: Path | None
    tok: Any
    data: dict
    out: Path | None
    claim: Any
    resume: bool
    identity: dict
    notes: list[str]
    record: dict  # the run's description, as unlearn.json begins


@dataclass
class _Run:
    """The model set up for training: its context, trainable parameters, SURE masks, monitor."""
    t_start: float
    dev: torch.device
    model: Any
    ctx: Ctx
    params: dict
    masks: Any
    sure_stats: Any
    monitor: Any
    snapshot: Callable[[], dict]
    ddp: Any


def _validate(model, forget, retain, tokenizer, out, config, resume, overwrite, trust_remote_code, allow_overlap,
              options) -> _Plan:
    """Every option, OUT, the data and the sequence lengths, checked before any model loads; the tokenizer."""
    if config is not None and options:
        raise UnlearnError("pass either config or keyword options, not both")
    cfg = config if config is not None else UnlearnConfig.from_kwargs(**options)  # validates every option
    method_name, reg_name, use_sure = cfg.resolved()
    if use_sure and cfg.sure_percentile is None:  # "_sure" in the name: default percentile (copy, never mutate)
        cfg = dataclasses.replace(cfg, sure_percentile=SURE_DEFAULT_PERCENTILE)
    if use_sure and cfg.lora_rank:
        raise UnlearnError("SURE and LoRA do not combine (SURE masks rows of the full weights); pick one")
    _check_optimizer(cfg.optimizer)
    out = Path(out) if out is not None else None
    if resume and out is None:
        raise UnlearnError("resume needs the output directory that holds the checkpoint")
    if cfg.checkpoint_every and out is None:
        raise UnlearnError("checkpoint_every needs an output directory")
    method = lookup("unlearn_methods", method_name)(cfg)
    reg = lookup("regularizers", reg_name)(cfg)
    robust = _robust(cfg)  # a typo or a missing quantization library fails here, before any model loads
    source = Path(model) if isinstance(model, (str, os.PathLike)) else None
    from ..models.load import check_device, check_model_dir, load_tokenizer, model_context

    if distributed.launched_world() <= 1:  # under a launch, distributed.init checks the device
        check_device(cfg.device)
    if source is not None:
        check_model_dir(source)  # fail before touching OUT
    elif tokenizer is None:
        raise UnlearnError("pass tokenizer= with a model object (or give a model directory)")
    claim = None
    if out is not None and distributed.launched_world() > 1 and os.environ.get("RANK", "0") != "0":
        resume = resume and (out / "checkpoint").is_dir()  # rank 0 alone claims and writes OUT
    elif out is not None:
        paths = [x for x in (source, forget, retain) if isinstance(x, (str, os.PathLike))]
        claim, resume = _claim_out(out, paths, resume, overwrite)

    forget_items = _load_data(forget, "forget")
    retain_items = _load_data(retain, "retain")
    if reg.needs_retain and retain_items is None:
        raise UnlearnError(f"regulariser {reg_name!r} needs a retain set")
    check_overlap(forget_items, retain_items, allow_overlap)
    identity = {"model": model_key(model) if out is not None else None,  # only a checkpoint needs it
                "forget": data_key(forget_items), "retain": data_key(retain_items)}
    if resume:
        check_resume(out, cfg.training_hash(), identity)
    tok = load_tokenizer(source, trust_remote_code) if source is not None else tokenizer
    n_ctx = model_context(source if source is not None else model)
    if cfg.max_length and n_ctx and cfg.max_length > n_ctx:
        raise UnlearnError(f"max_length {cfg.max_length} exceeds the model's context of {n_ctx} tokens",
                           f"use max_length ≤ {n_ctx}")
    limit = cfg.max_length or n_ctx
    fmt = cfg.prompt_format().bind(tok)  # a tokenizer without the asked chat template fails here
    data = {"forget": make_split("forget", forget_items, tok, limit, fmt=fmt)}
    if retain_items is not None:
        data["retain"] = make_split("retain", retain_items, tok, limit, fmt=fmt)
    notes = _truncation_notes(data, limit, cfg.max_length)
    if cfg.early_stop_recall is not None and not data["forget"].is_qa:
        raise UnlearnError("early stopping measures exact-match recall: it needs QA forget data")
    record = {"method": method_name, "regularizer": reg_name, "sure": use_sure, "config": cfg.to_json(),
              "seed": cfg.seed, "model": str(source) if source else type(model).__name__,
              "model_key": identity["model"], "prompt_format": data["forget"].fmt.record(),
              "data": {"forget": forget if isinstance(forget, str) else f"<{len(forget_items)} items>",
                       "retain": retain if isinstance(retain, (str, type(None))) else f"<{len(retain_items)} items>",
                       "forget_key": identity["forget"], "retain_key": identity["retain"]}}
    return _Plan(cfg, method, reg, robust, method_name, reg_name, use_sure, source, tok, data, out, claim, resume,
                 identity, notes, record)


def _truncation_notes(data: dict, limit: int | None, asked: int | None) -> list[str]:
    notes = []
    for name, sp in data.items():
        if sp.n_truncated:
            why = "max_length" if asked else "the model's context (max_position_embeddings)"
            notes.append(f"{sp.n_truncated} of {len(sp)} {name} items were longer than {limit} tokens ({why}) and "
                         "were truncated (prompt cut from the left first)")
            warn(notes[-1])
    return notes


def _set_up(plan: _Plan, model, ddp, rank_device, trust_remote_code: bool) -> _Run:
    """Load the model onto this rank's device; method, reference, LoRA, trainable parameters, SURE masks, the
    early-stop monitor, the quantization-aware views. Nothing is written."""
    from ..models.load import load_model

    cfg, method, reg, data, tok = plan.cfg, plan.method, plan.reg, plan.data, plan.tok
    t_start = time.time()
    dev = torch.device(rank_device)  # resolve_device(cfg.device), or cuda:LOCAL_RANK per process
    if plan.source is not None:
        model, _ = load_model(plan.source, device=str(dev), dtype="bfloat16" if cfg.precision == "bfloat16" else "float32",
                              trust_remote_code=trust_remote_code)
    else:
        model.to(dev)
        if cfg.precision == "bfloat16":
            model.to(torch.bfloat16)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    snap = snapshot(model, plan.source)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model.eval()
    ctx = Ctx(model=model, tok=tok, cfg=cfg, data=data, device=dev)
    method.setup(ctx)
    needs = tuple(method.ref_needs) + (tuple(reg.ref_needs) if "retain" in data else ())
    trainable = method.trainable(model, ctx)
    if cfg.lora_rank and trainable is not None:
        raise UnlearnError(f"{plan.method_name} chooses its own trainable parameters; it does not combine with LoRA")
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
    params, masks = ddp.wrap(model, params, masks)  # strategy fsdp shards the model here (fsdp.py)

    monitor = None
    if cfg.early_stop_recall is not None:
        from ..metrics.qa import exact_match_recall

        items = list(data["forget"].items)
        random.Random(f"monitor-{cfg.seed}").shuffle(items)
        items = items[: cfg.monitor_size]
        fmt = data["forget"].fmt  # the training prompts' format: the monitor measures what was trained
        monitor = lambda: float(exact_match_recall(ctx.model, tok, items, fmt=fmt).value)  # noqa: E731

    if plan.robust is not None:
        plan.robust.bind(ctx.model)
        monitor = plan.robust.wrap_monitor(monitor)  # early stop on the *quantized* model's forget recall (§2b)
    return _Run(t_start, dev, model, ctx, params, masks, sure_stats, monitor, snap, ddp)


def _train(plan: _Plan, run: _Run, callbacks) -> dict:
    """The training loop (trainer.train); a divergence is recorded in OUT/unlearn.json before it propagates."""
    try:
        return train(run.ctx, plan.method, plan.reg, run.params, out=plan.out, sure_masks=run.masks, resume=plan.resume,
                     monitor=run.monitor, callbacks=callbacks, config_hash=plan.cfg.training_hash(), robust=plan.robust,
                     identity=plan.identity)
    except UnlearnDiverged as e:
        if plan.out is not None and run.ddp.is_main:  # the run record says so; the last good checkpoint stays
            write_json(plan.out / "unlearn.json", {"status": "failed", "error": str(e), **plan.record,
                                                   "versions": versions()})
        raise


def _finish(plan: _Plan, run: _Run, res: dict) -> UnlearnResult:
    """The plain model back (FSDP gathered, LoRA merged), its drift from the input, unlearn.json's record, and
    OUT's files (rank 0; the quantized deployments of a quantization-aware run beside the latent model)."""
    cfg, ctx, ddp, data, notes, robust = plan.cfg, run.ctx, run.ddp, plan.data, plan.notes, plan.robust
    model = ctx.model = ddp.unwrap(run.model)  # FSDP → a new plain model with the gathered weights
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_disable()
        model.config.use_cache = True
    for p in model.parameters():
        p.requires_grad_(False)
    model = lora_mod.merge(model) if cfg.lora_rank else model
    model.eval()
    drift = weight_drift(model, run.snapshot())
    if drift["fraction_changed"] == 0 and res["steps"] > (res["resumed_from"] or 0):
        notes.append(f"the weights never changed in {res['steps']} steps (all gradients zero, or a learning rate "
                     "too small to move them): this model is the input model")
        warn(notes[-1])
    record = plan.record
    info = {
        "status": "stopped_early" if res["stopped_early"] else "complete", **record,
        "hparams": {**plan.method.hparams(), "alpha": cfg.alpha, **({"rmu_layer": ctx.state["rmu_layer"]} if "rmu_layer" in ctx.state else {})},
        "data": {**record["data"], "n_forget": len(data["forget"]), "n_retain": len(data.get("retain", [])),
                 "n_truncated": {k: v.n_truncated for k, v in data.items()},
                 "forget_hash": hash_obj(data["forget"].seqs),
                 "retain_hash": hash_obj(data["retain"].seqs) if "retain" in data else None,
                 "kind": "qa" if data["forget"].is_qa else "text"},
        "device": str(run.dev), "distributed": ddp.describe(), "reference": ctx.ref.describe(),
        "trainable_params": int(sum(p.numel() for p in run.params.values())),
        "steps": res["steps"], "total_steps": res["total_steps"], "stopped_early": res["stopped_early"],
        "early_stop": {"threshold": res["early_stop_threshold"], "monitor_start": res["monitor_start"],
                       "monitor": res["monitor"]} if cfg.early_stop_recall is not None else None,
        "resumed_from_step": res["resumed_from"], "sure_mask": run.sure_stats,
        "drift": drift, "weights_unchanged": drift["fraction_changed"] == 0, "warnings": notes,
        "rounded_away": res["rounded_away"],
        "robust": robust.describe() if robust is not None else None,
        "train_wall_s": res["train_wall_s"], "wall_s": time.time() - run.t_start, "memory": peak_memory(run.dev),
        "versions": versions(), "losses": res["log"],
    }
    out = plan.out
    if out is not None and ddp.is_main:  # rank 0 saves
        if robust is not None and robust.names:  # the shipped artefact is Q(θ): save it beside the latent θ
            from .robust import save_quantized

            info["robust"]["quantized"] = save_quantized(model, plan.tok, out, robust.names)
        save_final(model, plan.tok, out, info, keep_checkpoint=cfg.keep_checkpoint)
    ddp.barrier()  # other ranks return once OUT is complete
    return UnlearnResult(model, plan.tok, info, out)


def _check_optimizer(name: str) -> None:
    import importlib.util

    if name not in ("adamw", "adamw8bit"):
        raise UnlearnError(f"unknown optimizer {name!r}; available: adamw, adamw8bit")
    if name == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise UnlearnError("optimizer 'adamw8bit' needs bitsandbytes (pip install 'amnesiac[bnb]')")


def _robust(cfg: UnlearnConfig):
    """The quantization-aware views (robust.py) asked for by robust_to / robust_noise / a `_robust` name; built
    before the model loads (bound to it later), so a missing library fails first."""
    from .config import wants_robust
    from .robust import Robust

    try:
        robust = Robust.build(cfg.robust_to, cfg.robust_noise, cfg.seed)
    except UserError:
        raise
    except ValueError as e:
        raise UnlearnError(str(e)) from None
    if robust is None and wants_robust(cfg.method):
        raise UnlearnError(f"method {cfg.method!r} is quantization-aware: name the deployment format(s) with "
                           "robust_to (e.g. robust_to='q4_1' or 'rtn4_g64,rtn8') and/or robust_noise > 0")
    return robust
