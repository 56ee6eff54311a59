"""Membership-inference scores per sequence and their AUC / TPR at low FPR (docs/science.md §5 MIA).

THE SIGN CONVENTION (stated once, here): every score returned by this module is "higher = more likely a
member" (member = a sequence the model was trained on, e.g. the forget set; non-member = holdout).
Scores whose usual form runs the other way (NLL, zlib ratio, Min-K % of −log p) are negated so this holds;
AUC = P(score(member) > score(non-member)) (+½ for ties): 0.5 = no membership signal.

Inputs are per-token arrays from core.score_pairs/score_texts: lp (log p(x_t|x_<t)), and for Min-K %++ the
predictive mean μ_t and std σ_t of log p under the model's own distribution.
"""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from ..registry import register
from .base import MetricResult, evaluates

MINK_K = 0.2  # Min-K % paper's usual k; MUSE's PrivLeak uses 0.4 (muse.PRIVLEAK_K)


def _lowest_mean(x: np.ndarray, k: float) -> float:
    m = max(1, int(len(x) * k))
    return float(np.mean(np.sort(x)[:m]))


def loss_score(lp: Sequence[float]) -> float:
    """LOSS: −mean NLL = mean token log-prob."""
    return float(np.mean(lp))


def zlib_score(lp: Sequence[float], text: str) -> float:
    """ZLib: −NLL_total / len(zlib.compress(text bytes))."""
    return float(np.sum(lp)) / len(zlib.compress(text.encode("utf-8")))


def mink_score(lp: Sequence[float], k: float = MINK_K) -> float:
    """Min-K %: mean of the lowest k % token log-probs (at least one token)."""
    return _lowest_mean(np.asarray(lp, dtype=np.float64), k)


def minkpp_z(lp: Sequence[float], mu: Sequence[float], sigma: Sequence[float]) -> np.ndarray:
    """Min-K %++ per-token z_t = (log p(x_t) − μ_t) / σ_t, μ_t = Σ_v p log p, σ_t² = Σ_v p (log p)² − μ_t².
    σ_t = 0 (a one-hot prediction) gets a tiny floor so the score stays finite."""
    lp, mu, sigma = (np.asarray(a, dtype=np.float64) for a in (lp, mu, sigma))
    return (lp - mu) / np.maximum(sigma, 1e-12)


def minkpp_score(lp, mu, sigma, k: float = MINK_K) -> float:
    """Min-K %++: mean of the lowest k % of z_t."""
    return _lowest_mean(minkpp_z(lp, mu, sigma), k)


def reference_score(lp_model: Sequence[float], lp_ref: Sequence[float]) -> float:
    """Reference: NLL_ref − NLL_model (mean per token, each model on its own tokens)."""
    return float(np.mean(lp_model) - np.mean(lp_ref))


def auc_score(member: Sequence[float], nonmember: Sequence[float]) -> float:
    """ROC AUC with members labelled 1 (sklearn.roc_auc_score); = P(member > non-member) + ½ P(tie)."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(member)), np.zeros(len(nonmember))]
    return float(roc_auc_score(y, np.r_[member, nonmember]))


def tpr_at_fpr(member: Sequence[float], nonmember: Sequence[float], fpr_max: float) -> float:
    """Largest TPR on the ROC curve at a false-positive rate ≤ fpr_max (LiRA-style low-FPR operating point)."""
    from sklearn.metrics import roc_curve

    y = np.r_[np.ones(len(member)), np.zeros(len(nonmember))]
    fpr, tpr, _ = roc_curve(y, np.r_[member, nonmember])
    ok = fpr <= fpr_max
    return float(tpr[ok].max()) if ok.any() else 0.0


def attack_result(name: str, member: Sequence[float], nonmember: Sequence[float], meta: dict | None = None) -> MetricResult:
    """AUC as the value, TPR@1 %/5 % FPR in meta; per_example = member scores then non-member scores.
    higher_is_better=False: on a forget set, less membership signal is the unlearning goal (ideal: θ_r's AUC)."""
    member, nonmember = np.asarray(member, dtype=np.float64), np.asarray(nonmember, dtype=np.float64)
    return MetricResult(f"mia_{name}", auc_score(member, nonmember),
                        [{"member": 1, "score": float(s)} for s in member] + [{"member": 0, "score": float(s)} for s in nonmember],
                        False, {"tpr@1%fpr": tpr_at_fpr(member, nonmember, 0.01),
                                "tpr@5%fpr": tpr_at_fpr(member, nonmember, 0.05), "n_member": len(member),
                                "n_nonmember": len(nonmember), "convention": "higher score = member",
                                "section": "docs/science.md §5 MIA", **(meta or {})})


@register("metrics", "mia")
def mia_suite(member: dict, nonmember: dict, k: float = MINK_K, meta: dict | None = None) -> list[MetricResult]:
    """All MIA attacks (LOSS, ZLib, Min-K %, Min-K %++, reference), AUC + TPR at 1 %/5 % FPR.

    member / nonmember: dicts of per-sequence lists — "lp" (token log-prob arrays), "text" (str), and optional
    "mu", "sigma" (Min-K %++) and "lp_ref" (reference model); an attack whose inputs are absent is skipped."""
    def scores(d, fn):
        return [fn(i, d) for i in range(len(d["lp"]))]

    attacks = {
        "loss": lambda i, d: loss_score(d["lp"][i]),
        "zlib": lambda i, d: zlib_score(d["lp"][i], d["text"][i]),
        "mink": lambda i, d: mink_score(d["lp"][i], k),
    }
    if member.get("mu") is not None and nonmember.get("mu") is not None:
        attacks["minkpp"] = lambda i, d: minkpp_score(d["lp"][i], d["mu"][i], d["sigma"][i], k)
    if member.get("lp_ref") is not None and nonmember.get("lp_ref") is not None:
        attacks["ref"] = lambda i, d: reference_score(d["lp"][i], d["lp_ref"][i])
    return [attack_result(n, scores(member, f), scores(nonmember, f), {"k": k, **(meta or {})} if n.startswith("mink") else meta)
            for n, f in attacks.items()]


@evaluates(mia_suite, order=30)
def _eval_mia(ctx):
    mi = ctx.membership()
    if mi is not None:
        mem, non, on = mi
        yield from mia_suite(mem, non, ctx.cfg.mink_k, {"on": on})
