"""The one cached run helper: unlearn-then-measure, keyed by *content*, shared by every experiment.

Keys come from what a result depends on, never from where things lie:
- an unlearned model: the target's weight/config/tokenizer files (io.content_key, each file hashed once and
  remembered by size and mtime), the forget and retain items, and the recipe (UnlearnConfig options);
- a measurement: the measured model's content key, the deployment (a quantizer name of the one
  vocabulary, attacks/quant/spec.py), the sets measured, the scoring and MEASURE_VERSION.
So a second sweep with another forget set never reuses the first one's models, and a model re-written
at
the same path is measured again.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from .data.schema import QAItem
from .io import hash_obj, read_json, write_json
from .models.resolve import model_content_key as content_key  # folders, .gguf, hub ids, adapters

MEASURE_VERSION = 1  # bump when measure() changes what it records


def items_key(items: Sequence) -> str:
    """Content hash of a data set (QA items or raw texts), order included."""
    return hash_obj([it.to_json() if hasattr(it, "to_json") else it for it in items])


PRECISIONS = ("float32", "bfloat16", "bf16-mixed")  # UnlearnConfig.precision


def check_precisions(names) -> None:
    from .errors import UserError

    bad = [p for p in names if p not in PRECISIONS]
    if bad or not names:
        raise UserError(f"unknown unlearning precision(s) {bad}; available: {', '.join(PRECISIONS)}")


def reference_dtype(precision: str):
    """The dtype to cast the target to before comparing it with a model unlearned at `precision`: a pure-bf16 run
    starts from the bf16 cast of the target (the cast itself moves almost every weight)."""
    import torch

    return torch.bfloat16 if precision == "bfloat16" else None


def sweep_recipe(cfg, lr: float, precision: str = "float32") -> dict:
    """unlearn() options of a sweep point: constant lr, a fixed step budget (no early stop), the config's method,
    batch, seed, and its SURE percentile / quantization-aware formats / precision when set (SweepConfig,
    OffsetSweepConfig). float32 adds no key, so recipes (and cached runs) from before the precision axis match."""
    opts = dict(method=cfg.method, lr=lr, max_steps=cfg.max_steps, schedule="constant", batch_size=cfg.batch_size,
                seed=cfg.seed)
    if precision != "float32":
        opts["precision"] = precision
    if cfg.sure_percentile is not None:
        opts["sure_percentile"] = cfg.sure_percentile
    if cfg.robust_to:
        opts["robust_to"] = cfg.robust_to
    if cfg.prompt_explicit():  # the default format adds nothing (earlier runs' cache keys stay valid)
        opts.update(template=cfg.template, chat_template=cfg.chat_template, system_prompt=cfg.system_prompt)
    return opts


def cached_unlearn(target: str | Path, forget: Sequence[QAItem], retain: Sequence[QAItem] | None, recipe: dict,
                   root: str | Path, tag: str = "", log=print) -> Path:
    """Unlearn `forget` from the model at `target` with `recipe` (unlearn() keyword options), once.

    The output lies in root/<target name>-<tag>-<key>; a finished run (unlearn.json present) is returned
    as is; a missing or unfinished one is (re)computed."""
    from .unlearn import unlearn

    target = Path(target)
    key = hash_obj({"target": content_key(target), "forget": items_key(forget),
                    "retain": items_key(retain or []), "recipe": recipe}, 10)
    out = Path(root) / f"{target.name}-{tag + '-' if tag else ''}{key}"
    if not (out / "unlearn.json").exists():
        log(f"unlearning {target.name} ({tag or recipe.get('method')}, lr {recipe.get('lr')})")
        unlearn(str(target), list(forget), list(retain) if retain else None, out=out, overwrite=True,
                **{"progress": False, **recipe})
    return out


def measure_key(model_path: str | Path, deployment: str, sets: dict[str, Sequence], scoring, extra=None) -> str:
    return hash_obj({"model": content_key(model_path), "deploy": deployment, "v": MEASURE_VERSION,
                     "sets": {k: items_key(v) for k, v in sets.items() if v}, "scoring": scoring.to_json(),
                     "extra": extra}, 16)


def cached_measure(model_path: str | Path, deployment: str, sets: dict[str, Sequence], scoring, cache_dir: str | Path,
                   loaded=None, batch_size: int = 32, log=None, calib_texts: list[str] | None = None,
                   fmt=None, **measure_kw) -> dict:
    """measure() of the model at `model_path` deployed as `deployment` (a quantizer name or "fp"), cached in
    cache_dir by content. `loaded`: a callable returning (model, tok) of model_path (lets a caller keep one
    model in memory across deployments). The model is never changed: deployments quantize a copy.
    `calib_texts`: for calibrated quantizers (gptq*, awq*); part of the key. `fmt`: the prompt format
    (data.prompt.PromptFormat; part of the key unless it is the default)."""
    from .attacks.quant.deploy import deploy
    from .data.prompt import as_format
    from .measure import measure

    fmt = as_format(fmt)
    key_kw = {**measure_kw, **({} if fmt.is_default else {"prompt_format": fmt.record()})}
    extra = {**key_kw, "calib": items_key(calib_texts)} if calib_texts else (key_kw or None)
    cp = Path(cache_dir) / f"{measure_key(model_path, deployment, sets, scoring, extra)}.json"
    if cp.exists():
        return read_json(cp)["result"]
    if loaded is None:
        from .models import load_model

        model, tok = load_model(model_path, device="cpu")
    else:
        model, tok = loaded()
    t = time.time()
    if log:
        log(f"measuring {Path(model_path).name} @ {deployment}")
    m = deploy(model, tok, deployment, calib_texts)[0]
    r = measure(m, tok, sets, scoring, batch_size=batch_size, fmt=fmt.bind(tok), **measure_kw)
    write_json(cp, {"model": str(model_path), "deployment": deployment, "scoring": scoring.to_json(),
                    "wall_s": round(time.time() - t, 2), "result": r})
    return r
