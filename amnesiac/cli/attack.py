"""`amnesiac attack …`: run one attack on a model from the command line; every run writes its config, cost and
results as JSON (and, for attacks that change weights, a loadable model folder). Options: the attack's config
dataclass (amnesiac/attacks/files.py) plus the model, data, output and device."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..attacks.files import CollapseConfig, ProbeConfig, PromptsConfig, QuantizeConfig, RelearnConfig
from ..cli_options import config_command
from ..report.render import console as _term

_OVERWRITE = typer.Option(False, "--overwrite", help="replace an earlier amnesiac output at --out")
_DEVICE = typer.Option("auto", help="auto (CUDA if available) | cpu | cuda | cuda:N")


def _console():
    return _term()


def quantize_cmd(model: Path = typer.Option(..., "--model", help="model folder (or .gguf) to quantize"),
                 out: Path = typer.Option(..., "--out", help="output model folder (dequantized weights + attack.json)"),
                 device: str = _DEVICE, dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
                 overwrite: bool = _OVERWRITE, config: QuantizeConfig = None):
    """Quantize a model's weights and save the dequantized model (any metric runs on it unchanged)."""
    from ..attacks.files import quantize_files

    r = quantize_files(model, out, config, device=device, dtype=dtype, overwrite=overwrite)
    _console().print(f"[bold]{r['config']['name']}[/]: {r['n_tensors']} tensors, {r['n_weights']:,} weights quantized "
                     f"in {r['cost']['wall_s']:.2f} s → {out}")


def collapse_cmd(target: Path = typer.Option(..., "--target", help="model before unlearning"),
                 unlearned: Path = typer.Option(..., "--unlearned", help="model after unlearning"),
                 out: Optional[Path] = typer.Option(None, help="JSON file (or folder) for the full report"),
                 layers: int = typer.Option(12, min=0, help="per-layer rows to print (lowest collapse rate first)"),
                 overwrite: bool = _OVERWRITE, config: CollapseConfig = None):
    """Collapse diagnostic (docs/science.md §1b): collapse rate, drift kept, |Δw|/Δ and the target's grid offset."""
    from rich.table import Table

    from ..attacks.files import collapse_files

    rec = collapse_files(target, unlearned, config, out=out, overwrite=overwrite)
    tab = Table(title=f"collapse under {rec['quantizer']['name']}")
    for col in ("layer", "collapse rate", "values identical", "drift kept", "mean |Δw|/Δ", "≥ ½ step", "grid offset"):
        tab.add_column(col)

    def row(name, s):
        dk = "—" if s["drift_kept"] is None else f"{s['drift_kept']:.3f}"
        tab.add_row(name, f"{s['collapse_rate']:.4f}", f"{s['value_identical']:.4f}", dk,
                    f"{s['mean_abs_dw_over_step']:.4f}", f"{s['frac_dw_ge_half_step']:.4f}", f"{s['grid_offset_mean']:.3f}")

    for name, s in sorted(rec["layers"].items(), key=lambda kv: kv[1]["collapse_rate"])[:layers]:
        row(name, s)
    row("[bold]overall[/]", rec["overall"])
    _console().print(tab)


def relearn_cmd(model: Path = typer.Option(..., "--model", help="unlearned model"),
                forget: str = typer.Option(..., "--forget", help="forget set, e.g. bios:forget10"),
                retain: Optional[str] = typer.Option(None, help="retain set (control=retain)"),
                texts: Optional[str] = typer.Option(None, help="unrelated texts, JSONL with `text` (control=text)"),
                out: Optional[Path] = typer.Option(None, help="folder: attack.json (+ model with --save-model)"),
                save_model_: bool = typer.Option(False, "--save-model", help="also save the relearned model in --out"),
                device: str = _DEVICE, overwrite: bool = _OVERWRITE, config: RelearnConfig = None):
    """Relearning attack: fine-tune k steps on part of the forget set, recall on the held-out part."""
    from ..attacks.files import relearn_files

    r = relearn_files(model, forget, config, retain=retain, texts=texts, out=out, save_model=save_model_, device=device,
                      overwrite=overwrite)
    _console().print(f"held-out forget recall {r['heldout_recall_before']:.3f} → {r['heldout_recall_after']:.3f} "
                     f"after {config.steps} steps on {r['config']['train_source']} ({r['cost']['wall_s']:.1f} s)")


def prompts_cmd(model: Path = typer.Option(..., "--model", help="the model"),
                forget: str = typer.Option(..., "--forget", help="forget set, e.g. bios:forget10"),
                retain: Optional[str] = typer.Option(None, help="retain set (pool for icl_retain)"),
                out: Optional[Path] = typer.Option(None, help="JSON file (or folder) for attack.json"),
                device: str = _DEVICE, overwrite: bool = _OVERWRITE, config: PromptsConfig = None):
    """Prompt attacks: exact-match recall of the forget set under each prompt transformation."""
    from rich.table import Table

    from ..attacks.files import prompts_files

    rec = prompts_files(model, forget, config, retain=retain, out=out, device=device, overwrite=overwrite)
    tab = Table(title=f"prompt attacks on {forget}")
    for col in ("transform", "recall (mean)", "recall (any)", "items scored"):
        tab.add_column(col)
    for n, r in rec["results"].items():
        tab.add_row(n, f"{r['value']:.3f}", f"{r['meta']['any']:.3f}", str(r["meta"]["n_scored"]))
    _console().print(tab)


def probe_cmd(model: Path = typer.Option(..., "--model", help="the model"),
              forget: str = typer.Option(..., "--forget", help="forget set, e.g. bios:forget10"),
              retain: Optional[str] = typer.Option(None, "--retain", help="retain set (trains the linear probe)"),
              out: Optional[Path] = typer.Option(None, help="JSON file (or folder) for attack.json"),
              device: str = _DEVICE, overwrite: bool = _OVERWRITE, config: ProbeConfig = None):
    """Hidden-state probes: logit lens on the forget set; linear probe trained on retain, applied to forget."""
    from ..attacks.files import probe_files

    rec = probe_files(model, forget, config, retain=retain, out=out, device=device, overwrite=overwrite)
    ll = rec["logit_lens"]["meta"]
    msg = f"logit lens: top-1 {ll['output_top1']:.3f} at the output, best {rec['logit_lens']['value']:.3f} (layer {ll['best_layer']})"
    if "linear_probe" in rec:
        lp = rec["linear_probe"]
        msg += (f"; linear probe (layer {lp['meta']['best_layer']}): forget acc {lp['value']:.3f}, "
                f"retain held-out acc {lp['meta']['retain_heldout_acc']:.3f}")
    _console().print(msg)


def register(app: typer.Typer) -> None:
    attack = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="Attacks that try to bring unlearned knowledge back (docs/science.md §3, §4).")
    config_command(attack, "quantize", {"config": QuantizeConfig}, quantize_cmd)
    config_command(attack, "collapse", {"config": CollapseConfig}, collapse_cmd)
    config_command(attack, "relearn", {"config": RelearnConfig}, relearn_cmd)
    config_command(attack, "prompts", {"config": PromptsConfig}, prompts_cmd)
    config_command(attack, "probe", {"config": ProbeConfig}, probe_cmd)
    app.add_typer(attack, name="attack")
