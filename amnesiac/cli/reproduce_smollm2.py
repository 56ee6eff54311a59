"""`amnesiac reproduce smollm2`: unlearn SmolLM2-135M (a real Q4_1 release) and re-quantize it.
Every SmolConfig field is an option (cli_options.config_command)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(sub: typer.Typer) -> None:
    from ..cli_options import config_command
    from ..reproduce.smollm2 import SmolConfig

    def smollm2_cmd(out: Path = typer.Option(Path("reproduce-smollm2"), help="output folder"),
                    figures_dir: Optional[Path] = typer.Option(None, help="also write smollm2_*.png here (e.g. docs/results)"),
                    cache: Optional[Path] = typer.Option(None, help="cache folder (default $AMNESIAC_HOME/cache/smollm2)"),
                    config: SmolConfig = None):
        """SmolLM2-135M as released (Q4_1): unlearn known facts (GA_GDR, NPO_KLR, + SURE), deploy at fp / Q4_1 /
        Q4_0 / Q8_0 / RTN / HQQ, measure recall with CIs and collapse diagnostics, sweep lr × steps. Cached: a
        rerun is fast and a killed run resumes."""
        from rich.console import Console

        from ..reproduce.smollm2 import run_smollm2
        from ..reproduce.smollm2_report import print_summary

        c = Console()
        config.check()  # before any model loads
        s = run_smollm2(config, out, log=c.print, cache=cache, figures_dir=figures_dir)  # errors: the CLI boundary
        print_summary(s, c)
        c.print(f"wall time {s['wall_s']} s; wrote {out}/summary.json, {s['report']['md']}, {s['report']['html']}")

    config_command(sub, "smollm2", {"config": SmolConfig}, smollm2_cmd)
