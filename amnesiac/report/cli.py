"""`amnesiac audit` and `amnesiac demo`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    from ..audit import AuditConfig
    from ..cli_options import config_command
    from ..demo import DemoConfig

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

        from rich.console import Console

        from .. import audit as A
        from ..data import load_dataset
        from .audit_report import print_audit, write_audit_report

        cfg = dataclasses.replace(config, mia=holdout is not None)  # validated again, before any model loads
        au = A.Audit(str(target), str(unlearned), load_dataset(forget), load_dataset(retain), out,
                     retrained=str(retrained) if retrained else None,
                     holdout=load_dataset(holdout) if holdout else None, config=cfg)
        summary = au.run()
        paths = write_audit_report(summary, out)
        print_audit(summary, Console())
        Console().print(f"wrote {out / 'summary.json'}, {paths['md']}, {paths['html']}")

    config_command(app, "audit", {"config": AuditConfig}, audit_cmd, exclude={"AuditConfig": ("mia",)})

    def demo_cmd(out: Path = typer.Option(Path("demo"), help="output folder"), config: DemoConfig = None):
        """The whole experiment on the embedded default: prepare, unlearn, quantize, measure, report.

        Every DemoConfig field is an option (amnesiac/demo.py). --smollm2 also adds the SmolLM2-135M rows (a real
        Q4_1 release; needs `amnesiac models fetch smollm2`; reuses `amnesiac reproduce smollm2`'s cache)."""
        from rich.console import Console

        from ..demo import run_demo
        from .demo_report import print_table

        c = Console()
        if config.smollm2:  # fail before the tiny demo runs when the model is not there
            from ..reproduce.smollm2 import resolve_model

            resolve_model(None)
        summary = run_demo(config, out, log=c.print)
        if config.smollm2:  # two experiments side by side, composed here: the SmolLM2 rows join the demo's summary
            from ..io import write_json
            from ..reproduce.smollm2_demo import add_to_demo
            from .demo_report import write_demo_report

            add_to_demo(summary, out, c.print)
            write_json(out / "summary.json", summary)
            write_demo_report(summary, out)
        print_table(summary, c)
        c.print(f"wall time {summary['wall_s']} s (prepare {summary['prepare_s']} s); wrote {out}/summary.json, "
                f"{out}/report.md, {out}/report.html")

    config_command(app, "demo", {"config": DemoConfig}, demo_cmd)

    @app.command("sweep")
    def sweep_cmd(target: Optional[Path] = typer.Option(None, help="model to unlearn (default: the prepared tiny target of --scenario)"),
                  scenario: str = typer.Option("trained", help="with no --target: trained | released-quantized tiny target"),
                  forget: str = typer.Option("bios:forget10", help="forget set (bios:forget10, tofu:forget10, .jsonl)"),
                  retain: str = typer.Option("bios:retain90", help="retain set"),
                  method: str = typer.Option("npo_klr"),
                  lr: Optional[str] = typer.Option(None, help="comma-separated learning rates (default 1e-6,3e-6,1e-5,3e-5,1e-4; "
                                                             "with --grid-offset one lr, default 1e-4)"),
                  grid_offset: Optional[str] = typer.Option(None, help="second axis: comma-separated offsets of the target "
                                                                      "from the 4-bit release grid, in steps (e.g. 0,0.1,0.2,0.4)"),
                  bits: Optional[str] = typer.Option(None, help="comma-separated bit widths, 16 = full precision "
                                                              "(default 16,8,4,3; with --grid-offset 16,8,4)"),
                  sure: Optional[float] = typer.Option(None, help="SURE percentile (e.g. 90) for every run"),
                  precision: str = typer.Option("float32", help="comma-separated unlearning precisions, an axis next to "
                                                              "--lr: float32,bfloat16,bf16-mixed"),
                  robust_to: Optional[str] = typer.Option(None, help="quantization-aware runs through these formats (e.g. rtn4_g64)"),
                  max_steps: int = typer.Option(60, help="optimizer steps per run (no early stop: a fixed budget)"),
                  seed: int = typer.Option(0, help="unlearning seed; with --grid-offset also the offset directions"),
                  out: Optional[Path] = typer.Option(None, help="output folder, runs cached per point "
                                                               "(default sweep/, or sweep_offset/ with --grid-offset)")):
        """The paper's learning-rate figure (forget/retain recall vs lr at each precision, collapse rate vs lr), or
        with --grid-offset recovery vs how far the target sits off the release grid."""
        from rich.console import Console

        from ..data import load_dataset

        c = Console()

        def floats(s: str, what: str) -> list[float]:
            try:
                return [float(x) for x in s.split(",") if x.strip()]
            except ValueError:
                raise typer.BadParameter(f"{what}: expected comma-separated numbers, got {s!r}")

        bit_list = [int(b) for b in floats(bits, "--bits")] if bits else None
        precisions = [p.strip() for p in precision.split(",") if p.strip()]
        if grid_offset is not None:
            from ..sweep_offset import OffsetSweepConfig

            lrs = floats(lr, "--lr") if lr else [1e-4]
            if len(lrs) != 1:
                raise typer.BadParameter("--grid-offset sweeps offsets at one learning rate; give one --lr")
            cfg = OffsetSweepConfig(method=method, lr=lrs[0], offsets=floats(grid_offset, "--grid-offset"),
                                    bits=bit_list or [16, 8, 4], sure_percentile=sure, robust_to=robust_to,
                                    max_steps=max_steps, seed=seed, precision=precisions)
        else:
            from ..sweep import SweepConfig

            cfg = SweepConfig(method=method, lrs=floats(lr or "1e-6,3e-6,1e-5,3e-5,1e-4", "--lr"),
                              bits=bit_list or [16, 8, 4, 3], sure_percentile=sure, robust_to=robust_to,
                              max_steps=max_steps, seed=seed, precision=precisions)
        try:
            cfg.check()
        except ValueError as e:
            raise typer.BadParameter(str(e))
        if target is None:
            from ..demo import scenario_models
            from ..models import tiny

            target = scenario_models(tiny.prepare("xs", 0, log=c.print), scenario, c.print)["target"]
        fset, rset = load_dataset(forget), load_dataset(retain)
        if grid_offset is not None:
            from ..sweep_offset import run_offset_sweep

            out = out or Path("sweep_offset")
            s = run_offset_sweep(target, fset, rset, out, cfg, log=c.print)
            for r in s["rows"]:
                c.print(f"offset {r['offset']:g} (measured mean {r['realised_offset_mean']:.3f}) {r['precision']}  {r['bits']:>2}-bit  "
                        f"forget {r['target_forget_recall']:.2f} → {r['forget_recall']:.2f}  retain {r['retain_recall']:.2f}  "
                        f"codes unchanged@4b {100 * r['collapse_rate_4bit']:.1f}%")
            c.print(f"wrote {out}/summary.json, {out}/sweep_offset.md/.html, {out}/sweep_offset_forget.png ({s['wall_s']} s)")
            return
        from ..sweep import run_sweep

        out = out or Path("sweep")
        s = run_sweep(target, fset, rset, out, cfg, log=c.print)
        for r in s["rows"]:
            c.print(f"lr {r['lr']:g} {r['precision']}  {r['bits']:>2}-bit  forget {r['forget_recall']:.2f}  retain {r['retain_recall']:.2f}  "
                    f"codes unchanged@4b {100 * r['collapse_rate_4bit']:.1f}%")
        c.print(f"wrote {out}/summary.json, {out}/sweep.md, {out}/sweep.html, {out}/sweep_lr_forget.png ({s['wall_s']} s)")
