"""One evaluation from files (what `amnesiac eval` runs): data specs resolved, every option and the context
length checked before a model loads, --out claimed (never the input, never a foreign folder), the models
loaded, evaluate.evaluate, summary.json + per_example.jsonl (+ retrained_reference.json) written last."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from .errors import UserError
from .evaluate import EvalConfig, EvalData, RetrainedRef, evaluate, resolve_data, retrained_reference, save_results

PARTS = ("retain", "holdout", "real_authors", "world_facts", "forget_text", "holdout_text")


def load_retrained(path: str, device: str, dtype: str, data: EvalData, cfg: EvalConfig) -> RetrainedRef:
    """A retrained model folder (its reference numbers are computed, cached by model hash) or a JSON file
    written by an earlier run (retrained_reference.json)."""
    from .io import read_json
    from .models import load_model

    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        try:
            d = read_json(p)
        except ValueError as e:
            raise UserError(f"--retrained {e}", "give a retrained model folder or its retrained_reference.json") from None
        if not isinstance(d, dict):
            raise UserError(f"--retrained {p}: not a retrained_reference.json (expected a JSON object)")
        return RetrainedRef(d.get("truth_ratios"), d.get("privleak_auc"), d.get("source") or str(p))
    model, tok = load_model(p, device=device, dtype=dtype)
    ref = retrained_reference(model, tok, data, cfg)
    ref.source = f"{p} ({ref.source})"
    return ref


def _check_context(model: Path, ed: EvalData, bound) -> None:
    """Every scored sequence, in the bound prompt format, must fit the model's context (checked before it loads)."""
    from .measure import check_context

    qa = [bound.item_prompt(it) + bound.item_answer(it, it.answer) for part in (ed.forget, ed.retain, ed.holdout,
          ed.real_authors, ed.world_facts) for it in (part or [])]
    texts = list(ed.forget_text or []) + list(ed.holdout_text or [])
    check_context(str(model), qa + texts, 0, "scored sequences",
                  "pass --max-length N (at most the model's context) to cut them from the left")


def run_eval(model: Path, data: str, out: Path, config: EvalConfig | None = None, parts: dict | None = None,
             auto: bool = True, retrained: str | None = None, reference: Path | None = None, device: str = "auto",
             dtype: str = "float32", overwrite: bool = False) -> tuple[dict, dict]:
    """Evaluate `model` on the forget spec `data` (+ companion parts: PARTS → spec, derived from `data` when
    `auto`; "none" drops one) into `out`. Returns (name → MetricResult, run meta)."""
    import torch

    from .io import claim_output, versions, write_json
    from .models import load_model
    from .models.load import check_device, check_model_dir, resolve_dtype

    t0 = time.time()
    parts = {k: v for k, v in (parts or {}).items() if v is not None}
    check_device(device)
    try:
        resolve_dtype(dtype)
    except ValueError as e:
        raise UserError(str(e)) from None
    # every EvalConfig option was checked when the config was built; an unlearned model's recorded prompt
    # format is used unless prompt options were given (data.prompt.resolve_format: a different one is refused)
    from .data.prompt import resolve_format

    config = config or EvalConfig()
    fmt = resolve_format(config.prompt_format(), config.prompt_explicit(), model)
    cfg = dataclasses.replace(config, template=fmt.template, chat_template=fmt.chat_template,
                              system_prompt=fmt.system_prompt)
    torch.manual_seed(cfg.seed)
    try:
        ed = resolve_data(data, auto=auto, **parts)
    except UserError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"--data {data}: {e}") from None
    check_model_dir(model)
    from .models.load import load_tokenizer

    bound = fmt.bind(load_tokenizer(model) if fmt.chat_template else None)  # no chat template: fails here
    if cfg.max_length is None:
        _check_context(model, ed, bound)
    for extra in (reference, retrained if retrained and not str(retrained).endswith(".json") else None):
        if extra is not None:
            check_model_dir(extra)
    specs = [model, reference, retrained, data, *(parts.get(k) for k in PARTS)]
    with claim_output(out, [x for x in specs if x is not None], overwrite=overwrite, kind="eval") as claim:
        ref_ret = load_retrained(retrained, device, dtype, ed, cfg) if retrained else None
        m, tok = load_model(model, device=device, dtype=dtype)
        refm = load_model(reference, device=device, dtype=dtype) if reference else None
        res = evaluate(m, tok, ed, cfg, retrained=ref_ret, reference=refm)
        meta = {"model": str(model), "data": data, "sources": ed.sources, "data_hashes": ed.hashes(),
                "sizes": {k: len(v) for k, v in ed.parts().items()}, "seed": cfg.seed, "config": cfg.__dict__,
                "prompt_format": fmt.bind(tok).record(),
                "retrained": ref_ret.to_json() if ref_ret else None, "reference": str(reference) if reference else None,
                "model_hash": next(iter(res.values())).meta.get("model_hash") if res else None,
                "versions": versions(), "device": str(next(m.parameters()).device), "wall_s": round(time.time() - t0, 2)}
        d = claim.begin()  # late: a temp sibling of --out, swapped in when the block ends
        if ref_ret:
            write_json(d / "retrained_reference.json", ref_ret.to_json())
        save_results(d, res, meta)
    return res, meta
