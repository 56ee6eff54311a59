"""`amnesiac audit`: attack an unlearned model every cheap way, measure what comes back, give a verdict.

Models: target T (before unlearning), unlearned U, optionally retrained R (never saw the forget set).
Each attack is applied to every model the same way; per forget item we keep exact-match recall and
answer probability, per retain item recall. Verdict rule (docs/science.md §7): an attack FAILs the
unlearning when U's forget recall under it exceeds R's under the *same* attack by at least `margin`
(absolute) and the lower end of the paired-bootstrap 95 % CI of that difference is above 0. Without R
the floor is U's own full-precision recall (recovery relative to the unlearned model). Results are
cached per (model, attack) under OUT/cache, so a killed audit resumes and ends with the same summary.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .attacks.quant.spec import NAMED as QUANT  # attack name -> get_quantizer kwargs
from .data.schema import QAItem, item_prompt, qa_answer
from .io import hash_obj, read_json, versions, write_json, write_jsonl

MARGIN = 0.05  # smallest recall difference (absolute) that counts as knowledge coming back
N_BOOT = 1000

SUITES = {
    "quick": ["fp", "rtn8", "rtn4_g64", "paraphrase"],
    "full": ["fp", "rtn8", "rtn4_g64", "rtn4_g128_asym", "rtn3_g64", "rtn2_g64", "hqq4", "quanto4", "quanto8",
             "torchao4", "bnb_nf4", "paraphrase", "icl_forget", "icl_same_person", "step_by_step", "cloze", "relearn"],
}
PROMPT_ATTACKS = {"paraphrase", "icl_forget", "icl_same_person", "step_by_step", "cloze"}


@dataclass
class AuditConfig:
    suite: str = "quick"
    attacks: list[str] | None = None  # overrides the suite's list
    seed: int = 0
    margin: float = MARGIN
    n_boot: int = N_BOOT
    max_retain: int = 300  # retain items evaluated (a fixed random subset: recall, not verdict)
    batch_size: int = 64
    relearn_steps: int = 20
    relearn_lr: float = 1e-3
    mia: bool = False

    def attack_list(self) -> list[str]:
        names = list(self.attacks) if self.attacks else list(SUITES[self.suite])
        unknown = [n for n in names if n not in QUANT and n not in PROMPT_ATTACKS and n not in ("fp", "relearn")]
        if unknown:
            raise ValueError(f"unknown attack(s) {unknown}; available: fp, relearn, {', '.join(sorted(QUANT))}, "
                             f"{', '.join(sorted(PROMPT_ATTACKS))}")
        return names


def quantizer_for(name: str):
    from .attacks.quant.backends import get_quantizer

    cfg = dict(QUANT[name])
    return get_quantizer(**cfg)


def available_attacks(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Drop quantization backends that are not installed; say why."""
    from .attacks.quant.backends import available

    keep, skipped = [], {}
    for n in names:
        if n in QUANT and QUANT[n]["backend"] != "rtn" and not available(QUANT[n]["backend"]):
            skipped[n] = f"backend {QUANT[n]['backend']!r} not installed (pip install 'amnesiac[{QUANT[n]['backend']}]')"
        else:
            keep.append(n)
    return keep, skipped


# ----------------------------------------------------------------------------- measuring one model

def knowledge(model, tok, forget: list[QAItem], retain: list[QAItem], prompts: list[str] | None = None,
              batch_size: int = 64, stop_strings: tuple[str, ...] = ("\n",)) -> dict[str, list[float]]:
    """Per-item forget recall / answer probability and retain recall (prompts override forget questions;
    `stop_strings` apply to the forget prompts: cloze completions also end at ". ")."""
    from .core import generate_greedy, score_pairs
    from .metrics.text import exact_match

    fp = prompts if prompts is not None else [item_prompt(it) for it in forget]
    if tuple(stop_strings) == ("\n",):  # one batched pass for both sets
        outs = generate_greedy(model, tok, fp + [item_prompt(it) for it in retain], max_new_tokens=16,
                               stop_strings=["\n"], batch_size=batch_size)
        f_out, r_out = outs[: len(forget)], outs[len(forget):]
    else:
        f_out = generate_greedy(model, tok, fp, max_new_tokens=16, stop_strings=list(stop_strings), batch_size=batch_size)
        r_out = generate_greedy(model, tok, [item_prompt(it) for it in retain], max_new_tokens=16,
                                stop_strings=["\n"], batch_size=batch_size) if retain else []
    sc = score_pairs(model, tok, fp, [qa_answer(it.answer) for it in forget], batch_size=batch_size)
    return {"forget_em": [exact_match(o, it.answer) for o, it in zip(f_out, forget)],
            "retain_em": [exact_match(o, it.answer) for o, it in zip(r_out, retain)],
            "forget_prob": np.exp(sc.mean).round(6).tolist(), "forget_outputs": f_out}


def knowledge_at(model, tok, forget: list[QAItem], retain: list[QAItem], qcfg: dict | None,
                 batch_size: int = 64) -> dict[str, list[float]]:
    """knowledge() of the model as deployed with quantizer config `qcfg` (get_quantizer kwargs; None = full
    precision). The one place audit, demo and sweep quantize a model before measuring it."""
    if qcfg is not None:
        from .attacks.quant.apply import quantize_model
        from .attacks.quant.backends import get_quantizer

        model = quantize_model(model, get_quantizer(**qcfg))[0]
    return knowledge(model, tok, forget, retain, batch_size=batch_size)


def _prompt_variant(name: str, forget: list[QAItem], retain: list[QAItem], seed: int) -> list[str]:
    """One prompt per forget item for a prompt attack (the first variant; items without one keep the question)."""
    from .attacks.prompts import build_prompts

    variants = build_prompts(name, forget, pool=forget, k=3, seed=seed)
    return [v[0] if v else item_prompt(it) for v, it in zip(variants, forget)]


# ----------------------------------------------------------------------------- statistics

def boot_idx(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def ci_of(stat, arrays: list[np.ndarray], idx: np.ndarray) -> tuple[float, float]:
    """Percentile 95 % CI of stat(*arrays) under paired resampling of items (same idx for every array)."""
    vals = np.array([stat(*(a[i] for a in arrays)) for i in idx])
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return float("nan"), float("nan")
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def _ratio(a, b):
    mb = b.mean()
    return a.mean() / mb if mb > 0 else float("nan")


def recovery_rows(res: dict, attacks: list[str], cfg: AuditConfig) -> list[dict]:
    """Per attack: U's recall, recovery ratio vs T, recovered fraction, U − R with paired-bootstrap CIs."""
    t_fp = np.asarray(res["target"]["fp"]["forget_em"])
    u_fp = np.asarray(res["unlearned"]["fp"]["forget_em"])
    has_r = "retrained" in res
    rows = []
    for a in attacks:
        u = np.asarray(res["unlearned"][a]["forget_em"])
        sel = res["unlearned"][a].get("item_index")
        tt, uf = (t_fp[sel], u_fp[sel]) if sel is not None else (t_fp, u_fp)
        idx = boot_idx(len(u), cfg.n_boot, cfg.seed)
        row = {"attack": a, "forget_recall": float(u.mean()), "forget_recall_ci": ci_of(np.mean, [u], idx),
               "retain_recall": float(np.mean(res["unlearned"][a]["retain_em"])) if res["unlearned"][a]["retain_em"] else None,
               "forget_prob": float(np.mean(res["unlearned"][a]["forget_prob"])),
               "recovery_ratio": _ratio(u, tt), "recovery_ratio_ci": ci_of(_ratio, [u, tt], idx)}
        den = tt.mean() - uf.mean()
        row["recovered_fraction"] = float((u.mean() - uf.mean()) / den) if den > 0 else float("nan")
        row["recovered_fraction_ci"] = ci_of(lambda x, y, z: (x.mean() - y.mean()) / (z.mean() - y.mean())
                                             if z.mean() - y.mean() > 0 else float("nan"), [u, uf, tt], idx)
        ref = np.asarray(res["retrained"][a]["forget_em"]) if has_r else uf
        row["floor"] = "retrained" if has_r else "unlearned@fp"
        row["floor_recall"] = float(ref.mean())
        row["excess"] = float(u.mean() - ref.mean())
        row["excess_ci"] = ci_of(lambda x, y: x.mean() - y.mean(), [u, ref], idx)
        if not has_r and a == "fp":
            row["significant"] = False  # U at fp is its own floor
        else:
            row["significant"] = bool(row["excess"] >= cfg.margin and row["excess_ci"][0] > 0)
        rows.append(row)
    return rows


def verdict(rows: list[dict], cfg: AuditConfig, has_retrained: bool) -> dict:
    bad = [r for r in rows if r["significant"]]
    floor = "the retrained model under the same attack" if has_retrained else "the unlearned model at full precision"
    if not bad:
        worst = max(rows, key=lambda r: r["excess"]) if rows else None
        return {"verdict": "PASS", "worst_attack": worst["attack"] if worst else None,
                "reason": f"no attack raised forget recall significantly above {floor} "
                          f"(rule: excess ≥ {cfg.margin} and 95% CI lower bound > 0)"}
    w = max(bad, key=lambda r: r["excess"])
    lo, hi = w["excess_ci"]
    return {"verdict": "FAIL", "worst_attack": w["attack"],
            "reason": f"under {w['attack']} forget recall is {w['forget_recall']:.3f} vs {w['floor_recall']:.3f} for "
                      f"{floor} (excess {w['excess']:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}]); "
                      f"recovery ratio vs target {w['recovery_ratio']:.2f}",
            "failing_attacks": [r["attack"] for r in bad]}


# ----------------------------------------------------------------------------- the audit

@dataclass
class Audit:
    target: str
    unlearned: str
    forget: list[QAItem]
    retain: list[QAItem]
    out: Path
    retrained: str | None = None
    holdout: list[QAItem] | None = None
    config: AuditConfig = field(default_factory=AuditConfig)
    log: Any = print

    def __post_init__(self):
        self.out = Path(self.out)

    def _cache(self, model: str, attack: str) -> Path:
        return self.out / "cache" / f"{model}__{attack}.json"

    def run(self) -> dict:
        import torch

        from .models import load_model

        cfg = self.config
        if not self.forget:
            raise ValueError("the forget set is empty: nothing to audit")
        t0 = time.time()
        torch.manual_seed(cfg.seed)
        attacks, skipped = available_attacks(cfg.attack_list())
        rng = random.Random(cfg.seed)
        retain = list(self.retain)
        if len(retain) > cfg.max_retain:
            retain = [retain[i] for i in sorted(rng.sample(range(len(retain)), cfg.max_retain))]
        models = {"target": self.target, "unlearned": self.unlearned}
        if self.retrained:
            models["retrained"] = self.retrained
        key = hash_obj({"models": models, "forget": [it.to_json() for it in self.forget],
                        "retain": [it.to_json() for it in retain], "cfg": cfg.__dict__})
        res: dict[str, dict] = {m: {} for m in models}
        costs: dict[str, dict] = {}
        loaded: dict[str, tuple] = {}
        from tqdm.auto import tqdm

        bar = tqdm(total=len(models) * len(attacks), desc="audit")
        for m, path in models.items():
            for a in attacks:
                cp = self._cache(m, a)
                if cp.exists():
                    c = read_json(cp)
                    if c.get("key") == key:
                        res[m][a], costs[f"{m}/{a}"] = c["result"], c["cost"]
                        bar.update(1)
                        continue
                if m not in loaded:
                    loaded[m] = load_model(path)
                model, tok = loaded[m]
                s = time.time()
                r = self._one(model, tok, a, retain)
                costs[f"{m}/{a}"] = {"wall_s": round(time.time() - s, 3)}
                res[m][a] = r
                write_json(cp, {"key": key, "result": r, "cost": costs[f"{m}/{a}"]})
                bar.update(1)
        bar.close()
        rows = recovery_rows(res, attacks, cfg)
        v = verdict(rows, cfg, "retrained" in res)
        collapse = self._collapse(attacks, loaded, models)
        mia = self._mia(loaded, models) if cfg.mia and self.holdout else None
        summary = {
            "schema": "amnesiac.audit/1", "verdict": v, "models": models, "attacks": attacks, "skipped_attacks": skipped,
            "results": {m: {a: {k: (float(np.mean(x)) if x else None) for k, x in r.items()
                                if k in ("forget_em", "retain_em", "forget_prob")} for a, r in d.items()}
                        for m, d in res.items()},
            "recovery": rows, "collapse": collapse, "mia": mia,
            "config": {**cfg.__dict__, "n_forget": len(self.forget), "n_retain_evaluated": len(retain)},
            "costs": costs, "versions": versions(), "seed": cfg.seed, "wall_s": round(time.time() - t0, 2),
        }
        write_json(self.out / "summary.json", summary)
        write_jsonl(self.out / "per_example.jsonl", [
            {"model": m, "attack": a, "item": i, "question": self.forget[j].question, "answer": self.forget[j].answer,
             "forget_em": r["forget_em"][i], "forget_prob": r["forget_prob"][i], "output": r["forget_outputs"][i]}
            for m, d in res.items() for a, r in d.items()
            for i, j in enumerate(r.get("item_index") or range(len(r["forget_em"])))])
        return summary

    def _one(self, model, tok, attack: str, retain) -> dict:
        cfg = self.config
        if attack == "fp" or attack in QUANT:
            return knowledge_at(model, tok, self.forget, retain, QUANT.get(attack), batch_size=cfg.batch_size)
        if attack in PROMPT_ATTACKS:
            from .attacks.prompts import STOPS

            return knowledge(model, tok, self.forget, [], prompts=_prompt_variant(attack, self.forget, retain, cfg.seed),
                             batch_size=cfg.batch_size, stop_strings=STOPS.get(attack, ("\n",)))
        if attack == "relearn":
            from .attacks.relearn import relearn_attack, split_forget

            r = relearn_attack(model, tok, forget=self.forget, fraction=0.5, steps=cfg.relearn_steps,
                               lr=cfg.relearn_lr, seed=cfg.seed, evaluate=False)
            _, held = split_forget(list(self.forget), 0.5, "item", cfg.seed)
            hq = {it.question for it in held}
            sel = [i for i, it in enumerate(self.forget) if it.question in hq]
            k = knowledge(r.model, tok, [self.forget[i] for i in sel], retain, batch_size=cfg.batch_size)
            k["item_index"] = sel
            return k
        raise ValueError(f"unknown attack {attack!r}")

    def _collapse(self, attacks, loaded, models) -> dict:
        from .attacks.collapse import collapse_diagnostics
        from .models import load_model

        out = {}
        for a in attacks:
            if a not in QUANT or QUANT[a]["backend"] != "rtn":
                continue
            for m in ("target", "unlearned"):
                if m not in loaded:
                    loaded[m] = load_model(models[m])
            d = collapse_diagnostics(loaded["target"][0], loaded["unlearned"][0], quantizer_for(a))
            out[a] = {"overall": d["overall"], "per_layer": {k: v["collapse_rate"] for k, v in d["layers"].items()}}
        return out

    def _mia(self, loaded, models) -> dict:
        from .core import score_pairs
        from .metrics import mia as M
        from .models import load_model

        res = {}
        for m in models:
            if m not in loaded:
                loaded[m] = load_model(models[m])
            model, tok = loaded[m]
            sides = {}
            for side, items in (("forget", self.forget), ("holdout", self.holdout)):
                sc = score_pairs(model, tok, [item_prompt(it) for it in items], [qa_answer(it.answer) for it in items])
                sides[side] = [M.loss_score(lp) for lp in sc.token_logprobs]
            res[m] = {"loss_auc": M.auc_score(sides["forget"], sides["holdout"]),
                      "member_scores": sides["forget"], "nonmember_scores": sides["holdout"]}
        return res
