"""`amnesiac reproduce` verb group; each protocol module `<name>_cli.py` adds its command with register(sub)."""
from __future__ import annotations

import importlib

import typer

PROTOCOLS = ["amnesiac.cli.reproduce_tofu", "amnesiac.cli.reproduce_smollm2"]


def register(app: typer.Typer) -> None:
    sub = typer.Typer(no_args_is_help=True, add_completion=False,
                      help="Re-run a published protocol end to end on offline data/models (tofu, smollm2).")
    for mod in PROTOCOLS:
        importlib.import_module(mod).register(sub)
    app.add_typer(sub, name="reproduce")
