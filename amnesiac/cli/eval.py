"""`amnesiac eval`: every registered §5 metric on one model, a rich table, summary.json + per_example.jsonl."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli_options import config_command
from ..evaluate import EvalConfig


def _load_retrained(path: str, tok_model_data, cfg):
    """A retrained model folder (its reference numbers are computed, cached by model hash) or a JSON file
    written by an earlier run (retrained_reference.json)."""
    from ..errors import UserError
    from ..evaluate import RetrainedRef, retrained_reference
    from ..io import read_json

    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        try:
            d = read_json(p)
        except ValueError as e:
            raise UserError(f"--retrained {e}", "give a retrained model folder or its retrained_reference.json") from None
        if not isinstance(d, dict):
            raise UserError(f"--retrained {p}: not a retrained_reference.json (expected a JSON object)")
        return RetrainedRef(d.get("truth_ratios"), d.get("privleak_auc"), d.get("source") or str(p))
    from ..models import load_model

    device, dtype, data = tok_model_data
    model, tok = load_model(p, device=device, dtype=dtype)
    ref = retrained_reference(model, tok, data, cfg)
    ref.source = f"{p} ({ref.source})"
    return ref


def eval_cmd(model: Path = typer.Option(..., "--model", help="the model: a folder, .gguf, hub id in the local cache, "
                                                             "or PEFT adapter"),
             data: str = typer.Option(..., "--data", help="forget set: bios:forget10 | tofu:forget10 | muse:<folder> | "
                                                          "file.jsonl"),
             out: Path = typer.Option(..., "--out", help="output folder"),
             retain: Optional[str] = typer.Option(None, help="retain QA set (default: derived from --data; 'none' to skip)"),
             holdout: Optional[str] = typer.Option(None, help="holdout QA set (non-members)"),
             real_authors: Optional[str] = typer.Option(None, help="TOFU real-authors set"),
             world_facts: Optional[str] = typer.Option(None, help="TOFU world-facts set"),
             forget_text: Optional[str] = typer.Option(None, help="raw forget texts (MIA, PrivLeak)"),
             holdout_text: Optional[str] = typer.Option(None, help="raw holdout texts"),
             retrained: Optional[str] = typer.Option(None, help="retrained model folder, or its retrained_reference.json"),
             reference: Optional[Path] = typer.Option(None, help="reference model for the reference-MIA attack"),
             auto: bool = typer.Option(True, help="derive retain/holdout/text companions from --data"),
             device: str = typer.Option("auto", help="auto (CUDA if available) | cpu | cuda | cuda:N"),
             dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
             muse_x100: bool = typer.Option(False, "--muse-x100", help="print VerbMem / KnowMem on MUSE's ×100 scale "
                                                                       "(the JSON keeps the 0–1 values)"),
             overwrite: bool = typer.Option(False, help="replace an earlier amnesiac eval output at --out"),
             config: EvalConfig = None):
    """Evaluate one model: TOFU, MUSE, MIA and memorisation metrics (docs/science.md §5)."""
    import time

    import torch
    from rich.console import Console
    from rich.table import Table

    from ..errors import UserError
    from ..evaluate import evaluate, resolve_data, save_results
    from ..io import claim_output, versions, write_json
    from ..models import load_model

    import dataclasses

    from ..models.load import check_device, resolve_dtype

    console = Console()
    t0 = time.time()
    check_device(device)
    try:
        resolve_dtype(dtype)
    except ValueError as e:
        raise UserError(str(e)) from None
    # every EvalConfig option was checked when the config was built; a shell-typed "\n" means a newline
    cfg = dataclasses.replace(config, template=config.template.replace("\\n", "\n"))
    torch.manual_seed(cfg.seed)
    template, max_length, seed = cfg.template, cfg.max_length, cfg.seed
    try:
        ed = resolve_data(data, auto=auto, retain=retain, holdout=holdout, real_authors=real_authors,
                          world_facts=world_facts, forget_text=forget_text, holdout_text=holdout_text)
    except UserError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"--data {data}: {e}") from None
    from ..models.load import check_model_dir

    check_model_dir(model)
    if max_length is None:  # every scored sequence must fit the model's context (checked before it loads)
        from ..data.schema import item_prompt, qa_answer
        from ..measure import check_context

        qa = [item_prompt(it, template) + qa_answer(it.answer) for part in (ed.forget, ed.retain, ed.holdout,
              ed.real_authors, ed.world_facts) for it in (part or [])]
        texts = list(ed.forget_text or []) + list(ed.holdout_text or [])
        check_context(str(model), qa + texts, 0, "scored sequences",
                      "pass --max-length N (at most the model's context) to cut them from the left")
    for extra in (reference, retrained if retrained and not str(retrained).endswith(".json") else None):
        if extra is not None:
            check_model_dir(extra)
    specs = [model, reference, retrained, data, retain, holdout, real_authors, world_facts, forget_text, holdout_text]
    with claim_output(out, [x for x in specs if x is not None], overwrite=overwrite, kind="eval") as claim:
        ref_ret = _load_retrained(retrained, (device, dtype, ed), cfg) if retrained else None
        m, tok = load_model(model, device=device, dtype=dtype)
        refm = load_model(reference, device=device, dtype=dtype) if reference else None
        res = evaluate(m, tok, ed, cfg, retrained=ref_ret, reference=refm)
        meta = {"model": str(model), "data": data, "sources": ed.sources, "data_hashes": ed.hashes(),
                "sizes": {k: len(v) for k, v in ed.parts().items()}, "seed": seed, "config": cfg.__dict__,
                "retrained": ref_ret.to_json() if ref_ret else None, "reference": str(reference) if reference else None,
                "model_hash": next(iter(res.values())).meta.get("model_hash") if res else None,
                "versions": versions(), "device": str(next(m.parameters()).device), "wall_s": round(time.time() - t0, 2)}
        d = claim.begin()  # late: a temp sibling of --out, swapped in when the block ends
        if ref_ret:
            write_json(d / "retrained_reference.json", ref_ret.to_json())
        save_results(d, res, meta)
    t = Table(title=f"amnesiac eval: {model} on {data}")
    for c in ("metric", "value", "95% CI", "goal", "n"):
        t.add_column(c, justify="right" if c != "metric" else "left")
    for k, r in res.items():
        ci = r.meta.get("ci95")
        label = f"{k} (partial {r.meta['n_components']}/9)" if k == "model_utility" and not r.meta["complete"] else k
        scale = 100.0 if muse_x100 and k in ("verbmem", "knowmem_forget", "knowmem_retain") else 1.0
        if scale != 1.0:
            label += " (×100)"
        t.add_row(label, f"{scale * r.value:.4f}" if r.value is not None else "-",
                  f"[{scale * ci[0]:.3f}, {scale * ci[1]:.3f}]" if ci else "", "↑" if r.higher_is_better else "↓",
                  str(r.meta.get("n", r.meta.get("n_member", ""))))
    console.print(t)
    console.print(f"wrote {out / 'summary.json'} and {out / 'per_example.jsonl'} ({meta['wall_s']} s)")


def register(app: typer.Typer) -> None:
    config_command(app, "eval", {"config": EvalConfig}, eval_cmd)
