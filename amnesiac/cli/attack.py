"""`amnesiac attack …`: run one attack on a model from the command line; every run writes its config,
cost and results as JSON (and, for attacks that change weights, a loadable model folder)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

attack_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="Attacks that try to bring unlearned knowledge back (docs/science.md §3, §4).")


def _console():
    from rich.console import Console

    return Console()


def _claim(out: Path | None, inputs: list, overwrite: bool, kind: str):
    """io.claim_output for --out (a folder, or a .json file), or nothing to claim without --out."""
    import contextlib

    from ..io import claim_output

    if out is None:
        return contextlib.nullcontext()
    return claim_output(out, [i for i in inputs if i is not None], overwrite=overwrite, kind=kind)


def _write(claim, rec: dict) -> Path | None:
    """attack.json into the claimed output (late: after the attack ran)."""
    from ..io import versions, write_json

    if not hasattr(claim, "begin"):
        return None
    d = claim.begin()
    path = d if claim.is_file else d / "attack.json"
    write_json(path, {**rec, "versions": versions()})
    return path


def _items(spec: str | None):
    if not spec:
        return None
    from ..data import load_dataset

    return load_dataset(spec)


def _quantizer(backend: str, bits: int, group: int | None, scheme: str, kind: str | None):
    """The backend's quantizer, built before any model loads: bits / group / scheme / kind out of the backend's
    range, an unknown backend or a missing library fail here as one-line errors."""
    from ..errors import UserError, check_number
    from ..attacks.quant.backends import get_quantizer

    check_number("--bits", bits, ge=1, integer=True)
    check_number("--group", group, ge=1, integer=True, optional=True)
    try:
        return get_quantizer(backend, bits=bits, group=group, scheme=scheme, **({"kind": kind} if kind else {}))
    except UserError:
        raise
    except (ValueError, TypeError) as e:
        raise UserError(f"--backend {backend} --bits {bits}: {e}", "see `amnesiac attack quantize --help`") from None


_OVERWRITE = typer.Option(False, "--overwrite", help="replace an earlier amnesiac output at --out")


@attack_app.command("quantize")
def quantize_cmd(model: Path = typer.Option(..., "--model", help="model folder (or .gguf) to quantize"),
                 out: Path = typer.Option(..., "--out", help="output model folder (dequantized weights + attack.json)"),
                 bits: int = typer.Option(4, help="2–8 (backends support a subset, see "
                                                   "docs/guides/quantization-backends.md)"),
                 group: Optional[int] = typer.Option(None, help="group size along the input dim (32/64/128); default per channel (gptq/awq: 128; 0 = per channel)"),
                 scheme: Optional[str] = typer.Option(None, help="sym | asym (default: sym; asym for awq)"),
                 backend: str = typer.Option("rtn", help="rtn | quanto | hqq | torchao | bnb | gguf | gptq | awq"),
                 kind: Optional[str] = typer.Option(None, help="bnb: nf4 | fp4 | int8; gguf: q4_0 | q4_1 | q5_0 | q5_1 | q8_0"),
                 embeddings: bool = typer.Option(False, help="also quantize input embeddings"),
                 lm_head: bool = typer.Option(False, "--lm-head", help="also quantize the LM head"),
                 calib: Optional[str] = typer.Option(None, help="gptq/awq: calibration data, e.g. bios:retain90 (QA items: question+answer)"),
                 calib_n: int = typer.Option(128, "--calib-n", min=1, help="gptq/awq: calibration sequences (seeded sample)"),
                 calib_len: int = typer.Option(512, "--calib-len", min=1, help="gptq/awq: max tokens per sequence"),
                 act_order: bool = typer.Option(False, "--act-order", help="gptq: columns by decreasing Hessian diagonal"),
                 no_clip: bool = typer.Option(False, "--no-clip", help="awq: skip the clipping search"),
                 seed: int = typer.Option(0, help="gptq/awq: seed of the calibration sample"),
                 device: str = typer.Option("auto"), dtype: str = typer.Option("float32"), overwrite: bool = _OVERWRITE):
    """Quantize a model's weights and save the dequantized model (any metric runs on it unchanged)."""
    from ..errors import UserError
    from ..models import load_model, save_model
    from ..models.load import check_device, check_model_dir, resolve_dtype
    from ..attacks.quantize import awq_attack, gptq_attack, quantize_attack

    calibrated = backend in ("gptq", "awq")
    if calibrated:
        if embeddings or lm_head:
            raise UserError(f"{backend} quantizes the decoder blocks only", "drop --embeddings / --lm-head")
        if not calib:
            raise UserError(f"{backend} needs calibration texts", "pass --calib DATA (e.g. bios:retain90)")
        from ..attacks.quant.calib import calib_texts_from_items

        texts = calib_texts_from_items(_items(calib))
    else:
        _quantizer(backend, bits, group, scheme or "sym", kind)
    check_device(device), resolve_dtype(dtype), check_model_dir(model)
    with _claim(out, [model], overwrite, "attack-quantize") as claim:  # never --model, never a foreign folder
        m, tok = load_model(model, device=device, dtype=dtype)
        if calibrated:
            common = dict(bits=bits, group=128 if group is None else (group or None), n_calib=calib_n,
                          max_len=calib_len, seed=seed)
            res = (gptq_attack(m, tok, texts, scheme=scheme or "sym", act_order=act_order, **common)
                   if backend == "gptq" else awq_attack(m, tok, texts, scheme=scheme or "asym", clip=not no_clip, **common))
            res.record["config"]["calib"]["data"] = calib
        else:
            res = quantize_attack(m, tok, backend=backend, bits=bits, group=group, scheme=scheme or "sym", kind=kind,
                                  embeddings=embeddings, lm_head=lm_head)
        save_model(res.model, tok, claim.begin())
        _write(claim, {**res.record, "source_model": str(model)})
    c = res.record["cost"]
    _console().print(f"[bold]{res.record['config']['name']}[/]: {res.record['n_tensors']} tensors, "
                     f"{res.record['n_weights']:,} weights quantized in {c['wall_s']:.2f} s → {out}")


@attack_app.command("collapse")
def collapse_cmd(target: Path = typer.Option(..., "--target", help="model before unlearning"),
                 unlearned: Path = typer.Option(..., "--unlearned", help="model after unlearning"),
                 bits: int = typer.Option(4), group: Optional[int] = typer.Option(None),
                 scheme: str = typer.Option("sym"), embeddings: bool = typer.Option(False),
                 lm_head: bool = typer.Option(False, "--lm-head"),
                 backend: str = typer.Option("rtn", help="quantizer with integer codes: rtn | gguf"),
                 kind: Optional[str] = typer.Option(None, help="gguf format (q4_0, q4_1, q5_0, q5_1, q8_0)"),
                 out: Optional[Path] = typer.Option(None, help="JSON file (or folder) for the full report"),
                 layers: int = typer.Option(12, min=0, help="per-layer rows to print (lowest collapse rate first)"),
                 overwrite: bool = _OVERWRITE):
    """Collapse diagnostic (docs/science.md §1b): collapse rate, drift kept, |Δw|/Δ and the target's grid offset."""
    from rich.table import Table

    from ..models import load_model
    from ..models.load import check_model_dir
    from ..attacks.collapse import collapse_attack

    q = _quantizer(backend, bits, group, scheme, kind)
    check_model_dir(target), check_model_dir(unlearned)
    with _claim(out, [target, unlearned], overwrite, "attack-collapse") as claim:
        t, _ = load_model(target, device="cpu")
        u, _ = load_model(unlearned, device="cpu")
        rec = collapse_attack(u, None, target=t, bits=bits, group=group, scheme=scheme, embeddings=embeddings,
                              lm_head=lm_head, quantizer=q if backend != "rtn" else None).record
        rec.update(target=str(target), unlearned=str(unlearned))
        _write(claim, rec)
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


@attack_app.command("relearn")
def relearn_cmd(model: Path = typer.Option(..., "--model", help="unlearned model"),
                forget: str = typer.Option(..., "--forget", help="forget set, e.g. bios:forget10"),
                fraction: float = typer.Option(0.5, help="share of the forget set trained on (0 < f < 1); recall on the rest"),
                steps: int = typer.Option(20), lr: float = typer.Option(1e-4), batch_size: int = typer.Option(8),
                by: str = typer.Option("item", help="split by item | person"),
                control: Optional[str] = typer.Option(None, help="benign control: retain | text"),
                retain: Optional[str] = typer.Option(None, help="retain set (control=retain)"),
                texts: Optional[str] = typer.Option(None, help="unrelated texts, JSONL with `text` (control=text)"),
                seed: int = typer.Option(0), out: Optional[Path] = typer.Option(None, help="folder: attack.json (+ model with --save-model)"),
                save_model_: bool = typer.Option(False, "--save-model", help="also save the relearned model in --out"),
                device: str = typer.Option("auto"), overwrite: bool = _OVERWRITE):
    """Relearning attack: fine-tune k steps on part of the forget set, recall on the held-out part."""
    from ..errors import UserError
    from ..models import load_model, save_model
    from ..models.load import check_model_dir, check_device
    from ..attacks.relearn import check_forget_items, check_relearn_options, relearn_attack

    check_relearn_options(fraction, steps, lr, batch_size, by, control)
    if save_model_ and out is None:
        raise UserError("--save-model needs --out (the folder to save the relearned model in)")
    if save_model_ and out.suffix == ".json":
        raise UserError(f"--save-model saves a model folder; --out {out} is a .json file", "give --out a folder")
    check_device(device), check_model_dir(model)
    f_items, r_items, t_items = _items(forget), _items(retain), _items(texts)  # bad data fails before the model loads
    check_forget_items(f_items)
    paths = [model, *(Path(x) for x in (forget, retain, texts) if x and Path(x).exists())]
    with _claim(out, paths, overwrite, "attack-relearn") as claim:
        m, tok = load_model(model, device=device)
        res = relearn_attack(m, tok, forget=f_items, fraction=fraction, steps=steps, lr=lr, batch_size=batch_size,
                             by=by, control=control, retain=r_items, texts=t_items, seed=seed)
        if save_model_:
            save_model(res.model, tok, claim.begin())
        _write(claim, {**res.record, "model": str(model), "forget": forget})
    r = res.record
    _console().print(f"held-out forget recall {r['heldout_recall_before']:.3f} → {r['heldout_recall_after']:.3f} "
                     f"after {steps} steps on {r['config']['train_source']} ({r['cost']['wall_s']:.1f} s)")


@attack_app.command("prompts")
def prompts_cmd(model: Path = typer.Option(..., "--model"),
                forget: str = typer.Option(..., "--forget", help="forget set, e.g. bios:forget10"),
                retain: Optional[str] = typer.Option(None, help="retain set (pool for icl_retain)"),
                transforms: str = typer.Option("all", help="comma list of: " + ", ".join(
                    ["question", "paraphrase", "icl_forget", "icl_same_person", "icl_retain", "step_by_step", "cloze"])),
                k: int = typer.Option(3, min=0, help="in-context examples"), seed: int = typer.Option(0),
                out: Optional[Path] = typer.Option(None), device: str = typer.Option("auto"),
                overwrite: bool = _OVERWRITE):
    """Prompt attacks: exact-match recall of the forget set under each prompt transformation."""
    from rich.table import Table

    from ..errors import UserError
    from ..models import load_model
    from ..models.load import check_model_dir, check_device
    from ..attacks.prompts import TRANSFORMS, prompt_attack

    names = "all" if transforms == "all" else [t.strip() for t in transforms.split(",") if t.strip()]
    bad = [n for n in (names if names != "all" else []) if n not in TRANSFORMS]
    if bad or not names:
        raise UserError(f"unknown prompt transform(s) {', '.join(bad) or repr(transforms)}",
                        f"available: all, {', '.join(TRANSFORMS)}")
    check_device(device), check_model_dir(model)
    items, pool = _items(forget), _items(retain)
    with _claim(out, [model, forget, retain], overwrite, "attack-prompts") as claim:
        m, tok = load_model(model, device=device)
        rec = prompt_attack(m, tok, items=items, transforms=names, pool=pool, k=k, seed=seed).record
        _write(claim, {**rec, "model": str(model), "forget": forget})
    tab = Table(title=f"prompt attacks on {forget}")
    for col in ("transform", "recall (mean)", "recall (any)", "items scored"):
        tab.add_column(col)
    for n, r in rec["results"].items():
        tab.add_row(n, f"{r['value']:.3f}", f"{r['meta']['any']:.3f}", str(r["meta"]["n_scored"]))
    _console().print(tab)


@attack_app.command("probe")
def probe_cmd(model: Path = typer.Option(..., "--model"),
              forget: str = typer.Option(..., "--forget"), retain: Optional[str] = typer.Option(None, "--retain"),
              out: Optional[Path] = typer.Option(None), device: str = typer.Option("auto"),
              overwrite: bool = _OVERWRITE):
    """Hidden-state probes: logit lens on the forget set; linear probe trained on retain, applied to forget."""
    from ..models import load_model
    from ..models.load import check_model_dir, check_device
    from ..attacks.probes import probe_attack

    check_device(device), check_model_dir(model)
    f_items, r_items = _items(forget), _items(retain)
    with _claim(out, [model, forget, retain], overwrite, "attack-probe") as claim:
        m, tok = load_model(model, device=device)
        rec = probe_attack(m, tok, forget=f_items, retain=r_items).record
        _write(claim, {**rec, "model": str(model), "forget": forget, "retain": retain})
    ll = rec["logit_lens"]["meta"]
    msg = f"logit lens: top-1 {ll['output_top1']:.3f} at the output, best {rec['logit_lens']['value']:.3f} (layer {ll['best_layer']})"
    if "linear_probe" in rec:
        lp = rec["linear_probe"]
        msg += (f"; linear probe (layer {lp['meta']['best_layer']}): forget acc {lp['value']:.3f}, "
                f"retain held-out acc {lp['meta']['retain_heldout_acc']:.3f}")
    _console().print(msg)


def register(app: typer.Typer) -> None:
    app.add_typer(attack_app, name="attack")
