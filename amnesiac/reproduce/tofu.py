"""`amnesiac reproduce tofu`: TOFU's protocol (Maini et al. 2024) in miniature, on the real TOFU data.

1. models (tofu_models.py): tokenizer covering TOFU, tiny base, target = base fine-tuned on `full`,
   retrained = base fine-tuned on `retain90` (time-boxed, cached, resumable);
2. unlearn `forget10` from the target with GA_GDR, GA_KLR, NPO_GDR, NPO_KLR (+ SURE variants with --sure):
   TOFU's recipe shape (AdamW, constant lr, a fixed number of epochs over the forget set, retain90 as the
   regulariser's retain set), no early stopping (exact match is meaningless on TOFU's sentence answers);
3. evaluate every model at full precision, 8-bit and 4-bit (scenarios.PRECISIONS: rtn8 / rtn4_g64)
   with TOFU's metrics (evaluate.py → metrics/tofu.py, docs/science.md §5): forget quality = KS-test p-value of
   the forget-set truth ratios against the retrained model's *at the same precision* (θ_r is the floor under
   the same attack, §5 "Recovery"), model utility = harmonic mean of the 9 numbers on retain / real authors /
   world facts, and ROUGE-L recall on forget10 and retain (how well the tiny target learned TOFU at all);
4. per scenario, the one verdict (metrics.recovery.judge, docs/science.md §7) on forget ROUGE-L recall per item:
   does a deployment lift an unlearned model above the retrained model under it and above its own fp level?
Scenarios as in the demo (docs/science.md §1b): `trained`, and `released-quantized` (target and retrained
rounded onto the 4-bit g64 release grid first). Outputs: summary.json (rows + learning + seed/versions/config,
wall times), report.md/html, a rich table. Every step is cached; a killed run resumes.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError
from ..io import content_key, hash_obj, read_json, versions, write_json
from ..scenarios import PRECISIONS, SCENARIOS, scenario_models

METHODS = ["ga_gdr", "ga_klr", "npo_gdr", "npo_klr"]
PRECISION_NAMES = ["fp", "8bit", "4bit"]
# Sized by measurement on 2 CPU cores (1 thread): 0.98 M parameters with the 2048-token vocabulary, one epoch
# of `full` ≈ 67 s; hidden 128 took 88 s. See docs/results/tofu.md.
ARCH = dict(hidden_size=96, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4)


@dataclass
class TofuConfig:
    seed: int = 0  # data order, initialisation, training and unlearning batches, bootstrap
    arch: dict = field(default_factory=lambda: dict(ARCH))
    vocab: int = 2048  # tokenizer vocabulary (trained over every TOFU split)
    pretrain_people: int = 300  # bios people in the base's pretraining corpus
    base_epochs: int = 2  # base pretraining epochs
    base_lr: float = 3e-3  # base pretraining learning rate
    ft_epochs: int = 4  # planned fine-tuning epochs on full (target) / retain90 (retrained)
    ft_lr: float = 2e-3  # fine-tuning learning rate
    batch_size: int = 32  # training batch size
    budget_s: float | None = 420.0  # time box (s) of each fine-tune (target, retrained); None = no box
    forget: str = "forget10"  # forget01 | forget05 | forget10
    methods: list[str] = field(default_factory=lambda: list(METHODS))  # unlearning methods
    sure: bool = False  # also the SURE variants (10x lr, top-10 % salient rows)
    unlearn_lr: float = 1e-4  # unlearning learning rate (constant)
    sure_lr: float = 1e-3  # SURE: ~10× larger lr on the top-10 % salient rows (docs/science.md §1)
    sure_percentile: float = 90.0  # SURE saliency percentile
    unlearn_epochs: float = 3.0  # passes over the forget set
    unlearn_batch_size: int = 16  # unlearning batch size
    scenarios: list[str] = field(default_factory=lambda: ["trained"])  # trained | released-quantized
    precisions: list[str] = field(default_factory=lambda: list(PRECISION_NAMES))  # columns of scenarios.PRECISIONS
    max_new_tokens: int = 64  # greedy answers for ROUGE (TOFU answers: 49 tokens on average with this tokenizer)
    n_items: int | None = None  # miniature runs (tests): first n items of each split; None = all of TOFU
    template: str | None = None  # QA prompt template ({question}) the models are trained, unlearned and measured with (default 'Question: {question}\nAnswer:'; the trained tokenizer has no chat template)

    def prompt_format(self):
        from ..data.prompt import PromptFormat

        return PromptFormat.of(self.template)

    def template_kw(self) -> dict:
        """The template as a keyword when it is not the default (the default adds nothing: same cache keys)."""
        f = self.prompt_format()
        return {} if f.is_default else {"template": f.template}

    def check(self) -> None:
        self.prompt_format()  # a template without {question} or with another field
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise UserError(f"unknown precision(s) {bad}; available: {', '.join(PRECISIONS)}")
        bad = [s for s in self.scenarios if s not in SCENARIOS]
        if bad:
            raise UserError(f"unknown scenario(s) {bad}; available: trained, released-quantized")
        if self.forget not in ("forget01", "forget05", "forget10"):
            raise UserError(f"unknown forget split {self.forget!r}; available: forget01, forget05, forget10")
        if not self.methods:
            raise UserError("no unlearning method given")

    def model_part(self) -> dict:
        """What the tokenizer/base/target/retrained depend on (their cache key; budget excluded)."""
        keys = ("seed", "arch", "vocab", "pretrain_people", "base_epochs", "base_lr", "ft_epochs", "ft_lr",
                "batch_size", "forget", "n_items")
        return {**{k: getattr(self, k) for k in keys}, **self.template_kw()}


def load_tofu(cfg: TofuConfig) -> dict[str, list]:
    """TOFU splits (data.sources `tofu:`; the forget/retain eval sets carry paraphrased + perturbed answers).
    With n_items: the first n of each split, and `full` = those retain items + those forget items."""
    from ..data import load_dataset

    nn = int(cfg.forget[-2:])
    d = {"forget": load_dataset(f"tofu:{cfg.forget}"), "retain_train": load_dataset(f"tofu:retain{100 - nn}"),
         "retain": load_dataset("tofu:retain"), "real_authors": load_dataset("tofu:real_authors"),
         "world_facts": load_dataset("tofu:world_facts"), "full": load_dataset("tofu:full")}
    if cfg.n_items:
        n = cfg.n_items
        d = {k: v[:n] for k, v in d.items()}
        d["full"] = d["retain_train"] + d["forget"]
    fq = {it.question for it in d["forget"]}
    if any(it.question in fq for it in d["retain"]):
        raise ValueError("TOFU copy: retain eval set overlaps the forget set; check AMNESIAC_TOFU_DIR")
    return d


def run_unlearning(target: Path, method: str, sure: bool, cfg: TofuConfig, forget, retain, log=print) -> Path:
    from ..runs import cached_unlearn

    opts = dict(method=method, lr=cfg.sure_lr if sure else cfg.unlearn_lr, epochs=cfg.unlearn_epochs,
                schedule="constant", batch_size=cfg.unlearn_batch_size, seed=cfg.seed)
    if sure:
        opts["sure_percentile"] = cfg.sure_percentile
    opts.update(cfg.template_kw())
    return cached_unlearn(target, forget, retain, opts, target.parent / "unlearned",
                          tag=method + ("_sure" if sure else ""), log=lambda m: log(f"[tofu] {m}"))


KEEP = ("forget/rougeL_recall", "retain/rougeL_recall", "forget/prob", "retain/prob", "forget/truth_ratio",
        "retain/truth_ratio", "real_authors/prob", "real_authors/rougeL_recall", "real_authors/truth_ratio",
        "world_facts/prob", "world_facts/rougeL_recall", "world_facts/truth_ratio")


def eval_model(model_dir: Path, precision: str, data, cfg: TofuConfig, ref_truth_ratios: list[float] | None,
               cache: Path) -> dict:
    """TOFU metrics of one model at one precision (cached as JSON; the scorer caches per item too)."""
    from ..attacks.quant.deploy import deploy
    from ..evaluate import EvalConfig, RetrainedRef, evaluate

    key = hash_obj({"m": content_key(model_dir), "p": PRECISIONS[precision],
                    "d": data.hashes(), "ref": ref_truth_ratios, "n": cfg.max_new_tokens, "v": 2, **cfg.template_kw()})
    cp = cache / f"{key}.json"
    if cp.exists():
        return read_json(cp)
    from ..models import load_model

    model, tok = load_model(model_dir, device="cpu")
    model = deploy(model, tok, PRECISIONS[precision])[0]
    ref = RetrainedRef(truth_ratios=ref_truth_ratios, source="retrained model, same precision") if ref_truth_ratios else None
    t0 = time.time()
    res = evaluate(model, tok, data, EvalConfig(batch_size=128, qa_max_new_tokens=cfg.max_new_tokens, n_bootstrap=200,
                                                 seed=cfg.seed, **cfg.template_kw()), retrained=ref)
    mu = res["model_utility"]
    row = {k: res[k].value for k in KEEP if k in res}
    row.update({"model_utility": mu.value, "model_utility_complete": mu.meta["complete"],
                "model_utility_components": mu.meta["components"],
                "forget_quality": res["forget_quality"].value if "forget_quality" in res else None,
                "ks_statistic": res["forget_quality"].meta["ks_statistic"] if "forget_quality" in res else None,
                "forget_truth_ratios": res["forget/truth_ratio"].per_example,
                "forget_rougeL_ci": res["forget/rougeL_recall"].meta["ci95"], "eval_s": round(time.time() - t0, 1),
                "forget_rougeL_per_item": res["forget/rougeL_recall"].per_example,
                "sample_outputs": res["forget/exact_match"].meta["outputs"][:3]})
    write_json(cp, row)
    return row


def run_tofu(cfg: TofuConfig | None = None, out: str | Path = "tofu", log=print) -> dict:
    """TOFU's protocol into `out` (an earlier tofu output there is reused; any other non-empty folder is refused)."""
    from ..io import claim_output

    with claim_output(out, [], kind="reproduce-tofu", resume=True, inplace=True) as claim:
        claim.begin()
        return _run_tofu(cfg, out, log)


def _run_tofu(cfg: TofuConfig | None, out: str | Path, log) -> dict:
    from ..evaluate import EvalData
    from ..metrics.tofu import forget_quality
    from .tofu_models import models_dir, prepare_tofu

    cfg = cfg or TofuConfig()
    cfg.check()
    t0 = time.time()
    out = Path(out)
    d = load_tofu(cfg)
    paths = prepare_tofu(cfg.model_part(), {"full": d["full"], "retain90": d["retain_train"], "forget": d["forget"],
                                             "retain": d["retain"], "real_authors": d["real_authors"],
                                             "world_facts": d["world_facts"]}, cfg.budget_s, log)
    t_models = time.time() - t0
    data = EvalData(forget=d["forget"], retain=d["retain"], real_authors=d["real_authors"], world_facts=d["world_facts"])
    cache = models_dir(cfg.model_part()) / "eval"
    rows, times, per_item = [], {}, {}
    for sc in cfg.scenarios:
        mods = scenario_models(paths, sc, log)
        entries = [("target", mods["target"]), ("retrained", mods["retrained"])]
        for meth in cfg.methods:
            for sure in ([False, True] if cfg.sure else [False]):
                s = time.time()
                u = run_unlearning(mods["target"], meth, sure, cfg, d["forget"], d["retain_train"], log)
                name = meth.upper() + ("_SURE" if sure else "")
                times[f"{sc}/{name}"] = round(time.time() - s, 1)
                entries.append((name, u))
        for p in cfg.precisions:
            s = time.time()
            ref = eval_model(mods["retrained"], p, data, cfg, None, cache)
            for name, mdir in entries:
                r = ref if name == "retrained" else eval_model(mdir, p, data, cfg, ref["forget_truth_ratios"], cache)
                fq = forget_quality(r["forget_truth_ratios"], ref["forget_truth_ratios"]).value if name == "retrained" \
                    else r["forget_quality"]
                info = read_json(mdir / "unlearn.json") if (mdir / "unlearn.json").exists() else {}
                per_item[(sc, name, p)] = r["forget_rougeL_per_item"]
                rows.append({"scenario": sc, "method": name, "precision": p, "forget_quality": fq,
                             "model_utility": r["model_utility"], "model_utility_complete": r["model_utility_complete"],
                             "forget_rougeL_recall": r["forget/rougeL_recall"], "retain_rougeL_recall": r["retain/rougeL_recall"],
                             "forget_rougeL_ci": r["forget_rougeL_ci"], "forget_prob": r["forget/prob"],
                             "forget_truth_ratio": r["forget/truth_ratio"], "ks_statistic": r["ks_statistic"],
                             "utility_components": r["model_utility_components"], "sample_outputs": r["sample_outputs"],
                             "lr": info.get("config", {}).get("lr"), "steps": info.get("steps"),
                             "mean_abs_dw_over_4bit_step": (info.get("drift") or {}).get("mean_abs_dw_over_4bit_g64_step"),
                             "model": str(mdir)})
            times[f"{sc}/eval_{p}"] = round(time.time() - s, 1)
    learning = _learning(paths, rows)
    verdicts = {sc: tofu_verdict(per_item, sc, cfg) for sc in cfg.scenarios}
    summary = {"schema": "amnesiac.reproduce.tofu/2", "config": asdict(cfg), "rows": rows, "learning": learning,
               "verdicts": verdicts,
               "models_s": round(t_models, 1), "step_s": times, "wall_s": round(time.time() - t0, 1),
               "models": {k: str(v) for k, v in paths.items()}, "seed": cfg.seed, "versions": versions(),
               "data": {k: len(v) for k, v in d.items()}, "prompt_format": cfg.prompt_format().record()}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    from .tofu_report import write_tofu_report

    write_tofu_report(summary, out)
    return summary


def tofu_verdict(per_item: dict, scenario: str, cfg: TofuConfig) -> dict:
    """The one verdict on forget ROUGE-L recall (TOFU's generation metric, per item) for one scenario."""
    from ..metrics.recovery import Judged, judge

    if "fp" not in cfg.precisions:
        return {"verdict": None, "reason": "no full-precision evaluation: nothing to judge against"}
    t_fp = per_item[(scenario, "target", "fp")]
    rows = [Judged(f"{name}@{p}", v, t_fp, floor=per_item[(scenario, "retrained", p)],
                   u_fp=per_item[(scenario, name, "fp")], extra={"method": name, "precision": p})
            for (sc, name, p), v in per_item.items()
            if sc == scenario and name not in ("target", "retrained") and p != "fp"]
    if not rows:
        return {"verdict": None, "reason": "only full precision was evaluated: no deployment to judge"}
    v = judge(rows, "rougeL_recall", "TOFU answers are sentences: ROUGE-L recall of the greedy answer",
              retrained_fp=per_item[(scenario, "retrained", "fp")], seed=cfg.seed)
    v["reason"] = f"{scenario}: {v['reason']}"
    return v


def _learning(paths: dict[str, Path], rows: list[dict]) -> dict:
    """How well the tiny models learned TOFU: ROUGE-L recall at full precision + their training records."""
    out = {}
    for name in ("target", "retrained"):
        r = next((x for x in rows if x["scenario"] == "trained" and x["method"] == name and x["precision"] == "fp"), None)
        tr = read_json(paths[name] / "train.json")
        out[name] = {"forget_rougeL_recall": r and r["forget_rougeL_recall"], "retain_rougeL_recall": r and r["retain_rougeL_recall"],
                     "epochs_done": tr["epochs_done"], "epochs_planned": tr["epochs_planned"],
                     "cut_by_budget": tr["cut_by_budget"], "train_s": tr["elapsed_s"], "final_loss": tr["log"][-1]["loss"],
                     "n_params": tr["n_params"]}
    base = read_json(paths["base"] / "train.json")
    out["base"] = {"train_s": base["elapsed_s"], "epochs_done": base["epochs_done"], "corpus": base.get("corpus")}
    return out
