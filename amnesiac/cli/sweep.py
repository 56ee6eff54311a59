"""`amnesiac sweep`: recall vs learning rate at each precision, or (--grid-offset) recovery vs distance from the
release grid."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli_options import config_command
from ..sweep import SweepOptions
from ..report.render import console as _term


def sweep_cmd(target: Optional[Path] = typer.Option(None, help="model to unlearn (default: the prepared tiny target of "
                                                               "--scenario)"),
              scenario: str = typer.Option("trained", help="with no --target: trained | released-quantized tiny target"),
              forget: str = typer.Option("bios:forget10", help="forget set (bios:forget10, tofu:forget10, .jsonl)"),
              retain: str = typer.Option("bios:retain90", help="retain set"),
              out: Optional[Path] = typer.Option(None, help="output folder, runs cached per point "
                                                            "(default sweep/, or sweep_offset/ with --grid-offset)"),
              options: SweepOptions = None):
    """The paper's learning-rate figure (forget/retain recall vs lr at each precision, collapse rate vs lr), or
    with --grid-offset recovery vs how far the target sits off the release grid."""

    from ..sweep import sweep

    c = _term()
    s, out = sweep(options, target, forget, retain, out, scenario=scenario, log=c.print)
    if options.grid_offset is not None:
        for r in s["rows"]:
            c.print(f"offset {r['offset']:g} (measured mean {r['realised_offset_mean']:.3f}) {r['precision']}  {r['bits']:>2}-bit  "
                    f"forget {r['target_forget_recall']:.2f} → {r['forget_recall']:.2f}  retain {r['retain_recall']:.2f}  "
                    f"codes unchanged@4b {100 * r['collapse_rate_4bit']:.1f}%")
        c.print(f"wrote {out}/summary.json, {out}/sweep_offset.md/.html, {out}/sweep_offset_forget.png ({s['wall_s']} s)")
        return
    for r in s["rows"]:
        c.print(f"lr {r['lr']:g} {r['precision']}  {r['bits']:>2}-bit  forget {r['forget_recall']:.2f}  retain {r['retain_recall']:.2f}  "
                f"codes unchanged@4b {100 * r['collapse_rate_4bit']:.1f}%")
    c.print(f"wrote {out}/summary.json, {out}/sweep.md, {out}/sweep.html, {out}/sweep_lr_forget.png ({s['wall_s']} s)")


def register(app: typer.Typer) -> None:
    config_command(app, "sweep", {"options": SweepOptions}, sweep_cmd)
