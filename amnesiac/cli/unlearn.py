"""`amnesiac unlearn`: the command-line face of amnesiac.unlearn.unlearn (every UnlearnConfig field is an option)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli_options import config_command
from ..unlearn.config import UnlearnConfig


def unlearn_cmd(
    model: Path = typer.Option(..., help="target model: a folder (config.json + *.safetensors + tokenizer), a .gguf, "
                                         "a hub id in the local Hugging Face cache, or a PEFT adapter folder"),
    forget: str = typer.Option(..., help="forget data: bios:forget10 | tofu:forget10 | file.jsonl (QA or {text})"),
    out: Path = typer.Option(..., help="output directory: HF model + unlearn.json + log.jsonl"),
    retain: Optional[str] = typer.Option(None, help="retain data (needed by gdr/klr/rmu), same forms as --forget"),
    resume: bool = typer.Option(False, help="continue from OUT/checkpoint (same options, model and data)"),
    overwrite: bool = typer.Option(False, help="replace an earlier amnesiac unlearn run in OUT (only once the "
                                               "model and data have loaded)"),
    allow_overlap: bool = typer.Option(False, help="train even when items are in both --forget and --retain"),
    trust_remote_code: bool = typer.Option(False, help="allow the model's own Python code"),
    config: UnlearnConfig = None,
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

    from ..unlearn import unlearn

    console = Console(stderr=True)
    # errors: amnesiac.cli's boundary prints them (one line, exit 2 for bad input, 1 for a diverged run)
    res = unlearn(str(model), forget, retain, out=out, resume=resume, overwrite=overwrite, config=config,
                  trust_remote_code=trust_remote_code, allow_overlap=allow_overlap)
    from ..unlearn.distributed import current

    if not current().is_main:  # under a multi-process launch rank 0 reports
        return
    i = res.info
    last = i["losses"][-1] if i["losses"] else {}
    console.print(f"{i['method']}_{i['regularizer']}{'_sure' if i['sure'] else ''}: {i['steps']} steps, "
                  f"{i['train_wall_s']:.1f} s, loss {last.get('loss', float('nan')):.4g}, "
                  f"mean |Δw| {i['drift']['mean_abs_dw']:.3g} → {out}")
    for fmt, q in ((i.get("robust") or {}).get("quantized") or {}).items():
        console.print(f"  quantized ({fmt}): {q['dir']}" + (f"  +  {q['gguf']}" if "gguf" in q else ""))


def register(app: typer.Typer) -> None:
    config_command(app, "unlearn", {"config": UnlearnConfig}, unlearn_cmd)
