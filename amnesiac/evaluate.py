"""The evaluator: every metric of docs/science.md §5 on one model × one data bundle, sharing forward passes.

Flow: collect every (prompt, continuation) pair the metrics need → score each unique pair once
(metrics.runner.Runner: batched, length-bucketed, cached on disk per model hash, resumable) → generate
each unique prompt once → run every registered metric that has an eval hook (metrics.base.evaluates) on
those numbers (EvalContext). Adding a metric is one file (the metric, registered, with its hook) and its test;
this module names no metric. `evaluate()` is the one entry point the CLI and the audit call.

Metric names: "<set>/<metric>" for per-set numbers (set ∈ forget, retain, holdout, real_authors,
world_facts), plus forget_quality, model_utility, mia_<attack>, privleak, verbmem, knowmem_forget/_retain.
higher_is_better states the unlearning goal: knowledge on F should go *down* (False), elsewhere up (True).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .data.prompt import PromptOptions
from .data.schema import QAItem, VerbItem
from .metrics import mia, muse
from .metrics.base import MetricResult, mean
from .metrics.runner import Runner
from .metrics.stats import bootstrap_ci

QA_SETS = ("forget", "retain", "holdout", "real_authors", "world_facts")
NORMALIZED_PROB_SETS = ("real_authors", "world_facts")  # §5: options-normalised probability


@dataclass
class EvalData:
    """Everything one evaluation may use; any part may be missing (its metrics are then skipped)."""
    forget: list[QAItem] | None = None
    retain: list[QAItem] | None = None
    holdout: list[QAItem] | None = None
    real_authors: list[QAItem] | None = None
    world_facts: list[QAItem] | None = None
    forget_text: list[str] | None = None  # raw text: MIA family and PrivLeak (members)
    holdout_text: list[str] | None = None  # non-members
    verbmem: list[VerbItem] | None = None
    knowmem_forget: list[QAItem] | None = None
    knowmem_forget_icl: list[QAItem] = field(default_factory=list)
    knowmem_retain: list[QAItem] | None = None
    knowmem_retain_icl: list[QAItem] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # part → spec it was loaded from (for meta)
    privleak_ref: tuple[float, str] | None = None  # a known AUC(θ_r) for this data (MUSE news/books) and its source

    def parts(self) -> dict[str, list]:
        skip = {"sources", "knowmem_forget_icl", "knowmem_retain_icl", "privleak_ref"}
        return {k: v for k, v in self.__dict__.items() if k not in skip and v}

    def hashes(self) -> dict[str, str]:
        from .io import hash_obj

        def js(x):
            return x if isinstance(x, str) else (x.to_json() if hasattr(x, "to_json") else x.__dict__)
        return {k: hash_obj([js(x) for x in v]) for k, v in self.parts().items()}


@dataclass
class EvalConfig(PromptOptions):
    """Every eval option; the prompt format (PromptOptions) builds every QA prompt and answer continuation."""
    batch_size: int = 32  # generation / scoring batch
    qa_max_new_tokens: int | None = None  # None: longest gold answer in tokens + 16 (cap 200); stops at "\n"
    mink_k: float = mia.MINK_K  # Min-K% / Min-K%++ MIA: share of lowest token log-probs averaged
    privleak_k: float = muse.PRIVLEAK_K  # PrivLeak's Min-k %
    privleak_ref_auc: float | None = None  # known AUC(θ_r) without a retrained model (MUSE news/books: published)
    verbmem_max_new_tokens: int = muse.VERBMEM_NEW_TOKENS  # VerbMem continuation length (MUSE: 128)
    knowmem_max_new_tokens: int = muse.KNOWMEM_NEW_TOKENS  # KnowMem answer length (MUSE: 32)
    max_length: int | None = None  # truncate scored sequences to this many tokens (from the left)
    n_bootstrap: int = 1000  # bootstrap resamples of every CI
    seed: int = 0  # bootstrap resampling (decoding is greedy)
    cache: bool = True  # per-example cache under $AMNESIAC_HOME/cache (resumable)
    progress: bool = True  # progress bars

    def __post_init__(self) -> None:
        from .errors import check_number

        self.prompt_format()  # a template without {question} or with an unknown field, --system-prompt alone
        check_number("--batch-size", self.batch_size, ge=1, integer=True)
        check_number("--qa-max-new-tokens", self.qa_max_new_tokens, ge=1, integer=True, optional=True)
        check_number("--max-length", self.max_length, ge=2, integer=True, optional=True)
        check_number("--privleak-ref-auc", self.privleak_ref_auc, ge=0, le=1, optional=True)
        check_number("--mink-k", self.mink_k, gt=0, le=1)
        check_number("--privleak-k", self.privleak_k, gt=0, le=1)
        check_number("--verbmem-max-new-tokens", self.verbmem_max_new_tokens, ge=1, integer=True)
        check_number("--knowmem-max-new-tokens", self.knowmem_max_new_tokens, ge=1, integer=True)
        check_number("--n-bootstrap", self.n_bootstrap, ge=1, integer=True)


@dataclass
class RetrainedRef:
    """What the unlearned model is compared with: θ_r's per-item truth ratios on F (forget quality) and its
    PrivLeak AUC. Computed once per retrained model (cached by model hash) or read from JSON."""
    truth_ratios: list[float] | None = None
    privleak_auc: float | None = None
    source: str = ""

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _ci(values, cfg: EvalConfig) -> tuple[float, float]:
    return bootstrap_ci(values, n_resamples=cfg.n_bootstrap, seed=cfg.seed)


def _mr(name, per, hib, cfg, meta=None, value=None) -> MetricResult:
    v = mean(per) if value is None else value
    return MetricResult(name, v, list(per), hib, {"ci95": _ci(per, cfg), "n": len(per), **(meta or {})})


def _qa_scores(run: Runner, items: list[QAItem], cfg: EvalConfig, name: str) -> dict[str, Any]:
    """A QA set through the one measuring layer (measure.measure, sharing this model's Runner): greedy answers,
    exact match, ROUGE-L, probability, truth ratios, and the raw answer scores (Min-K %++ statistics and
    argmax for memorisation and MIA); plus the options of real authors / world facts (normalised probability)."""
    from .measure import Scoring, measure

    b = cfg.prompt_format().bind(run.tok)
    m = measure(run.model, run.tok, {name: items}, Scoring("exact_match", "the eval verb reports every metric"),
                fmt=b, runner=run, raw=True, max_new_tokens=cfg.qa_max_new_tokens,
                with_outputs=(name,))[name]
    out: dict[str, Any] = {"prompts": m["_prompts"], "ans": m["_answers"], "gen": m["outputs"], "m": m}
    if "_R" in m:
        out["R"] = np.asarray(m["_R"])
    if name in NORMALIZED_PROB_SETS:
        prompts = m["_prompts"]
        wrong = [it.perturbed_answers or [o for o in it.options if o != it.answer] for it in items]
        if all(wrong):
            flat = run.score([p for p, w in zip(prompts, wrong) for _ in w], [b.item_answer(it, o) for it, w in zip(items, wrong) for o in w],
                             desc=f"{name}: options")
            out["wrong_mean"], i = [], 0
            for w in wrong:
                out["wrong_mean"].append([r["lp"].mean() for r in flat[i: i + len(w)]])
                i += len(w)
    return out


def _text_side(run: Runner, texts: list[str], desc: str) -> dict:
    r = run.score([""] * len(texts), texts, True, False, desc)
    return {"lp": [x["lp"] for x in r], "mu": [x["mu"] for x in r], "sigma": [x["sd"] for x in r], "text": list(texts)}


def _membership_inputs(run: Runner, data: EvalData, qa: dict, ref_run: Runner | None, cfg: EvalConfig):
    """Members = F, non-members = holdout: raw texts when both exist, else QA answers given their question."""
    if data.forget_text and data.holdout_text:
        mem, non = _text_side(run, data.forget_text, "forget text"), _text_side(run, data.holdout_text, "holdout text")
        on = "text"
        if ref_run is not None:
            mem["lp_ref"] = [x["lp"] for x in ref_run.score([""] * len(mem["text"]), mem["text"], desc="ref: forget text")]
            non["lp_ref"] = [x["lp"] for x in ref_run.score([""] * len(non["text"]), non["text"], desc="ref: holdout text")]
    elif "forget" in qa and "holdout" in qa:
        def side(k):
            items, s = qa[k]
            return {"lp": [r["lp"] for r in s["ans"]], "mu": [r["mu"] for r in s["ans"]],
                    "sigma": [r["sd"] for r in s["ans"]], "text": [it.answer for it in items],
                    "prompts": s["prompts"]}
        mem, non, on = side("forget"), side("holdout"), "qa_answers"
        if ref_run is not None:
            b = cfg.prompt_format().bind(ref_run.tok)
            for d, k in ((mem, "forget"), (non, "holdout")):
                d["lp_ref"] = [x["lp"] for x in ref_run.score(d["prompts"], [b.item_answer(it, it.answer) for it in qa[k][0]],
                                                              desc=f"ref: {k}")]
    else:
        return None
    return mem, non, on


def retrained_reference(model, tok, data: EvalData, config: EvalConfig | None = None) -> RetrainedRef:
    """θ_r's numbers the unlearned model is compared with (forget quality, PrivLeak); cached like any score."""
    cfg = config or EvalConfig()
    run = Runner(model, tok, cfg.batch_size, cfg.cache, cfg.progress, max_length=cfg.max_length)
    ref = RetrainedRef(source=f"model {run.model_hash}")
    if data.forget and all(it.perturbed_answers for it in data.forget):
        s = _qa_scores(run, data.forget, cfg, "forget")
        ref.truth_ratios = s["R"].tolist()
    ref.privleak_auc = _privleak_auc(run, data, cfg)
    return ref


def _privleak_auc(run: Runner, data: EvalData, cfg: EvalConfig) -> float | None:
    """§5 PrivLeak AUC on raw texts (forget vs holdout) with Min-k, k = cfg.privleak_k; QA answers otherwise."""
    if data.forget_text and data.holdout_text:
        f = run.score([""] * len(data.forget_text), data.forget_text, True, False, "forget text")
        h = run.score([""] * len(data.holdout_text), data.holdout_text, True, False, "holdout text")
    elif data.forget and data.holdout:
        b = cfg.prompt_format().bind(run.tok)

        def pairs(items):
            return ([b.item_prompt(it) for it in items], [b.item_answer(it, it.answer) for it in items])
        f = run.score(*pairs(data.forget), True, True, "forget: answers")
        h = run.score(*pairs(data.holdout), True, True, "holdout: answers")
    else:
        return None
    return muse.privleak_auc([muse.min_k_score(r["lp"], cfg.privleak_k) for r in f],
                             [muse.min_k_score(r["lp"], cfg.privleak_k) for r in h])


@dataclass
class EvalContext:
    """The shared inputs every registered metric's eval hook reads (metrics.base.evaluates): one Runner per model
    (each unique text scored / generated once), the QA sets' answers and scores, the metrics computed so far."""
    run: Runner
    data: EvalData
    cfg: EvalConfig
    retrained: RetrainedRef | None = None
    ref_run: Runner | None = None
    qa: dict[str, tuple[list[QAItem], dict]] = field(default_factory=dict)
    results: dict[str, MetricResult] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict)

    def ci(self, values) -> tuple[float, float]:
        return _ci(values, self.cfg)

    def result(self, name, per, higher_is_better, meta=None, value=None) -> MetricResult:
        return _mr(name, per, higher_is_better, self.cfg, meta, value)

    def membership(self):
        """(members, non-members, "text" | "qa_answers") for the MIA family, or None without both sides."""
        if "membership" not in self._cache:
            self._cache["membership"] = _membership_inputs(self.run, self.data, self.qa, self.ref_run, self.cfg)
        return self._cache["membership"]

    def privleak_auc(self) -> float | None:
        if "privleak_auc" not in self._cache:
            self._cache["privleak_auc"] = _privleak_auc(self.run, self.data, self.cfg)
        return self._cache["privleak_auc"]


def evaluated_metrics() -> list:
    """The registered metrics that take part in `amnesiac eval` (those with an eval hook), in hook order."""
    from .registry import registry

    hooked = [m for m in registry("metrics").values() if callable(getattr(m, "evaluate", None))]
    return sorted(hooked, key=lambda m: getattr(m.evaluate, "order", 50))


def evaluate(model, tok, data: EvalData, config: EvalConfig | None = None, retrained: RetrainedRef | None = None,
             reference: tuple | None = None, model_hash: str | None = None) -> dict[str, MetricResult]:
    """Every registered metric that applies to `data` on `model` (evaluated_metrics). `retrained`: θ_r's
    reference numbers (see retrained_reference); `reference`: (ref_model, ref_tok) for the reference-model MIA.
    Returns name → MetricResult: per-set results grouped by set (QA_SETS order), then the rest, in hook order."""
    cfg = config or EvalConfig()
    run = Runner(model, tok, cfg.batch_size, cfg.cache, cfg.progress, max_length=cfg.max_length, model_hash=model_hash)
    ref_run = Runner(reference[0], reference[1], cfg.batch_size, cfg.cache, cfg.progress,
                     max_length=cfg.max_length) if reference else None
    ctx = EvalContext(run, data, cfg, retrained, ref_run)
    for name in QA_SETS:
        items = getattr(data, name)
        if items:
            ctx.qa[name] = (items, _qa_scores(run, items, cfg, name))
    for metric in evaluated_metrics():
        for m in metric.evaluate(ctx) or ():
            ctx.results[m.name] = m

    def place(kv):
        i, (name, _) = kv
        head = name.split("/", 1)[0]
        return (QA_SETS.index(head), i) if "/" in name and head in QA_SETS else (len(QA_SETS), i)

    out = dict(kv for _, kv in sorted(enumerate(ctx.results.items()), key=place))
    for m in out.values():
        m.meta.setdefault("model_hash", run.model_hash)
    return out


# ---- data bundles from specs, and writing results ----------------------------------------------
def _companions(spec: str) -> dict[str, str]:
    """Default companion sets of a forget spec: bios:forgetNN → retain{100−NN}, holdoutNN, raw texts;
    tofu:forgetNN → retain (retain_perturbed), holdoutNN, real_authors, world_facts (TOFU's eval sets)."""
    import re

    m = re.fullmatch(r"(bios|tofu):forget(\d\d)", spec)
    if not m:
        return {}
    src, nn = m.group(1), m.group(2)
    if src == "bios":
        return {"retain": f"bios:retain{100 - int(nn)}", "holdout": f"bios:holdout{nn}",
                "forget_text": f"bios:forget{nn}_text", "holdout_text": f"bios:holdout{nn}_text"}
    return {"retain": "tofu:retain", "holdout": f"tofu:holdout{nn}", "real_authors": "tofu:real_authors",
            "world_facts": "tofu:world_facts"}


def resolve_data(spec: str, auto: bool = True, **overrides: str | None) -> EvalData:
    """EvalData from a forget spec (`bios:forget10`, `tofu:forget10`, `muse:<folder>` or a MUSE folder, a
    .jsonl path) plus optional part specs (retain=..., holdout=..., forget_text=..., ...; "none" drops a part)."""
    from pathlib import Path

    from .data import load_dataset

    d = EvalData()
    muse_dir = spec[5:] if spec.startswith("muse:") else (spec if Path(spec).is_dir() else None)
    if muse_dir is not None:
        md = muse.load_muse(muse_dir)
        d.verbmem = md.verbmem or None
        d.knowmem_forget, d.knowmem_forget_icl = md.knowmem_forget or None, md.knowmem_forget_icl
        d.knowmem_retain, d.knowmem_retain_icl = md.knowmem_retain or None, md.knowmem_retain_icl
        d.forget_text, d.holdout_text = md.privleak.get("forget"), md.privleak.get("holdout")
        d.sources = {k: f"{muse_dir} (MUSE layout)" for k in d.parts()}
        d.sources.update({k: v for k, v in md.files.items()})
        d.privleak_ref = md.known_retrained_auc()
    else:
        first = load_dataset(spec)
        if first and isinstance(first[0], str):
            d.forget_text = first
            d.sources["forget_text"] = spec
        else:
            d.forget = first
            d.sources["forget"] = spec
    specs = {**(_companions(spec) if auto else {}), **{k: v for k, v in overrides.items() if v}}
    for part, s in specs.items():
        if part not in EvalData.__dataclass_fields__:
            raise ValueError(f"unknown data part {part!r}")
        if s.lower() == "none":
            setattr(d, part, None)
            d.sources.pop(part, None)
            continue
        setattr(d, part, load_dataset(s))
        d.sources[part] = s
    if not d.parts():
        raise ValueError(f"{spec}: nothing to evaluate")
    return d


def _finite(x):
    """NaN/inf → None everywhere (strict JSON has no NaN; e.g. PrivLeak with AUC(θ_r) = 0)."""
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def summary_row(m: MetricResult) -> dict:
    """A MetricResult for summary.json: bulky lists (per-example values, generated outputs) go to the JSONL."""
    d = m.to_json()
    d.pop("per_example")
    d["meta"] = {k: v for k, v in d["meta"].items() if k != "outputs"}
    return _finite(d)


def save_results(out_dir, results: dict[str, MetricResult], meta: dict) -> dict:
    """summary.json (every metric's value, direction, CI, meta + run meta) and per_example.jsonl (one row per
    metric × item, with the generated output where there is one)."""
    from pathlib import Path

    from .io import write_json, write_jsonl

    out_dir = Path(out_dir)
    summary = {"meta": meta, "metrics": {k: summary_row(m) for k, m in results.items()}}
    rows = []
    for k, m in results.items():
        outs = m.meta.get("outputs")
        for i, v in enumerate(m.per_example):
            r = {"metric": k, "i": i, "value": v}
            if outs is not None and i < len(outs):
                r["output"] = outs[i]
            rows.append(r)
    write_json(out_dir / "summary.json", _finite(summary))
    write_jsonl(out_dir / "per_example.jsonl", _finite(rows))
    return summary
