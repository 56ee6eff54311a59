"""`amnesiac demo`: the whole experiment on the embedded default (and, with --smollm2, the SmolLM2 rows)."""
from __future__ import annotations

from pathlib import Path

import typer

from ..cli_options import config_command
from ..demo import DemoConfig
from ..report.render import console as _term


def demo_cmd(out: Path = typer.Option(Path("demo"), help="output folder"), config: DemoConfig = None):
    """The whole experiment on the embedded default: prepare, unlearn, quantize, measure, report.

    Every DemoConfig field is an option (amnesiac/demo.py). --smollm2 also adds the SmolLM2-135M rows (a real
    Q4_1 release; needs `amnesiac models fetch smollm2`; reuses `amnesiac reproduce smollm2`'s cache)."""

    from ..demo import run_demo
    from ..report.demo_report import print_table

    c = _term()
    extend = None
    if config.smollm2:  # two experiments side by side, composed here: the SmolLM2 rows join the demo's summary
        from ..reproduce.smollm2 import resolve_model
        from ..reproduce.smollm2_demo import add_to_demo

        resolve_model(None)  # fail before the tiny demo runs when the model is not there
        extend = add_to_demo
    summary = run_demo(config, out, log=c.print, extend=extend)
    print_table(summary, c)
    c.print(f"wall time {summary['wall_s']} s (prepare {summary['prepare_s']} s); wrote {out}/summary.json, "
            f"{out}/report.md, {out}/report.html")


def register(app: typer.Typer) -> None:
    config_command(app, "demo", {"config": DemoConfig}, demo_cmd)
