"""`amnesiac` command line (typer). Verbs from subpackages plug in through `<pkg>/cli.py: register(app)`."""
from __future__ import annotations

import importlib
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup


class _Boundary(TyperGroup):
    """The one error boundary (amnesiac.errors.run_cli): every verb, and CliRunner, goes through main()."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        import sys

        from ..errors import run_cli, set_debug

        set_debug(False)  # --debug (the global callback) or AMNESIAC_DEBUG=1 turn it on for this call
        code = run_cli(lambda: super(_Boundary, self).main(args, prog_name, complete_var, standalone_mode=False,
                                                            **extra))
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(add_completion=False, no_args_is_help=True, cls=_Boundary,
                  help="amnesiac: did the model really forget, or does the knowledge come back?")
console = Console()

# Subpackages that add verbs: each has a `cli.py` with `register(app: typer.Typer) -> None`.
PLUGINS = ["amnesiac.cli.unlearn", "amnesiac.cli.attack", "amnesiac.cli.eval", "amnesiac.cli.audit",
           "amnesiac.cli.models", "amnesiac.cli.reproduce"]


@app.callback()
def _global(threads: Optional[int] = typer.Option(
        None, "--threads", min=1, help="torch intra-op threads (default: 1 for models under 50 M parameters, "
        "else one per physical core; OMP_NUM_THREADS / AMNESIAC_THREADS are honoured)"),
        debug: bool = typer.Option(False, "--debug", help="show the traceback of an internal error (also AMNESIAC_DEBUG=1)")):
    """amnesiac: did the model really forget, or does the knowledge come back?"""
    from ..core import threads as th
    from ..errors import set_debug

    if debug:
        set_debug(True)

    th.set_requested(threads)
    th.configure()


@app.command("ls")
def ls(kind: Optional[str] = typer.Argument(None, help="datasets | metrics | unlearn_methods | regularizers | attacks (default: all)")):
    """List what is registered: data sets, metrics, unlearning methods, regularisers, attacks."""
    tables = load_all()
    kinds = [kind] if kind else sorted(tables)
    for k in kinds:
        if k not in tables:
            raise typer.BadParameter(f"unknown kind {k!r}; available: {', '.join(sorted(tables))}")
        t = Table(title=k, show_lines=False)
        t.add_column("name", style="bold")
        t.add_column("description")
        for name, obj in sorted(tables[k].items()):
            doc = (getattr(obj, "description", None) or (obj.__doc__ or "")).strip().split("\n")[0]
            t.add_row(name, doc)
        console.print(t)


@app.command("prepare")
def prepare_cmd(size: str = typer.Option("xs", help="tiny model size preset: xs | s | m"),
                seed: int = typer.Option(0, help="seed for data, init and training order"),
                force: bool = typer.Option(False, help="rebuild even when cached")):
    """Build (or reuse) the embedded bios data and the tiny base, target and retrained models."""
    from ..errors import check_choice
    from ..models import tiny

    check_choice("--size", size, list(tiny.SIZES))

    paths = tiny.prepare(size=size, seed=seed, force=force, log=console.print)
    summ = tiny.prepared_summary(paths)
    t = Table(title=f"tiny models ({size}, seed {seed}): exact-match QA recall")
    for c in ("model", "path", "forget10", "retain90", "train wall s"):
        t.add_column(c)
    for name, s in summ.items():
        r = s.get("recall", {})
        t.add_row(name, str(paths[name]), f"{r.get('forget10', float('nan')):.3f}" if r else "-",
                  f"{r.get('retain90', float('nan')):.3f}" if r else "-", f"{s['wall_s']:.0f}")
    console.print(t)


# Packages whose import fills the registries (`amnesiac ls`); the verdict's `recovery` metric registers itself.
REGISTERING = ["amnesiac.data", "amnesiac.metrics", "amnesiac.metrics.recovery", "amnesiac.unlearn", "amnesiac.attacks"]


def load_all() -> dict:
    """Import every module that registers something, so the tables are complete (the CLI's job: a plug-in
    loader at the top layer, never a dependency of the core)."""
    from ..registry import REGISTRIES

    for mod in REGISTERING:
        importlib.import_module(mod)
    return REGISTRIES


def _load_plugins() -> None:
    for mod in PLUGINS:
        importlib.import_module(mod).register(app)


_load_plugins()


def main() -> None:
    app()

