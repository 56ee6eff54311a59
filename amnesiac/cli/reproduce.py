"""`amnesiac reproduce tofu | smollm2`: published protocols re-run end to end on what is available offline
(TOFU's own data on the tiny model; SmolLM2-135M from its PyPI wheel). Every config field is an option."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli_options import config_command
from ..reproduce.smollm2 import SmolConfig
from ..reproduce.tofu import TofuConfig
from ..report.render import console as _term


def tofu_cmd(out: Path = typer.Option(Path("tofu"), help="output folder (summary.json, report.md/html)"),
             config: TofuConfig = None):
    """TOFU's protocol in miniature on the real TOFU data: tiny target / retrained, unlearn, quantize, TOFU
    metrics, and the one verdict on forget ROUGE-L recall."""

    from ..reproduce.tofu import run_tofu
    from ..reproduce.tofu_report import print_table

    c = _term()
    config.check()  # before any model is built
    s = run_tofu(config, out, log=c.print)
    print_table(s, c)
    c.print(f"wall time {s['wall_s']} s (models {s['models_s']} s); wrote {out}/summary.json, {out}/report.md, "
            f"{out}/report.html")


def smollm2_cmd(out: Path = typer.Option(Path("reproduce-smollm2"), help="output folder"),
                figures_dir: Optional[Path] = typer.Option(None, help="also write smollm2_*.png here (e.g. docs/results)"),
                cache: Optional[Path] = typer.Option(None, help="cache folder (default $AMNESIAC_HOME/cache/smollm2)"),
                config: SmolConfig = None):
    """SmolLM2-135M as released (Q4_1): unlearn known facts (GA_GDR, NPO_KLR, + SURE), deploy at fp / Q4_1 /
    Q4_0 / Q8_0 / RTN / HQQ, measure recall with CIs and collapse diagnostics, sweep lr × steps. Cached: a
    rerun is fast and a killed run resumes."""

    from ..reproduce.smollm2 import run_smollm2
    from ..reproduce.smollm2_report import print_summary

    c = _term()
    config.check()  # before any model loads
    s = run_smollm2(config, out, log=c.print, cache=cache, figures_dir=figures_dir)
    print_summary(s, c)
    c.print(f"wall time {s['wall_s']} s; wrote {out}/summary.json, {s['report']['md']}, {s['report']['html']}")


def register(app: typer.Typer) -> None:
    sub = typer.Typer(no_args_is_help=True, add_completion=False,
                      help="Re-run a published protocol end to end on offline data/models (tofu, smollm2).")
    config_command(sub, "tofu", {"config": TofuConfig}, tofu_cmd, exclude={"TofuConfig": ("arch",)})
    config_command(sub, "smollm2", {"config": SmolConfig}, smollm2_cmd)
    app.add_typer(sub, name="reproduce")
