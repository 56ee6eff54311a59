"""`amnesiac reproduce smollm2`: unlearn SmolLM2-135M (a real Q4_1 release) and re-quantize it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(",") if x.strip())


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x.strip())


def register(sub: typer.Typer) -> None:
    @sub.command("smollm2")
    def smollm2_cmd(model: Optional[Path] = typer.Option(None, help="the release (HF dir or .gguf); default: the "
                                                          "`amnesiac models fetch smollm2` cache"),
                    out: Path = typer.Option(Path("reproduce-smollm2"), help="output folder"),
                    facts: Optional[Path] = typer.Option(None, help="facts JSONL (prompt, answer, optional category, "
                                                         "split); default: the built-in real-world set"),
                    seed: int = typer.Option(0),
                    forget: str = typer.Option("random:0.2", help="forget facts: a category or random:<fraction|count>"),
                    utility: str = typer.Option("elements", help="disjoint category measured as utility"),
                    methods: str = typer.Option("ga_gdr,npo_klr", help="comma-separated (each also with SURE)"),
                    sure: bool = typer.Option(True, help="also run the SURE variants"),
                    lr: float = typer.Option(1e-5, help="small-update recipe: learning rate"),
                    steps: int = typer.Option(8, help="small-update recipe: optimizer steps"),
                    sure_lr: float = typer.Option(1e-4, help="SURE learning rate"),
                    sure_steps: int = typer.Option(8, help="SURE optimizer steps"),
                    robust: bool = typer.Option(False, help="also run quantization-aware *_ROBUST variants (trained through Q4_1)"),
                    robust_lr: float = typer.Option(1e-3, help="*_ROBUST learning rate"),
                    robust_steps: int = typer.Option(16, help="*_ROBUST optimizer steps"),
                    precisions: str = typer.Option("fp,q4_1,q4_1_file,q4_0,q8_0,rtn8,rtn4_g128_asym,hqq4", help="comma-separated quantizer names; q4_1_file = the release file format (Linear Q4_1 + embedding Q8_0)"),
                    sweep: bool = typer.Option(True, help="run the lr × steps sweep"),
                    sweep_lrs: str = typer.Option("1e-4,3e-4,1e-3", help="sweep learning rates (lr 1e-5 is the main table's small-update row)"),
                    sweep_steps: str = typer.Option("2,8", help="checkpoints of each sweep run"),
                    max_retain_eval: int = typer.Option(40, help="retain facts evaluated (training uses all)"),
                    max_utility_eval: int = typer.Option(40, help="utility facts evaluated"),
                    figures_dir: Optional[Path] = typer.Option(None, help="also write smollm2_*.png here (e.g. docs/results)"),
                    cache: Optional[Path] = typer.Option(None, help="cache folder (default $AMNESIAC_HOME/cache/smollm2)")):
        """SmolLM2-135M as released (Q4_1): unlearn known facts (GA_GDR, NPO_KLR, + SURE), deploy at fp / Q4_1 /
        Q4_0 / Q8_0 / RTN / HQQ, measure recall with CIs and collapse diagnostics, sweep lr × steps. Cached: a
        rerun is fast and a killed run resumes."""
        from rich.console import Console

        from .smollm2 import SmolConfig, run_smollm2
        from .smollm2_report import print_summary

        c = Console()
        cfg = SmolConfig(model=str(model) if model else None, facts=str(facts) if facts else None, seed=seed, forget=forget, utility=utility,
                         methods=tuple(m.strip() for m in methods.split(",") if m.strip()), sure=sure, lr=lr,
                         steps=steps, sure_lr=sure_lr, sure_steps=sure_steps, robust=robust, robust_lr=robust_lr,
                         robust_steps=robust_steps,
                         precisions=tuple(p.strip() for p in precisions.split(",") if p.strip()), sweep=sweep,
                         sweep_lrs=_floats(sweep_lrs), sweep_steps=_ints(sweep_steps),
                         max_retain_eval=max_retain_eval, max_utility_eval=max_utility_eval)
        s = run_smollm2(cfg, out, log=c.print, cache=cache, figures_dir=figures_dir)  # errors: the CLI boundary
        print_summary(s, c)
        c.print(f"wall time {s['wall_s']} s; wrote {out}/summary.json, {s['report']['md']}, {s['report']['html']}")
