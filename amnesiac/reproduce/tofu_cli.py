"""`amnesiac reproduce tofu`: adds the command to the `reproduce` group (amnesiac/reproduce/cli.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(sub: typer.Typer) -> None:
    @sub.command("tofu")
    def tofu_cmd(out: Path = typer.Option(Path("tofu"), help="output folder (summary.json, report.md/html)"),
                 forget: str = typer.Option("forget10", help="forget01 | forget05 | forget10"),
                 methods: str = typer.Option("ga_gdr,ga_klr,npo_gdr,npo_klr", help="comma-separated unlearning methods"),
                 sure: bool = typer.Option(False, help="also run the SURE variants (10x lr, top-10 % salient rows)"),
                 scenarios: str = typer.Option("trained", help="comma-separated: trained, released-quantized"),
                 budget_s: Optional[float] = typer.Option(420.0, help="time box (s) of each fine-tune (target, retrained); "
                                                                    "a later run with more budget resumes it"),
                 ft_epochs: int = typer.Option(4, help="planned fine-tuning epochs on full / retain90"),
                 unlearn_lr: float = typer.Option(1e-4), unlearn_epochs: float = typer.Option(3.0),
                 n_items: Optional[int] = typer.Option(None, help="miniature run: first N items of each split"),
                 seed: int = typer.Option(0)):
        """TOFU's protocol in miniature on the real TOFU data: tiny target / retrained, unlearn, quantize, TOFU metrics."""
        from rich.console import Console

        from .tofu import TofuConfig, run_tofu
        from .tofu_report import print_table

        c = Console()
        cfg = TofuConfig(seed=seed, forget=forget, methods=[m.strip() for m in methods.split(",") if m.strip()], sure=sure,
                         scenarios=[s.strip() for s in scenarios.split(",") if s.strip()], budget_s=budget_s,
                         ft_epochs=ft_epochs, unlearn_lr=unlearn_lr, unlearn_epochs=unlearn_epochs, n_items=n_items)
        try:
            cfg.check()
        except ValueError as e:
            raise typer.BadParameter(str(e))
        s = run_tofu(cfg, out, log=c.print)
        print_table(s, c)
        c.print(f"wall time {s['wall_s']} s (models {s['models_s']} s); wrote {out}/summary.json, {out}/report.md, "
                f"{out}/report.html")
