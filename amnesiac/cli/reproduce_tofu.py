"""`amnesiac reproduce tofu`: adds the command to the `reproduce` group (amnesiac/reproduce/cli.py).
Every TofuConfig field is an option (cli_options.config_command)."""
from __future__ import annotations

from pathlib import Path

import typer


def register(sub: typer.Typer) -> None:
    from ..cli_options import config_command
    from ..reproduce.tofu import TofuConfig

    def tofu_cmd(out: Path = typer.Option(Path("tofu"), help="output folder (summary.json, report.md/html)"),
                 config: TofuConfig = None):
        """TOFU's protocol in miniature on the real TOFU data: tiny target / retrained, unlearn, quantize, TOFU
        metrics, and the one verdict on forget ROUGE-L recall."""
        from rich.console import Console

        from ..reproduce.tofu import run_tofu
        from ..reproduce.tofu_report import print_table

        c = Console()
        config.check()  # before any model is built
        s = run_tofu(config, out, log=c.print)
        print_table(s, c)
        c.print(f"wall time {s['wall_s']} s (models {s['models_s']} s); wrote {out}/summary.json, {out}/report.md, "
                f"{out}/report.html")

    config_command(sub, "tofu", {"config": TofuConfig}, tofu_cmd, exclude={"TofuConfig": ("arch",)})
