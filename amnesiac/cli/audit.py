"""`amnesiac audit`: attack an unlearned model every cheap way, measure recovery, give a verdict."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..audit import AuditConfig
from ..cli_options import config_command
from ..report.render import console as _term


def audit_cmd(target: Path = typer.Option(..., help="model before unlearning (HF dir or .gguf)"),
              unlearned: Path = typer.Option(..., help="the unlearned model"),
              forget: str = typer.Option(..., help="forget set: bios:forget10, tofu:forget10 or a QA .jsonl"),
              retain: str = typer.Option(..., help="retain set (same forms)"),
              retrained: Optional[Path] = typer.Option(None, help="model trained without the forget set (the floor)"),
              holdout: Optional[str] = typer.Option(None, help="never-trained QA set: membership inference, and "
                                                               "without --retrained the target check's floor"),
              out: Path = typer.Option(Path("audit"), help="output folder (resumes from its cache)"),
              config: AuditConfig = None):
    """Attack an unlearned model (quantization, prompts, relearning, MIA), measure recovery, give a verdict.

    Every AuditConfig field is an option (amnesiac/audit.py); the verdict rule is docs/science.md §7."""
    import dataclasses

    from .. import audit as A
    from ..data import load_dataset
    from ..report.audit_report import print_audit, write_audit_report

    cfg = dataclasses.replace(config, mia=holdout is not None)  # validated again, before any model loads
    au = A.Audit(str(target), str(unlearned), load_dataset(forget), load_dataset(retain), out,
                 retrained=str(retrained) if retrained else None,
                 holdout=load_dataset(holdout) if holdout else None, config=cfg)
    summary = au.run()
    paths = write_audit_report(summary, out)
    print_audit(summary, _term())
    _term().print(f"wrote {out / 'summary.json'}, {paths['md']}, {paths['html']}")


def register(app: typer.Typer) -> None:
    config_command(app, "audit", {"config": AuditConfig}, audit_cmd, exclude={"AuditConfig": ("mia",)})
