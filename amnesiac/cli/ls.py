"""`amnesiac ls`: what is registered (data sets, metrics, unlearning methods, regularisers, attacks)."""
from __future__ import annotations

import importlib
from typing import Optional

import typer
from ..report.render import console as _term

# Packages whose import fills the registries; the verdict's `recovery` metric registers itself.
REGISTERING = ["amnesiac.data", "amnesiac.metrics", "amnesiac.metrics.recovery", "amnesiac.unlearn", "amnesiac.attacks"]


def load_all() -> dict:
    """Import every module that registers something, so the tables are complete (the CLI's job: a plug-in
    loader at the top layer, never a dependency of the core)."""
    from ..registry import REGISTRIES

    for mod in REGISTERING:
        importlib.import_module(mod)
    return REGISTRIES


def ls_cmd(kind: Optional[str] = typer.Argument(None, help="datasets | metrics | unlearn_methods | regularizers | attacks "
                                                           "(default: all)")):
    """List what is registered: data sets, metrics, unlearning methods, regularisers, attacks."""
    from rich.table import Table

    from ..errors import check_choice

    tables = load_all()
    check_choice("kind", kind, sorted(tables), optional=True)
    for k in [kind] if kind else sorted(tables):
        t = Table(title=k, show_lines=False)
        t.add_column("name", style="bold")
        t.add_column("description")
        for name, obj in sorted(tables[k].items()):
            t.add_row(name, (getattr(obj, "description", None) or (obj.__doc__ or "")).strip().split("\n")[0])
        _term().print(t)


def register(app: typer.Typer) -> None:
    app.command("ls")(ls_cmd)
