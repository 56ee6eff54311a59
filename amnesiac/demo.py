"""`amnesiac demo`: the quantization-recovery experiment on the embedded default, end to end.

prepare tiny base/target/retrained → two scenarios (docs/science.md §1b):
  trained             the target as fine-tuned;
  released-quantized  the target's Linear weights rounded onto a 4-bit grid (symmetric, group 64), as if
                      it came from a quantized release; unlearned on those weights and re-quantized.
→ unlearn with GA_GDR, GA_KLR, NPO_GDR, NPO_KLR (small-update recipe: constant lr, early stop just past
  forget recall ≤ 25 % of the target's) and their SURE variants (large lr, top-10 % salient rows)
→ forget/retain recall at full precision, 8, 4 and 3 bits (+ a foreign 4-bit grid), collapse rate and drift
  kept at 4 bits, bootstrap CIs, a verdict per scenario → demo/summary.json, report.md/html, a table.
Everything is cached (models by config hash, unlearned models by recipe hash, evaluations per row).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .audit import MARGIN, boot_idx, ci_of, knowledge_at
from .io import amnesiac_home, hash_obj, read_json, versions, write_json

RELEASE_GRID = dict(backend="rtn", bits=4, group=64, scheme="sym")
PRECISIONS = {  # column name -> quantizer config (None = full precision)
    "fp": None,
    "8bit": dict(backend="rtn", bits=8, group=None, scheme="sym"),
    "4bit": dict(RELEASE_GRID),
    "3bit": dict(backend="rtn", bits=3, group=64, scheme="sym"),
    "4bit_foreign": dict(backend="rtn", bits=4, group=128, scheme="asym"),
}
METHODS = ["ga_gdr", "ga_klr", "npo_gdr", "npo_klr"]


@dataclass
class DemoConfig:
    size: str = "xs"
    seed: int = 0
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    sure: bool = True
    # The paper's small-update regime is lr 1e-5 on a 7B model: "the smallest update that unlearns".
    # The demo climbs this ladder and keeps the first lr whose run stops early (forget recall ≤
    # early_stop × target's) within max_steps; unlearn.json records it. Measured on the xs default
    # (GA_GDR, 200 steps): lr 1e-5 left forget recall at 0.80 and 3e-5 at 0.30, so the ladder starts
    # at 1e-4 (mean |Δw| there: 0.055 of a 4-bit g64 step, the paper's regime). `amnesiac sweep`-style
    # runs can start lower with DemoConfig(lrs=...).
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    sure_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)  # SURE: ~10× larger lr, only salient rows move
    sure_percentile: float = 90.0
    # quantization-aware variant (docs/science.md §2b): the same method and lr ladder, trained through the
    # release grid (rtn4_g64 = RELEASE_GRID), early stop on the quantized model's forget recall
    robust: bool = True
    robust_to: str = "rtn4_g64"
    max_steps: int = 200
    early_stop: float = 0.25  # stop once monitor forget recall ≤ 25 % of the target's
    batch_size: int = 8
    scenarios: tuple[str, ...] = ("trained", "released-quantized")
    max_retain: int = 300
    n_boot: int = 1000
    smollm2: bool = False  # append the SmolLM2 rows (amnesiac.reproduce.smollm2_demo), off by default


def _quantizer(cfg: dict):
    from .attacks.quant.backends import get_quantizer

    return get_quantizer(**cfg)


def scenario_models(paths: dict[str, Path], scenario: str, log=print) -> dict[str, Path]:
    """target and retrained for a scenario; released-quantized ones are written once next to the originals."""
    if scenario == "trained":
        return {"target": paths["target"], "retrained": paths["retrained"]}
    if scenario != "released-quantized":
        raise ValueError(f"unknown scenario {scenario!r}; available: trained, released-quantized")
    from .attacks.quant.apply import released_quantized
    from .models import load_model, save_model

    out = {}
    for name in ("target", "retrained"):
        dst = paths[name].parent / f"{name}-released-q4g64"
        if not (dst / "released.json").exists():
            log(f"[demo] rounding {name} onto the 4-bit g64 grid (released-quantized scenario)")
            m, tok = load_model(paths[name], device="cpu")
            save_model(released_quantized(m, _quantizer(RELEASE_GRID)), tok, dst)
            write_json(dst / "released.json", {"source": str(paths[name]), "grid": RELEASE_GRID})
        out[name] = dst
    return out


def run_unlearning(target: Path, method: str, sure: bool, cfg: DemoConfig, forget, retain, log=print,
                   robust: bool = False) -> Path:
    """Unlearn at the smallest lr of the ladder that reaches the early-stop threshold (cached per lr).
    robust: quantization-aware through cfg.robust_to (plain lr ladder; the monitor sees the quantized model)."""
    from .unlearn import unlearn

    out = None
    tag = ("_sure" if sure else "") + ("_robust" if robust else "")
    for lr in (cfg.sure_lrs if sure else cfg.lrs):
        opts = dict(method=method, lr=lr, max_steps=cfg.max_steps, schedule="constant",
                    batch_size=cfg.batch_size, seed=cfg.seed, early_stop_recall=cfg.early_stop, early_stop_relative=True,
                    early_stop_every=4, monitor_size=len(forget), progress=False)
        if sure:
            opts["sure_percentile"] = cfg.sure_percentile
        if robust:
            opts["robust_to"] = cfg.robust_to
        out = target.parent / "unlearned" / f"{target.name}-{method}{tag}-{hash_obj(opts, 8)}"
        if not (out / "unlearn.json").exists():
            log(f"[demo] unlearning {target.name} with {method}{tag.replace('_', ' + ').upper()} at lr {lr:g}")
            unlearn(str(target), forget, retain, out=out, overwrite=True, **opts)
        if read_json(out / "unlearn.json").get("stopped_early"):
            break
    return out


def eval_row(model_dir: Path, forget, retain, cfg: DemoConfig, cache_dir: Path, target_dir: Path | None = None) -> dict:
    """Recall at every precision (+ collapse diagnostics at 4 bits vs the scenario's target), cached."""
    from .models import load_model

    key = hash_obj({"model": str(model_dir), "mtime": (model_dir / "model.safetensors").stat().st_mtime,
                    "target": str(target_dir), "n_f": len(forget), "n_r": len(retain), "p": PRECISIONS})
    cp = cache_dir / f"{key}.json"
    if cp.exists():
        return read_json(cp)
    model, tok = load_model(model_dir, device="cpu")
    row: dict = {"precisions": {}}
    for p, qc in PRECISIONS.items():
        row["precisions"][p] = knowledge_at(model, tok, forget, retain, qc)
    if target_dir is not None:
        from .attacks.collapse import collapse_diagnostics

        t, _ = load_model(target_dir, device="cpu")
        d = collapse_diagnostics(t, model, _quantizer(PRECISIONS["4bit"]))
        row["collapse"] = {k: d["overall"][k] for k in ("collapse_rate", "drift_kept", "mean_abs_dw_over_step",
                                                         "grid_offset_mean") if k in d["overall"]}
        row["collapse_per_layer"] = {k: v["collapse_rate"] for k, v in d["layers"].items()}
    write_json(cp, row)
    return row


def run_demo(cfg: DemoConfig | None = None, out: str | Path = "demo", log=print) -> dict:
    from .data import load_qa_jsonl
    from .data.sources import build_bios
    from .models import tiny

    cfg = cfg or DemoConfig()
    t0 = time.time()
    out = Path(out)
    paths = tiny.prepare(cfg.size, cfg.seed, log=log)
    t_prep = time.time() - t0
    tcfg = tiny.default_config(cfg.size, cfg.seed)
    data = build_bios(tcfg["bios"])
    forget = load_qa_jsonl(data / f"{tcfg['forget']}.jsonl")
    retain_all = load_qa_jsonl(data / f"retain{100 - int(tcfg['forget'][-2:])}.jsonl")
    rng = np.random.default_rng(cfg.seed)
    retain = [retain_all[i] for i in sorted(rng.choice(len(retain_all), min(cfg.max_retain, len(retain_all)), replace=False))]
    cache = amnesiac_home() / "cache" / "demo"
    rows, raw, times = [], {}, {}
    for sc in cfg.scenarios:
        mods = scenario_models(paths, sc, log)
        entries = [("target", mods["target"], None), ("retrained", mods["retrained"], None)]
        variants = [(False, False)] + ([(True, False)] if cfg.sure else []) + ([(False, True)] if cfg.robust else [])
        for meth in cfg.methods:
            for sure, robust in variants:
                s = time.time()
                u = run_unlearning(mods["target"], meth, sure, cfg, forget, retain_all, log, robust=robust)
                tag = ("_sure" if sure else "") + ("_robust" if robust else "")
                times[f"{sc}/{meth}{tag}"] = round(time.time() - s, 1)
                entries.append((meth.upper() + tag.upper(), u, mods["target"]))
        for name, mdir, tdir in entries:
            r = eval_row(mdir, forget, retain, cfg, cache, tdir)
            raw[(sc, name)] = r
            info = read_json(mdir / "unlearn.json") if (mdir / "unlearn.json").exists() else {}
            for p, k in r["precisions"].items():
                f = np.asarray(k["forget_em"])
                idx = boot_idx(len(f), cfg.n_boot, cfg.seed)
                rows.append({"scenario": sc, "method": name, "precision": p,
                             "forget_recall": float(f.mean()), "forget_recall_ci": ci_of(np.mean, [f], idx),
                             "retain_recall": float(np.mean(k["retain_em"])),
                             "forget_prob": float(np.mean(k["forget_prob"])),
                             "collapse_rate": r.get("collapse", {}).get("collapse_rate") if p == "4bit" else None,
                             "drift_kept": r.get("collapse", {}).get("drift_kept") if p == "4bit" else None,
                             "mean_abs_dw_over_4bit_step": r.get("collapse", {}).get("mean_abs_dw_over_step") if p == "4bit" else None,
                             "steps": info.get("steps"), "lr": info.get("config", {}).get("lr"),
                             "stopped_early": info.get("stopped_early"), "model": str(mdir)})
    verdicts = demo_verdicts(rows, raw, cfg)
    summary = {"schema": "amnesiac.demo/1", "config": cfg.__dict__, "rows": rows, "verdicts": verdicts,
               "prepare_s": round(t_prep, 1), "unlearn_s": times, "wall_s": round(time.time() - t0, 1),
               "models": {k: str(v) for k, v in paths.items()}, "versions": versions(), "seed": cfg.seed,
               "release_grid": RELEASE_GRID, "precisions": PRECISIONS, "margin": MARGIN}
    if cfg.smollm2:  # SmolLM2-135M, a real Q4_1 release: rows from `amnesiac reproduce smollm2` (cached)
        from .reproduce.smollm2_demo import add_to_demo

        add_to_demo(summary, out, log)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    from .report.demo_report import write_demo_report

    write_demo_report(summary, raw, out)
    return summary


def demo_verdicts(rows: list[dict], raw: dict, cfg: DemoConfig) -> dict:
    """Per scenario: does any unlearned model's forget recall under some precision exceed the retrained
    model's under the same precision (excess ≥ MARGIN, paired-bootstrap 95 % CI above 0)?"""
    out = {}
    for sc in cfg.scenarios:
        worst = None
        for (s, name), r in raw.items():
            if s != sc or name in ("target", "retrained"):
                continue
            for p, k in r["precisions"].items():
                u = np.asarray(k["forget_em"])
                ref = np.asarray(raw[(sc, "retrained")]["precisions"][p]["forget_em"])
                fp = np.asarray(r["precisions"]["fp"]["forget_em"])
                idx = boot_idx(len(u), cfg.n_boot, cfg.seed)
                ex = float(u.mean() - ref.mean())
                lo, hi = ci_of(lambda x, y: x.mean() - y.mean(), [u, ref], idx)
                gain = float(u.mean() - fp.mean())
                if ex >= MARGIN and lo > 0 and p != "fp" and (worst is None or gain > worst["gain_over_fp"]):
                    worst = {"method": name, "precision": p, "forget_recall": float(u.mean()),
                             "retrained_recall": float(ref.mean()), "excess_ci": [lo, hi], "gain_over_fp": gain}
        if worst and worst["gain_over_fp"] >= MARGIN:
            out[sc] = {"verdict": "FAIL", **worst,
                       "reason": f"{sc}: {worst['method']} forget recall {worst['forget_recall']:.2f} at {worst['precision']} "
                                 f"(vs {worst['retrained_recall']:.2f} retrained; {worst['gain_over_fp']:+.2f} over its own "
                                 "full precision): the knowledge comes back"}
        else:
            out[sc] = {"verdict": "PASS", "reason": f"{sc}: no precision brings forget recall back above the retrained "
                                                    f"model's by ≥ {MARGIN} beyond the unlearned model's own full-precision level"}
    return out
