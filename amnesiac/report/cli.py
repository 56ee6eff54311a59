"""`amnesiac audit` and `amnesiac demo`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("audit")
    def audit_cmd(target: Path = typer.Option(..., help="model before unlearning (HF dir or .gguf)"),
                  unlearned: Path = typer.Option(..., help="the unlearned model"),
                  forget: str = typer.Option(..., help="forget set: bios:forget10, tofu:forget10 or a QA .jsonl"),
                  retain: str = typer.Option(..., help="retain set (same forms)"),
                  retrained: Optional[Path] = typer.Option(None, help="model trained without the forget set (the floor)"),
                  holdout: Optional[str] = typer.Option(None, help="never-trained QA set for membership inference"),
                  suite: str = typer.Option("quick", help="quick | full"),
                  attacks: Optional[str] = typer.Option(None, help="comma-separated attack list (overrides --suite)"),
                  out: Path = typer.Option(Path("audit"), help="output folder (resumes from its cache)"),
                  seed: int = typer.Option(0), margin: float = typer.Option(0.05, help="verdict margin (absolute recall)"),
                  max_retain: int = typer.Option(300, help="retain items evaluated")):
        """Attack an unlearned model (quantization, prompts, relearning, MIA), measure recovery, give a verdict."""
        from rich.console import Console

        from .. import audit as A
        from ..data import load_dataset
        from .audit_report import print_audit, write_audit_report

        if suite not in A.SUITES:
            raise typer.BadParameter(f"unknown suite {suite!r}; available: {', '.join(A.SUITES)}")
        cfg = A.AuditConfig(suite=suite, attacks=attacks.split(",") if attacks else None, seed=seed, margin=margin,
                            max_retain=max_retain, mia=holdout is not None)
        au = A.Audit(str(target), str(unlearned), load_dataset(forget), load_dataset(retain), out,
                     retrained=str(retrained) if retrained else None,
                     holdout=load_dataset(holdout) if holdout else None, config=cfg)
        summary = au.run()
        paths = write_audit_report(summary, out)
        print_audit(summary, Console())
        Console().print(f"wrote {out / 'summary.json'}, {paths['md']}, {paths['html']}")

    @app.command("sweep")
    def sweep_cmd(target: Optional[Path] = typer.Option(None, help="model to unlearn (default: the prepared tiny target of --scenario)"),
                  scenario: str = typer.Option("trained", help="with no --target: trained | released-quantized tiny target"),
                  forget: str = typer.Option("bios:forget10", help="forget set (bios:forget10, tofu:forget10, .jsonl)"),
                  retain: str = typer.Option("bios:retain90", help="retain set"),
                  method: str = typer.Option("npo_klr"),
                  lr: str = typer.Option("1e-6,3e-6,1e-5,3e-5,1e-4", help="comma-separated learning rates"),
                  bits: str = typer.Option("16,8,4,3", help="comma-separated bit widths (16 = full precision)"),
                  sure: Optional[float] = typer.Option(None, help="SURE percentile (e.g. 90) for every run"),
                  max_steps: int = typer.Option(60, help="optimizer steps per run (no early stop: a fixed budget)"),
                  out: Path = typer.Option(Path("sweep"), help="output folder (runs cached per lr)")):
        """The paper's learning-rate figure: forget/retain recall vs lr at each precision, collapse rate vs lr."""
        from rich.console import Console

        from ..data import load_dataset
        from ..sweep import SweepConfig, run_sweep

        c = Console()
        if target is None:
            from ..demo import scenario_models
            from ..models import tiny

            target = scenario_models(tiny.prepare("xs", 0, log=c.print), scenario, c.print)["target"]
        cfg = SweepConfig(method=method, lrs=[float(x) for x in lr.split(",")], bits=[int(b) for b in bits.split(",")],
                          sure_percentile=sure, max_steps=max_steps)
        s = run_sweep(target, load_dataset(forget), load_dataset(retain), out, cfg, log=c.print)
        for r in s["rows"]:
            c.print(f"lr {r['lr']:g}  {r['bits']:>2}-bit  forget {r['forget_recall']:.2f}  retain {r['retain_recall']:.2f}  "
                    f"codes unchanged@4b {100 * r['collapse_rate_4bit']:.1f}%")
        c.print(f"wrote {out}/summary.json, {out}/sweep.md, {out}/sweep.html ({s['wall_s']} s)")

    @app.command("demo")
    def demo_cmd(size: str = typer.Option("xs", help="tiny model preset xs | s | m"),
                 seed: int = typer.Option(0), out: Path = typer.Option(Path("demo"), help="output folder"),
                 sure: bool = typer.Option(True, help="also run the SURE variants"),
                 methods: str = typer.Option(",".join(["ga_gdr", "ga_klr", "npo_gdr", "npo_klr"]), help="comma-separated")):
        """The whole experiment on the embedded default: prepare, unlearn, quantize, measure, report."""
        from rich.console import Console

        from ..demo import DemoConfig, run_demo
        from .demo_report import print_table

        c = Console()
        summary = run_demo(DemoConfig(size=size, seed=seed, sure=sure, methods=methods.split(",")), out, log=c.print)
        print_table(summary, c)
        c.print(f"wall time {summary['wall_s']} s (prepare {summary['prepare_s']} s); wrote {out}/summary.json, "
                f"{out}/report.md, {out}/report.html")
