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

from .io import amnesiac_home, content_key, hash_obj, read_json, versions, write_json
from .metrics.recovery import MARGIN
from .runs import cached_measure, cached_unlearn, reference_dtype

from .scenarios import CALIBRATED, PRECISIONS, RELEASE_GRID, scenario_models  # noqa: F401  (re-exported)

METHODS = ["ga_gdr", "ga_klr", "npo_gdr", "npo_klr"]


@dataclass
class DemoConfig:
    size: str = "xs"  # tiny model preset: xs | s | m
    seed: int = 0  # data, init, training order, unlearning batches, bootstrap
    methods: list[str] = field(default_factory=lambda: list(METHODS))  # unlearning methods (amnesiac ls unlearn_methods)
    sure: bool = True  # also the SURE variants
    # The paper's small-update regime is lr 1e-5 on a 7B model: "the smallest update that unlearns".
    # The demo climbs this ladder and keeps the first lr whose run stops early (forget recall ≤
    # early_stop × target's) within max_steps; unlearn.json records it. Measured on the xs default
    # (GA_GDR, 200 steps): lr 1e-5 left forget recall at 0.80 and 3e-5 at 0.30, so the ladder starts
    # at 1e-4 (mean |Δw| there: 0.055 of a 4-bit g64 step, the paper's regime). `amnesiac sweep`-style
    # runs can start lower with DemoConfig(lrs=...).
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)  # lr ladder: the first that stops early is kept
    sure_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)  # SURE: ~10× larger lr, only salient rows move
    sure_percentile: float = 90.0  # SURE: only rows at or above this saliency percentile train
    # quantization-aware variant (docs/science.md §2b): the same method and lr ladder, trained through the
    # release grid (rtn4_g64 = RELEASE_GRID), early stop on the quantized model's forget recall
    robust: bool = True  # also the quantization-aware *_ROBUST variants
    robust_to: str = "rtn4_g64"  # the format the *_ROBUST variants train through (the release grid)
    # unlearning precisions (docs/science.md §1c): float32 is today's recipe; bfloat16 unlearns as the seed paper's
    # code does (bf16 weights and AdamW states, no fp32 master, constant lr), bf16-mixed keeps fp32 master weights.
    # Each extra precision adds a row per plain method (METHOD_BF16 / METHOD_BF16MIX) in every scenario.
    unlearn_precisions: tuple[str, ...] = ("float32",)
    max_steps: int = 200  # optimizer steps per unlearning run at most
    early_stop: float = 0.25  # stop once monitor forget recall ≤ 25 % of the target's
    batch_size: int = 8  # unlearning batch size
    scenarios: tuple[str, ...] = ("trained", "released-quantized")  # scenarios.py: trained | released-quantized
    max_retain: int = 300  # retain items evaluated
    n_boot: int = 10000  # p ≥ 1/(n_boot+1): with ~50 deployments judged, Holm needs p well below 0.025/50
    calibrated: bool = False  # also the GPTQ / AWQ deployments (4 and 8 bit, group 128), calibrated on the retain set (off until the README table is re-measured with them)
    smollm2: bool = False  # append the SmolLM2 rows (`amnesiac demo --smollm2`: the CLI composes the two experiments)
    template: str | None = None  # QA prompt template ({question}) the tiny models are trained, unlearned and measured with (default 'Question: {question}\nAnswer:'; their tokenizers have no chat template)

    def prompt_format(self):
        from .data.prompt import PromptFormat

        return PromptFormat.of(self.template)

    def template_kw(self) -> dict:
        """tiny.prepare / unlearn keyword for a non-default template (the default adds nothing: same cache keys)."""
        f = self.prompt_format()
        return {} if f.is_default else {"template": f.template}

    def __post_init__(self) -> None:
        """Every option checked before the (long) preparation starts."""
        from .attacks.quant.spec import is_quantizer
        from .errors import UserError, check_number
        from .models.tiny import SIZES
        from .scenarios import SCENARIOS
        from .unlearn.config import UnlearnConfig

        if self.size not in SIZES:
            raise UserError(f"unknown size {self.size!r}; available: {', '.join(SIZES)}")
        self.prompt_format()  # a template without {question} or with another field
        if not self.methods:
            raise UserError("no unlearning method given", "e.g. --methods npo_klr,ga_gdr")
        for m in self.methods:
            UnlearnConfig(method=m)  # an unknown method fails here, naming the available ones
        if "float32" not in self.unlearn_precisions:
            raise UserError(f"unlearn_precisions {list(self.unlearn_precisions)} lacks float32",
                            "the other precisions are rows next to the float32 ones, e.g. float32,bfloat16")
        for p in self.unlearn_precisions:
            UnlearnConfig(precision=p)  # names the available precisions
        for name, lrs in (("lrs", self.lrs), ("sure_lrs", self.sure_lrs)):
            if not lrs:
                raise UserError(f"{name}: give at least one learning rate")
            for lr in lrs:
                check_number(name, lr, gt=0)
        check_number("sure_percentile", self.sure_percentile, gt=0, lt=100)
        check_number("early_stop", self.early_stop, gt=0, le=1)
        for name in ("max_steps", "batch_size", "max_retain", "n_boot"):
            check_number(name, getattr(self, name), ge=1, integer=True)
        if not is_quantizer(self.robust_to):
            raise UserError(f"unknown quantizer {self.robust_to!r} for robust_to", "see `amnesiac ls attacks`")
        bad = [x for x in self.scenarios if x not in SCENARIOS]
        if bad or not self.scenarios:
            raise UserError(f"unknown scenario(s) {bad}; available: {', '.join(SCENARIOS)}")


def _quantizer(name: str):
    from .attacks.quant.spec import quantizer_from_name

    return quantizer_from_name(name)


PRECISION_TAG = {"float32": "", "bfloat16": "_bf16", "bf16-mixed": "_bf16mix"}  # row-name suffix per precision


def run_unlearning(target: Path, method: str, sure: bool, cfg: DemoConfig, forget, retain, log=print,
                   robust: bool = False, precision: str = "float32") -> Path:
    """Unlearn at the smallest lr of the ladder that reaches the early-stop threshold (each run cached by content,
    runs.cached_unlearn). robust: quantization-aware through cfg.robust_to (the monitor sees the quantized model).
    precision: unlearn.UnlearnConfig.precision (float32 adds no option, so its cache keys are unchanged)."""
    out = None
    tag = method + ("_sure" if sure else "") + ("_robust" if robust else "") + PRECISION_TAG[precision]
    for lr in (cfg.sure_lrs if sure else cfg.lrs):
        opts = dict(method=method, lr=lr, max_steps=cfg.max_steps, schedule="constant",
                    batch_size=cfg.batch_size, seed=cfg.seed, early_stop_recall=cfg.early_stop, early_stop_relative=True,
                    early_stop_every=4, monitor_size=len(forget))
        if sure:
            opts["sure_percentile"] = cfg.sure_percentile
        if robust:
            opts["robust_to"] = cfg.robust_to
        if precision != "float32":
            opts["precision"] = precision
        opts.update(cfg.template_kw())
        out = cached_unlearn(target, forget, retain, opts, target.parent / "unlearned", tag=tag,
                             log=lambda m: log(f"[demo] {m}"))
        if read_json(out / "unlearn.json").get("stopped_early"):
            break
    return out


def deployments(cfg: DemoConfig) -> dict[str, str]:
    """Column label -> quantizer name: the per-weight PRECISIONS, then (cfg.calibrated) GPTQ / AWQ."""
    return {**PRECISIONS, **(CALIBRATED if cfg.calibrated else {})}


def eval_row(model_dir: Path, forget, retain, cfg: DemoConfig, cache_dir: Path, target_dir: Path | None = None,
             scoring=None, calib_texts: list[str] | None = None, precision: str = "float32") -> dict:
    """measure() at every deployment (runs.cached_measure: keyed by content; calibrated ones on `calib_texts`)
    without the truth ratio, which no demo table reads (it would be ~6/7 of the scoring time)
    + collapse diagnostics at 4 bits vs the scenario's target (cached by both models' content); a model unlearned
    in pure bf16 is compared with the target cast to bf16, where its run started (runs.reference_dtype)."""
    from .attacks.quant.spec import is_calibrated
    from .measure import scoring_for
    from .models import load_model

    scoring = scoring or scoring_for(forget)
    held: list = []

    def loaded():  # one load per row, shared by its precisions
        if not held:
            held.append(load_model(model_dir, device="cpu"))
        return held[0]

    sets = {"forget": forget, "retain": retain}
    row: dict = {"precisions": {p: cached_measure(model_dir, name, sets, scoring, cache_dir, loaded=loaded,
                                                  fmt=cfg.prompt_format(), truth_ratio=False,
                                                  calib_texts=calib_texts if name != "fp" and is_calibrated(name) else None)
                                for p, name in deployments(cfg).items()}}
    if target_dir is not None:
        tdt = reference_dtype(precision)
        key = [content_key(model_dir), content_key(target_dir), PRECISIONS["4bit"]] + ([str(tdt)] if tdt else [])
        cp = cache_dir / f"collapse-{hash_obj(key)}.json"
        if cp.exists():
            row.update(read_json(cp))
        else:
            from .attacks.collapse import collapse_diagnostics

            t, _ = load_model(target_dir, device="cpu")
            d = collapse_diagnostics(t, loaded()[0], _quantizer(PRECISIONS["4bit"]), target_dtype=tdt)
            c = {"collapse": {k: d["overall"][k] for k in ("collapse_rate", "drift_kept", "mean_abs_dw_over_step",
                                                           "grid_offset_mean") if k in d["overall"]},
                 "collapse_per_layer": {k: v["collapse_rate"] for k, v in d["layers"].items()}}
            write_json(cp, c)
            row.update(c)
    return row


def run_demo(cfg: DemoConfig | None = None, out: str | Path = "demo", log=print, extend=None) -> dict:
    """The demo into `out` (an earlier demo output there is reused; any other non-empty folder is refused).

    extend(summary, out, log): adds another experiment's rows to the summary before summary.json and the
    report are written (`demo --smollm2`: the caller composes; this module imports no other experiment)."""
    from .io import claim_output

    with claim_output(out, [], kind="demo", resume=True, inplace=True) as claim:
        claim.begin()
        return _run_demo(cfg, Path(out), log, extend)


def _run_demo(cfg: DemoConfig | None, out: Path, log, extend=None) -> dict:
    from .data import load_qa_jsonl
    from .data.sources import build_bios
    from .models import tiny

    cfg = cfg or DemoConfig()
    t0 = time.time()
    out = Path(out)
    paths = tiny.prepare(cfg.size, cfg.seed, log=log, **cfg.template_kw())
    t_prep = time.time() - t0
    tcfg = tiny.default_config(cfg.size, cfg.seed, **cfg.template_kw())
    data = build_bios(tcfg["bios"])
    forget = load_qa_jsonl(data / f"{tcfg['forget']}.jsonl")
    retain_all = load_qa_jsonl(data / f"retain{100 - int(tcfg['forget'][-2:])}.jsonl")
    rng = np.random.default_rng(cfg.seed)
    retain = [retain_all[i] for i in sorted(rng.choice(len(retain_all), min(cfg.max_retain, len(retain_all)), replace=False))]
    from .measure import scoring_for
    from .metrics.stats import bootstrap_ci

    from .attacks.quant.calib import calib_texts_from_items

    scoring = scoring_for(forget)
    calib = calib_texts_from_items(retain_all, cfg.prompt_format().bind(None)) if cfg.calibrated else None  # what a releaser has
    cache = amnesiac_home() / "cache" / "demo"
    rows, raw, times = [], {}, {}
    metric = scoring.metric
    for sc in cfg.scenarios:
        mods = scenario_models(paths, sc, log)
        entries = [("target", mods["target"], None, "float32"), ("retrained", mods["retrained"], None, "float32")]
        variants = ([(False, False, "float32")] + ([(True, False, "float32")] if cfg.sure else [])
                    + ([(False, True, "float32")] if cfg.robust else [])
                    + [(False, False, p) for p in cfg.unlearn_precisions if p != "float32"])
        for meth in cfg.methods:
            for sure, robust, prec in variants:
                s = time.time()
                u = run_unlearning(mods["target"], meth, sure, cfg, forget, retain_all, log, robust=robust,
                                   precision=prec)
                tag = ("_sure" if sure else "") + ("_robust" if robust else "") + PRECISION_TAG[prec]
                times[f"{sc}/{meth}{tag}"] = round(time.time() - s, 1)
                entries.append((meth.upper() + tag.upper(), u, mods["target"], prec))
        for name, mdir, tdir, prec in entries:
            r = eval_row(mdir, forget, retain, cfg, cache, tdir, scoring, calib, precision=prec)
            raw[(sc, name)] = r
            info = read_json(mdir / "unlearn.json") if (mdir / "unlearn.json").exists() else {}
            for p, k in r["precisions"].items():
                f = np.asarray(k["forget"][metric])
                rows.append({"scenario": sc, "method": name, "precision": p, "metric": metric,
                             "forget_recall": float(f.mean()), "forget_recall_ci": list(bootstrap_ci(f, seed=cfg.seed)),
                             "retain_recall": float(np.mean(k["retain"][metric])),
                             "forget_prob": float(np.mean(k["forget"]["prob"])),
                             "collapse_rate": r.get("collapse", {}).get("collapse_rate") if p == "4bit" else None,
                             "drift_kept": r.get("collapse", {}).get("drift_kept") if p == "4bit" else None,
                             "mean_abs_dw_over_4bit_step": r.get("collapse", {}).get("mean_abs_dw_over_step") if p == "4bit" else None,
                             "steps": info.get("steps"), "lr": info.get("config", {}).get("lr"),
                             "unlearn_precision": prec if tdir is not None else None,
                             "rounded_away": (info.get("rounded_away") or {}).get("mean"),
                             "stopped_early": info.get("stopped_early"), "model": str(mdir)})
    verdicts = demo_verdicts(rows, raw, cfg, metric, scoring.reason)
    summary = {"schema": "amnesiac.demo/1", "config": cfg.__dict__, "rows": rows, "verdicts": verdicts,
               "prepare_s": round(t_prep, 1), "unlearn_s": times, "wall_s": round(time.time() - t0, 1),
               "models": {k: str(v) for k, v in paths.items()}, "versions": versions(), "seed": cfg.seed,
               "release_grid": RELEASE_GRID, "precisions": deployments(cfg), "margin": MARGIN,
               "scoring": scoring.to_json(), "prompt_format": cfg.prompt_format().record(),
               "collapse_per_layer": {f"{sc}/{name}": r["collapse_per_layer"] for (sc, name), r in raw.items()
                                      if "collapse_per_layer" in r}}
    out.mkdir(parents=True, exist_ok=True)
    if extend is not None:
        extend(summary, out, log)
    write_json(out / "summary.json", summary)
    from .report.demo_report import write_demo_report

    write_demo_report(summary, out)
    return summary


def demo_verdicts(rows: list[dict], raw: dict, cfg: DemoConfig, metric: str = "exact_match", reason: str = "") -> dict:
    """Per scenario, the one verdict (metrics.recovery.judge, docs/science.md §7) over every unlearned model
    × deployment: knowledge comes back when a deployment lifts the model above both the retrained model under
    the same deployment and the model's own reference level, Holm-corrected over all of them. The reference
    level is full precision — except for a quantization-aware (`_ROBUST`) model, whose shipped artefact is the
    format it was trained through (cfg.robust_to): that deployment is its reference and is not itself judged."""
    from .metrics.recovery import Judged, judge

    robust_label = next((lab for lab, name in PRECISIONS.items() if name == cfg.robust_to), None)
    out = {}
    for sc in cfg.scenarios:
        if (sc, "target") not in raw or (sc, "retrained") not in raw:
            continue
        t_fp = raw[(sc, "target")]["precisions"]["fp"]["forget"][metric]
        judged = []
        for (s, name), r in raw.items():
            if s != sc or name in ("target", "retrained"):
                continue
            ref = robust_label if name.endswith("_ROBUST") and robust_label else "fp"
            for p, k in r["precisions"].items():
                if p == ref:
                    continue
                judged.append(Judged(f"{name}@{p}", k["forget"][metric], t_fp,
                                     floor=raw[(sc, "retrained")]["precisions"][p]["forget"][metric],
                                     u_fp=r["precisions"][ref]["forget"][metric],
                                     extra={"method": name, "precision": p, "reference": ref}))
        if not judged:
            continue
        v = judge(judged, metric, reason, retrained_fp=raw[(sc, "retrained")]["precisions"]["fp"]["forget"][metric],
                  margin=MARGIN, n_boot=cfg.n_boot, seed=cfg.seed)
        v["reason"] = f"{sc}: {v['reason']}"
        if v["verdict"] == "FAIL":
            w = next(r for r in v["rows"] if r["attack"] == v["worst_attack"])
            v.update(method=w["method"], precision=w["precision"])
        out[sc] = v
    return out
