"""`amnesiac unlearn`: the command-line face of amnesiac.unlearn.unlearn (options mirror UnlearnConfig)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from .config import UnlearnConfig

# the defaults, read without constructing a config (that validates and loads the method registry)
_D = type("_Defaults", (), {f.name: f.default for f in dataclasses.fields(UnlearnConfig)
                            if f.default is not dataclasses.MISSING})


def register(app: typer.Typer) -> None:
    @app.command("unlearn")
    def unlearn_cmd(
        model: Path = typer.Option(..., help="target model directory (config.json + *.safetensors + tokenizer)"),
        forget: str = typer.Option(..., help="forget data: bios:forget10 | tofu:forget10 | file.jsonl (QA or {text})"),
        out: Path = typer.Option(..., help="output directory: HF model + unlearn.json + log.jsonl"),
        retain: Optional[str] = typer.Option(None, help="retain data (needed by gdr/klr/rmu), same forms as --forget"),
        method: str = typer.Option(_D.method, help="ga | npo | simnpo | idkdpo | rmu, optionally with _gdr/_klr and _sure (e.g. npo_klr)"),
        regularizer: Optional[str] = typer.Option(None, help="none | gdr | klr (default: from --method, else none)"),
        alpha: float = typer.Option(_D.alpha, help="regulariser weight α"),
        beta: Optional[float] = typer.Option(None, help="β of NPO/IdkDPO (default 0.1) or SimNPO (default 2.5)"),
        gamma: float = typer.Option(_D.gamma, help="SimNPO γ"),
        rmu_layer: Optional[int] = typer.Option(None, help="RMU layer ℓ (default n_layers // 2); trains MLPs of ℓ−2..ℓ"),
        rmu_c: float = typer.Option(_D.rmu_c, help="RMU steering scale c"),
        rmu_alpha: float = typer.Option(_D.rmu_alpha, help="RMU retain-term weight"),
        lr: float = typer.Option(_D.lr, help="AdamW learning rate (paper regime: 1e-5; SURE: ~1e-4)"),
        schedule: str = typer.Option(_D.schedule, help="constant | linear | cosine"),
        warmup_steps: int = typer.Option(_D.warmup_steps, help="linear warm-up steps"),
        weight_decay: float = typer.Option(_D.weight_decay, help="AdamW weight decay (≥2-D tensors)"),
        max_grad_norm: float = typer.Option(1.0, help="gradient clipping norm (0 = off)"),
        optimizer: str = typer.Option(_D.optimizer, help="adamw | adamw8bit (bitsandbytes 8-bit optimizer states)"),
        strategy: str = typer.Option(_D.strategy, help="multi-process: ddp (replicated) | fsdp (FSDP2: weights, grads, optimizer states sharded per decoder layer)"),
        batch_size: int = typer.Option(_D.batch_size, help="forget batch size"),
        retain_batch_size: Optional[int] = typer.Option(None, help="retain batch size (default: --batch-size)"),
        grad_accum: int = typer.Option(_D.grad_accum, help="gradient accumulation micro-batches per step"),
        epochs: float = typer.Option(_D.epochs, help="passes over the forget set"),
        max_steps: Optional[int] = typer.Option(None, help="optimizer steps (overrides --epochs)"),
        seed: int = typer.Option(_D.seed, help="seed for batches, refusals, RMU direction"),
        precision: str = typer.Option(_D.precision, help="float32 | bfloat16 | bf16-mixed"),
        device: str = typer.Option(_D.device, help="auto (CUDA if available) | cpu | cuda | cuda:N"),
        gradient_checkpointing: bool = typer.Option(False, help="trade compute for activation memory"),
        max_length: Optional[int] = typer.Option(None, help="truncate examples to this many tokens"),
        reference: str = typer.Option(_D.reference, help="auto | precompute (no 2nd model) | copy (frozen copy)"),
        ref_max_gb: float = typer.Option(_D.ref_max_gb, help="auto: precompute when it needs at most this much RAM"),
        sure_percentile: Optional[float] = typer.Option(None, help="SURE: only rows ≥ this saliency percentile train"),
        sure_scope: str = typer.Option(_D.sure_scope, help="SURE threshold per weight 'matrix' or 'global'"),
        robust_to: Optional[str] = typer.Option(None, help="quantization-aware: train through these formats, e.g. q4_1 or q4_1,q8_0,rtn4_g128 (saves OUT/quantized-<fmt>/ too)"),
        robust_noise: float = typer.Option(_D.robust_noise, help="also train on random sub-step weight noise (fraction of a 4-bit g64 step)"),
        lora_rank: Optional[int] = typer.Option(None, help="train rank-r LoRA adapters (merged on save)"),
        lora_alpha: Optional[float] = typer.Option(None, help="LoRA α (default 2r)"),
        lora_targets: str = typer.Option(_D.lora_targets, help="'all-linear' or comma list of module names"),
        checkpoint_every: Optional[int] = typer.Option(None, help="checkpoint every N steps (OUT/checkpoint)"),
        keep_checkpoint: bool = typer.Option(False, help="keep OUT/checkpoint after finishing"),
        resume: bool = typer.Option(False, help="continue from OUT/checkpoint (same options)"),
        overwrite: bool = typer.Option(False, help="replace an earlier amnesiac unlearn run in OUT (only once the model and data have loaded)"),
        allow_overlap: bool = typer.Option(False, help="train even when items are in both --forget and --retain"),
        early_stop_recall: Optional[float] = typer.Option(None, help="stop once forget exact-match recall ≤ this"),
        early_stop_relative: bool = typer.Option(False, help="--early-stop-recall is a fraction of the start recall"),
        early_stop_every: int = typer.Option(_D.early_stop_every, help="evaluate the monitor every k steps"),
        monitor_size: int = typer.Option(_D.monitor_size, help="forget items in the early-stop monitor"),
        progress: bool = typer.Option(True, help="progress bar"),
        trust_remote_code: bool = typer.Option(False, help="allow the model's own Python code"),
    ):
        """Unlearn FORGET from MODEL (keeping RETAIN) and save the result to OUT (docs/science.md §1–2).

        Example: amnesiac unlearn --model target --forget bios:forget10 --retain bios:retain90 --method npo_klr --lr 1e-5 --epochs 5 --out runs/npo_klr

        SURE: add --sure-percentile 90 (or use a *_sure method) and a ~10x larger --lr. LoRA: --lora-rank 8.
        Quantization-aware (forgetting that survives the shipped format): --robust-to q4_1 (docs/science.md §2b).
        Kill-safe: --checkpoint-every N, then rerun the same command with --resume.
        Multi-process (DDP): accelerate launch --num_processes N -m amnesiac.cli unlearn ... (or torchrun);
        --batch-size is then the global micro-batch, split across the N processes. --strategy fsdp shards the
        weights, gradients and optimizer states (FSDP2) instead of replicating them (full-parameter training only).
        """
        from rich.console import Console

        from . import unlearn

        opts = {k: v for k, v in locals().items() if k in UnlearnConfig.__dataclass_fields__}
        opts["max_grad_norm"] = max_grad_norm or None
        console = Console(stderr=True)
        # errors: amnesiac.cli's boundary prints them (one line, exit 2 for bad input, 1 for a diverged run)
        res = unlearn(str(model), forget, retain, out=out, resume=resume, overwrite=overwrite,
                      trust_remote_code=trust_remote_code, allow_overlap=allow_overlap, **opts)
        from .distributed import current

        if not current().is_main:  # scale: under a multi-process launch rank 0 reports
            return
        i = res.info
        last = i["losses"][-1] if i["losses"] else {}
        console.print(f"{i['method']}_{i['regularizer']}{'_sure' if i['sure'] else ''}: {i['steps']} steps, "
                      f"{i['train_wall_s']:.1f} s, loss {last.get('loss', float('nan')):.4g}, "
                      f"mean |Δw| {i['drift']['mean_abs_dw']:.3g} → {out}")
        for fmt, q in ((i.get("robust") or {}).get("quantized") or {}).items():
            console.print(f"  quantized ({fmt}): {q['dir']}" + (f"  +  {q['gguf']}" if "gguf" in q else ""))
