"""`amnesiac eval`: every registered §5 metric on one model, a rich table, summary.json + per_example.jsonl."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli_options import config_command
from ..evaluate import EvalConfig
from ..report.render import console as _term


def eval_cmd(model: Path = typer.Option(..., "--model", help="the model: a folder, .gguf, hub id in the local cache, "
                                                             "or PEFT adapter"),
             data: str = typer.Option(..., "--data", help="forget set: bios:forget10 | tofu:forget10 | muse:<folder> | "
                                                          "file.jsonl"),
             out: Path = typer.Option(..., "--out", help="output folder"),
             retain: Optional[str] = typer.Option(None, help="retain QA set (default: derived from --data; 'none' to skip)"),
             holdout: Optional[str] = typer.Option(None, help="holdout QA set (non-members)"),
             real_authors: Optional[str] = typer.Option(None, help="TOFU real-authors set"),
             world_facts: Optional[str] = typer.Option(None, help="TOFU world-facts set"),
             forget_text: Optional[str] = typer.Option(None, help="raw forget texts (MIA, PrivLeak)"),
             holdout_text: Optional[str] = typer.Option(None, help="raw holdout texts"),
             retrained: Optional[str] = typer.Option(None, help="retrained model folder, or its retrained_reference.json"),
             reference: Optional[Path] = typer.Option(None, help="reference model for the reference-MIA attack"),
             auto: bool = typer.Option(True, help="derive retain/holdout/text companions from --data"),
             device: str = typer.Option("auto", help="auto (CUDA if available) | cpu | cuda | cuda:N"),
             dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
             muse_x100: bool = typer.Option(False, "--muse-x100", help="print VerbMem / KnowMem on MUSE's ×100 scale "
                                                                       "(the JSON keeps the 0–1 values)"),
             overwrite: bool = typer.Option(False, help="replace an earlier amnesiac eval output at --out"),
             config: EvalConfig = None):
    """Evaluate one model: every registered metric that applies to the data (TOFU, MUSE, MIA, memorisation;
    docs/science.md §5)."""
    from rich.table import Table

    from ..eval_run import run_eval

    console = _term()
    parts = dict(retain=retain, holdout=holdout, real_authors=real_authors, world_facts=world_facts,
                 forget_text=forget_text, holdout_text=holdout_text)
    res, meta = run_eval(model, data, out, config, parts, auto=auto, retrained=retrained, reference=reference,
                         device=device, dtype=dtype, overwrite=overwrite)
    t = Table(title=f"amnesiac eval: {model} on {data}")
    for c in ("metric", "value", "95% CI", "goal", "n"):
        t.add_column(c, justify="right" if c != "metric" else "left")
    for k, r in res.items():
        ci = r.meta.get("ci95")
        label = f"{k} (partial {r.meta['n_components']}/9)" if k == "model_utility" and not r.meta["complete"] else k
        scale = 100.0 if muse_x100 and k in ("verbmem", "knowmem_forget", "knowmem_retain") else 1.0
        if scale != 1.0:
            label += " (×100)"
        t.add_row(label, f"{scale * r.value:.4f}" if r.value is not None else "-",
                  f"[{scale * ci[0]:.3f}, {scale * ci[1]:.3f}]" if ci else "", "↑" if r.higher_is_better else "↓",
                  str(r.meta.get("n", r.meta.get("n_member", ""))))
    console.print(t)
    console.print(f"wrote {out / 'summary.json'} and {out / 'per_example.jsonl'} ({meta['wall_s']} s)")


def register(app: typer.Typer) -> None:
    config_command(app, "eval", {"config": EvalConfig}, eval_cmd)
