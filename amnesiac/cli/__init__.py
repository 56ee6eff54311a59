"""`amnesiac` command line (typer): the app, the one error boundary, the global options and `main`.

Each verb group is one module of this package with `register(app)`; a verb parses its options (generated
from the config dataclass it runs, amnesiac/cli_options.py), calls one library function, prints the result.
"""
from __future__ import annotations

from typing import Optional

import typer
from typer.core import TyperGroup

from . import attack, audit, demo, eval, ls, models, reproduce, sweep, unlearn
from .ls import load_all  # noqa: F401  (tests and scripts fill the registries through it)


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


for _group in (ls, models, unlearn, eval, audit, demo, sweep, attack, reproduce):  # the order of `amnesiac --help`
    _group.register(app)


def main() -> None:
    app()
