"""Hidden-knowledge probes (docs/science.md §4): is the answer still decodable from the hidden states?

Both probes read the residual stream at the last prompt token ("...Answer:"), the position whose
next-token prediction is the answer's first token. hidden_states[ℓ] for ℓ = 0 (embeddings) … L.

- logit lens: apply the model's final norm and LM head to every layer's state and read the rank
  (0 = top) and probability of the gold answer's first token. A forget fact whose gold token is top-1
  at a middle layer but not at the output was suppressed late, not erased.
- linear probe: per attribute and layer, a multinomial LogisticRegression trained on retain-set states
  (all question variants) predicting the attribute value, applied to forget-set states. Reported:
  retain accuracy on a held-out question variant (does the probe work at all), forget accuracy, and
  forget coverage (the share of forget values seen among the retain labels: a probe cannot name a value
  it never saw, so coverage caps forget accuracy). Compare forget accuracy across target, unlearned
  and retrained models (the retrained model is the floor: it never saw F).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ..core import encode_pairs
from ..core.logprobs import _device_of, pad_id_of
from ..data.prompt import bind
from ..data.schema import QAItem
from ..metrics.base import MetricResult
from ..registry import register
from .base import AttackResult, measure_cost


def _final_norm(model):
    base = getattr(model, "base_model", None) or getattr(model, "model", None)
    for obj in (base, getattr(base, "model", None)):
        for name in ("norm", "final_layernorm", "ln_f"):
            if obj is not None and isinstance(getattr(obj, name, None), torch.nn.Module):
                return getattr(obj, name)
    return torch.nn.Identity()


@torch.no_grad()
def prompt_states(model, tok, prompts: list[str], batch_size: int = 32):
    """(N, L+1, H) float32 states at each prompt's last token, and whether the last entry is already
    normed (transformers applies the final norm before returning the last hidden state for Llama;
    checked at run time by comparing with the logits)."""
    from ..core.logprobs import encode_text, special_prefix

    dev = _device_of(model)
    pre = special_prefix(tok)
    enc = [encode_text(tok, p, prefix=pre) for p in prompts]
    pad, out, last_normed = pad_id_of(tok), [], None
    head = model.get_output_embeddings()
    for s in range(0, len(enc), batch_size):
        b = enc[s: s + batch_size]
        T = max(len(x) for x in b)
        ids = torch.full((len(b), T), pad, dtype=torch.long)
        am = torch.zeros_like(ids)
        for i, x in enumerate(b):
            ids[i, : len(x)] = torch.tensor(x)
            am[i, : len(x)] = 1
        o = model(input_ids=ids.to(dev), attention_mask=am.to(dev), output_hidden_states=True)
        last = (am.sum(1) - 1).to(dev)
        rows = torch.arange(len(b), device=dev)
        hs = torch.stack([h[rows, last] for h in o.hidden_states], 1)  # (B, L+1, H)
        if last_normed is None:
            last_normed = bool(torch.allclose(head(hs[:, -1]).float(), o.logits[rows, last].float(), atol=1e-3, rtol=1e-3))
        out.append(hs.float().cpu())
    return torch.cat(out), bool(last_normed)


@torch.no_grad()
def logit_lens(model, tok, items: list[QAItem], batch_size: int = 32, fmt=None) -> MetricResult:
    """Per layer: mean probability, mean / median rank and top-1 rate of the gold answer's first token.
    value = top-1 rate at the best layer (the most the lens can read out anywhere). fmt: the prompt format."""
    b = bind(fmt, tok)
    prompts = [b.prompt(it.question) for it in items]
    gold = [ids[start] for ids, start in encode_pairs(tok, prompts, [b.answer(it.answer) for it in items])]
    hs, last_normed = prompt_states(model, tok, prompts, batch_size)
    norm, head = _final_norm(model), model.get_output_embeddings()
    dev = _device_of(model)
    L = hs.shape[1]
    g = torch.tensor(gold)
    layers = []
    for layer in range(L):
        h = hs[:, layer].to(dev)
        if not (last_normed and layer == L - 1):
            h = norm(h)
        logp = torch.log_softmax(head(h).float(), -1).cpu()
        lp = logp.gather(1, g[:, None]).squeeze(1)
        rank = (logp > lp[:, None]).sum(1)
        layers.append({"layer": layer, "prob": float(lp.exp().mean()), "mean_rank": float(rank.float().mean()),
                       "median_rank": float(rank.float().median()), "top1": float((rank == 0).float().mean())})
    best = max(range(L), key=lambda i: layers[i]["top1"])
    return MetricResult("logit_lens_top1", layers[best]["top1"], [], True,
                        {"layers": layers, "best_layer": best, "output_top1": layers[-1]["top1"], "n": len(items)})


def _variants(items: list[QAItem]):
    """(item index, variant index, question) for every question and paraphrase."""
    return [(i, j, q) for i, it in enumerate(items) for j, q in enumerate([it.question] + list(it.paraphrased_questions))]


@torch.no_grad()
def linear_probe(model, tok, retain: list[QAItem], forget: list[QAItem], layers: list[int] | None = None,
                 C: float = 1.0, batch_size: int = 32, max_iter: int = 200, fmt=None) -> MetricResult:
    """Probe accuracy on forget vs retain per attribute and layer. value = forget accuracy at the layer
    with the best held-out retain accuracy (chosen on retain only, never on forget)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    rv, fv = _variants(retain), [(i, 0, it.question) for i, it in enumerate(forget)]
    b = bind(fmt, tok)
    hs_r, _ = prompt_states(model, tok, [b.prompt(q) for _, _, q in rv], batch_size)
    hs_f, _ = prompt_states(model, tok, [b.prompt(q) for _, _, q in fv], batch_size)
    L = hs_r.shape[1]
    layers = list(range(L)) if layers is None else [x if x >= 0 else L + x for x in layers]
    last_var = defaultdict(int)
    for i, j, _ in rv:
        last_var[i] = max(last_var[i], j)
    by_attr = defaultdict(lambda: ([], []))
    for r, (i, j, _) in enumerate(rv):
        by_attr[retain[i].attribute or "answer"][0].append((r, i, j))
    for r, it in enumerate(forget):
        by_attr[it.attribute or "answer"][1].append(r)
    res = {layer: {"retain_acc": [], "forget_acc": [], "n_r": 0, "n_f": 0} for layer in layers}
    per_attr = {}
    for attr, (rrows, frows) in by_attr.items():
        if not frows or not rrows:
            continue
        # held-out retain = each item's last question variant (needs ≥ 2 variants); else train on all
        tr = [(r, i) for r, i, j in rrows if j < last_var[i] or last_var[i] == 0]
        te = [(r, i) for r, i, j in rrows if j == last_var[i] and last_var[i] > 0]
        y_tr = np.array([retain[i].answer.strip() for _, i in tr])
        if len(set(y_tr)) < 2:
            continue
        y_f = np.array([forget[r].answer.strip() for r in frows])
        cover = float(np.isin(y_f, y_tr).mean())
        per_attr[attr] = {"forget_coverage": cover, "n_classes": len(set(y_tr)), "layers": {}}
        for layer in layers:
            X = hs_r[:, layer].numpy()
            mu, sd = X[[r for r, _ in tr]].mean(0), X[[r for r, _ in tr]].std(0) + 1e-6
            # small problems: one BLAS thread is faster (and does not fight torch's threads); an
            # unconverged fit after max_iter is still a valid (slightly under-fit) probe
            with threadpool_limits(1), warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf = LogisticRegression(C=C, max_iter=max_iter).fit((X[[r for r, _ in tr]] - mu) / sd, y_tr)
            f_acc = float((clf.predict((hs_f[frows, layer].numpy() - mu) / sd) == y_f).mean())
            r_acc = float((clf.predict((X[[r for r, _ in te]] - mu) / sd) == np.array(
                [retain[i].answer.strip() for _, i in te])).mean()) if te else float("nan")
            per_attr[attr]["layers"][layer] = {"retain_heldout_acc": r_acc, "forget_acc": f_acc}
            res[layer]["retain_acc"].append((r_acc, len(te)))
            res[layer]["forget_acc"].append((f_acc, len(frows)))

    def wmean(pairs):
        pairs = [(a, n) for a, n in pairs if n and not np.isnan(a)]
        return float(sum(a * n for a, n in pairs) / sum(n for _, n in pairs)) if pairs else float("nan")

    summary = [{"layer": layer, "retain_heldout_acc": wmean(res[layer]["retain_acc"]),
                "forget_acc": wmean(res[layer]["forget_acc"])} for layer in layers]
    if not per_attr:
        raise ValueError("no attribute has both retain (≥ 2 values) and forget items: nothing to probe")
    best = max(summary, key=lambda s: -1 if np.isnan(s["retain_heldout_acc"]) else s["retain_heldout_acc"])
    return MetricResult("linear_probe_forget_acc", best["forget_acc"], [], True,
                        {"layers": summary, "best_layer": best["layer"], "retain_heldout_acc": best["retain_heldout_acc"],
                         "per_attribute": per_attr, "n_retain_states": len(rv), "n_forget": len(forget)})


@register("attacks", "probe")
def probe_attack(model, tok, forget=None, retain=None, layers: list[int] | None = None, batch_size: int = 32,
                 fmt=None) -> AttackResult:
    """Hidden-state probes (measures, returns no model): logit lens on forget, linear probe retain → forget.
    fmt: the prompt format whose last prompt token is read (data.prompt)."""
    if not forget:
        raise ValueError("probe needs forget=<QAItems>")
    b = bind(fmt, tok)
    with measure_cost() as cost:
        rec = {"logit_lens": logit_lens(model, tok, list(forget), batch_size, fmt=b).to_json(), "prompt_format": b.record()}
        if retain:
            rec["linear_probe"] = linear_probe(model, tok, list(retain), list(forget), layers, batch_size=batch_size,
                                               fmt=b).to_json()
    return AttackResult(None, {"attack": "probe", "config": {"layers": layers, "n_forget": len(forget),
                                                            "n_retain": len(retain or [])}, "cost": cost, **rec})
