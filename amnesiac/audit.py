"""`amnesiac audit`: attack an unlearned model every cheap way, measure what comes back, give a verdict.

Models: target T (before unlearning), unlearned U, optionally retrained R (never saw the forget set).
Each attack is applied to every model the same way and measured by the one measuring layer
(measure.py: every knowledge metric that applies to the data, per item). The verdict (metrics/recovery.py
`judge`, docs/science.md §7) uses the metric the data calls for (`measure.scoring_for`: exact match for short
answers, ROUGE-L recall for long ones, fact completion for completion facts; `--metric` overrides): an
attack FAILs the unlearning when U under it exceeds R under the same attack and U's own full-precision
level, by ≥ margin, Holm-corrected over all attacks; INCONCLUSIVE when T does not show the knowledge
measurably above R. Without R the floor is U's own full-precision level. Results are cached per
(model content, attack, data, settings) under OUT/cache: a killed audit resumes, a model re-written at the
same path is measured again. Exactly one model is in memory at a time: every attack is a registered attack
(attacks/base.py `attacked`), and those that change weights (quantization, relearning) change the resident
model itself and put its original tensors back afterwards, read one at a time from its saved safetensors
(attacks/restore.py), so no attack holds a second copy.
"""
from __future__ import annotations

import gc
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .attacks.quant.spec import is_quantizer
from .data.prompt import PromptFormat
from .data.schema import QAItem
from .errors import UserError
from .audit_config import SUITES, AuditConfig, available_attacks  # noqa: F401  (SUITES re-exported)
from .audit_results import metric_effects, metric_summaries, peak_memory, present_metrics
from .io import hash_obj, read_json, versions, write_json, write_jsonl
from .models.resolve import model_content_key as content_key  # folders, .gguf, hub ids, adapters
from .measure import GEN_SLACK as GEN_BUDGET_SLACK

def quantizer_for(name: str):
    from .attacks.quant.spec import quantizer_from_name

    return quantizer_from_name(name)


# ----------------------------------------------------------------------------- measuring one model

def knowledge_at(model, tok, forget: list[QAItem], retain: list[QAItem], deployment: str = "fp",
                 scoring=None, batch_size: int = 64, fmt=None) -> dict[str, list]:
    """measure() of `model` deployed as `deployment` (a quantizer name or "fp") in prompt format `fmt`: per-item
    scores of the forget and retain sets (flat keys forget_<metric> / retain_<metric>, forget_outputs)."""
    from .attacks.quant.calib import calib_texts_from_items
    from .attacks.quant.deploy import deployed
    from .data.prompt import bind
    from .measure import measure, scoring_for

    scoring = scoring or scoring_for(forget)
    b = bind(fmt, tok)
    with deployed(model, tok, deployment, calib_texts_from_items(retain, b)) as (m, _):
        return flatten(measure(m, tok, {"forget": forget, "retain": retain}, scoring, batch_size=batch_size, fmt=b))


def flatten(r: dict[str, dict[str, list]]) -> dict[str, list]:
    out = {f"{s}_{k}": v for s, d in r.items() for k, v in d.items() if k != "outputs"}
    if "outputs" in r.get("forget", {}):
        out["forget_outputs"] = r["forget"]["outputs"]
    return out


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

    def prompt_format(self) -> PromptFormat:
        """The format every model is measured in: the one recorded in the unlearned model's unlearn.json unless
        options name one; options that differ from the recorded format are refused (data.prompt.resolve_format)."""
        from .data.prompt import resolve_format

        return resolve_format(self.config.prompt_format(), self.config.prompt_explicit(), self.unlearned)

    def _format(self) -> PromptFormat:
        if getattr(self, "_fmt", None) is None:
            self._fmt = self.prompt_format()
        return self._fmt

    def _bind(self, tok):
        return self._format().bind(tok)

    def _cache(self, model: str, attack: str) -> Path:
        return self.out / "cache" / f"{model}__{attack}.json"

    def run(self) -> dict:
        """The audit, writing into `out` (docs/guides/errors-and-outputs.md): never into or over an input model,
        never into a folder amnesiac did not write; an earlier audit output there is resumed from its cache."""
        from .io import claim_output

        self._preflight()  # bad data or items too long for the model: refused before OUT is touched
        with claim_output(self.out, [self.target, self.unlearned, self.retrained], kind="audit", resume=True,
                          inplace=True) as claim:
            claim.begin()
            return self._run()

    def _preflight(self) -> None:
        from .measure import check_context, scoring_for

        if not self.forget:
            raise UserError("the forget set is empty: nothing to audit", "give a --forget set with at least one item")
        scoring_for(self.forget, self.config.metric)
        self._fmt = self.prompt_format()
        tok = None
        if self._fmt.chat_template:  # rendered now: a tokenizer without a chat template fails before OUT is touched
            from .models.load import load_tokenizer

            tok = load_tokenizer(self.target)
        b = self._fmt.bind(tok)
        self._rendered = b.record()  # as rendered for the target's tokenizer (summary.json)
        texts = [b.item_prompt(it) + b.item_answer(it, it.answer) for it in list(self.forget) + list(self.retain)]
        check_context(self.target, texts, GEN_BUDGET_SLACK, "forget/retain items",
                      "the audit generates the answer after each prompt: shorten or drop those items")

    def _run(self) -> dict:
        import torch

        from .attacks.base import resolve_attack
        from .measure import scoring_for
        from .metrics.recovery import Judged, judge

        cfg = self.config
        if not self.forget:
            raise UserError("the forget set is empty: nothing to audit", "give a --forget set with at least one item")
        scoring = scoring_for(self.forget, cfg.metric)
        t0 = time.time()
        torch.manual_seed(cfg.seed)
        attacks, skipped = available_attacks(cfg.attack_list())
        from .attacks.prompts import inapplicable

        for n in list(attacks):
            why = inapplicable(n, self.forget, cfg.seed)
            if why:
                attacks.remove(n)
                skipped[n] = why
        if "fp" not in attacks:
            attacks = ["fp", *attacks]  # every floor and the verdict's target check need full precision
        # a quantization-aware model (unlearn --robust-to) ships in the format it was trained through: that
        # deployment is its reference level, the latent full-precision weights are one more attack on it
        shipped = self._shipped_format()
        if shipped and shipped not in attacks:
            attacks.append(shipped)
        rng = random.Random(cfg.seed)
        retain = list(self.retain)
        if len(retain) > cfg.max_retain:
            retain = [retain[i] for i in sorted(rng.sample(range(len(retain)), cfg.max_retain))]
        models = {"target": self.target, "unlearned": self.unlearned}
        if self.retrained:
            models["retrained"] = self.retrained
        keys = {m: content_key(p) for m, p in models.items()}  # what each model *is* (a re-written path re-measures)
        data_key = hash_obj({"forget": [it.to_json() for it in self.forget], "retain": [it.to_json() for it in retain],
                             "scoring": scoring.to_json(), "seed": cfg.seed, "batch": cfg.batch_size,
                             "relearn": [cfg.relearn_steps, cfg.relearn_lr], "v": 2, "dtype": cfg.dtype,
                             **({} if self._format().is_default else {"prompt_format": self._format().record()}),
                          "utility": [cfg.utility, cfg.utility_limit, cfg.utility_task_dirs]})
        res: dict[str, dict] = {m: {} for m in models}
        costs: dict[str, dict] = {}
        from tqdm.auto import tqdm

        bar = tqdm(total=len(models) * len(attacks), desc="audit")
        for m, path in models.items():
            loaded = originals = None
            for a in attacks:
                cp = self._cache(m, a)
                key = hash_obj([keys[m], data_key, a])
                if cp.exists():
                    c = read_json(cp)
                    if c.get("key") == key:
                        res[m][a], costs[f"{m}/{a}"] = c["result"], c["cost"]
                        bar.update(1)
                        continue
                if loaded is None:
                    loaded = self._load(path)
                model, tok = loaded
                if originals is None and resolve_attack(a)[1].modifies(a):  # built once, when first needed
                    originals = self._originals(model, path)
                s = time.time()
                r = self._one(model, tok, a, retain, scoring, originals)
                costs[f"{m}/{a}"] = {"wall_s": round(time.time() - s, 3)}
                res[m][a] = r
                write_json(cp, {"key": key, "result": r, "cost": costs[f"{m}/{a}"], "model_key": keys[m]})
                bar.update(1)
            if originals is not None:
                originals.close()
            del loaded, originals  # one model resident at a time
            gc.collect()
        bar.close()
        metric = scoring.metric
        t_fp = np.asarray(res["target"]["fp"][f"forget_{metric}"])
        rows = []
        ref = shipped or "fp"
        judged = [a for a in attacks if not (shipped and a == shipped)]
        for a in judged:
            sel = res["unlearned"][a].get("item_index")
            idx = np.asarray(sel) if sel is not None else np.arange(len(t_fp))
            fl = res.get("retrained", {}).get(a)
            rows.append(Judged(a, res["unlearned"][a][f"forget_{metric}"], t_fp[idx],
                               floor=fl[f"forget_{metric}"] if fl else None,
                               u_fp=None if a == ref else np.asarray(res["unlearned"][ref][f"forget_{metric}"])[idx],
                               extra={"retain": float(np.mean(res["unlearned"][a][f"retain_{metric}"]))
                                      if res["unlearned"][a].get(f"retain_{metric}") else None,
                                      **({"utility": {t: u["value"] for t, u in res["unlearned"][a]["utility"].items()}}
                                         if res["unlearned"][a].get("utility") else {})}))
        floor_value = cfg.floor
        if floor_value is None and not self.retrained and self.holdout:
            floor_value = self._holdout_floor(scoring)  # what the target scores on items it never saw
        v = judge(rows, metric, scoring.reason, n_boot=cfg.n_boot, seed=cfg.seed, margin=cfg.margin, alpha=cfg.alpha,
                  retrained_fp=res["retrained"]["fp"][f"forget_{metric}"] if "retrained" in res else None,
                  floor_value=floor_value)
        metric_effects(v["rows"], res, judged, present_metrics(res), cfg.seed, ref)
        if shipped:
            v["reference"] = {"format": shipped, "why": "the unlearned model was trained through this format "
                                                        "(unlearn --robust-to): its shipped artefact"}
        collapse = self._collapse(attacks, models)
        mia = self._mia(models) if cfg.mia and self.holdout else None
        present = present_metrics(res)
        summary = {
            "schema": "amnesiac.audit/2", "verdict": {k: v[k] for k in v if k != "rows"}, "models": models,
            "model_keys": keys, "attacks": attacks, "skipped_attacks": skipped, "scoring": scoring.to_json(),
            "metrics": present, "results": metric_summaries(res, present, cfg.seed), "recovery": v["rows"],
            "collapse": collapse, "mia": mia, "prompt_format": self._rendered,
            "config": {**asdict(cfg), "n_forget": len(self.forget), "n_retain_evaluated": len(retain)},
            "costs": costs, "versions": versions(), "seed": cfg.seed, "wall_s": round(time.time() - t0, 2),
            "peak_memory": peak_memory(),
        }
        write_json(self.out / "summary.json", summary)
        write_jsonl(self.out / "per_example.jsonl", [
            {"model": m, "attack": a, "item": i, "question": self.forget[j].question, "answer": self.forget[j].answer,
             **{k: r[f"forget_{k}"][i] for k in present if f"forget_{k}" in r},
             "output": r["forget_outputs"][i] if "forget_outputs" in r else None}
            for m, d in res.items() for a, r in d.items()
            for i, j in enumerate(r.get("item_index") or range(len(r[f"forget_{metric}"])))])
        return summary

    def _shipped_format(self) -> str | None:
        """The first --robust-to format recorded in the unlearned model's unlearn.json, if any."""
        from pathlib import Path as _P

        rec = _P(self.unlearned) / "unlearn.json"
        if not rec.is_file():
            return None
        fmts = ((read_json(rec).get("robust") or {}).get("robust_to")) or []
        fmts = [fmts] if isinstance(fmts, str) else list(fmts)
        names = [f.strip().lower() for x in fmts for f in str(x).split(",") if f.strip()]
        return names[0] if names and is_quantizer(names[0]) else None

    def _utility(self, model, tok) -> dict:
        """General utility of a model as attacked (lm-evaluation-harness), when asked for: {"utility": {task: value}}."""
        cfg = self.config
        if not cfg.utility:
            return {}
        from .metrics.utility import utility

        dirs = [d for d in (cfg.utility_task_dirs or "").split(",") if d.strip()] or None
        res = utility(model, tok, cfg.utility, limit=cfg.utility_limit, task_dirs=dirs, batch_size=cfg.batch_size)
        return {"utility": {t: {"value": r.value, "metric": r.meta.get("metric"), "higher_is_better": r.higher_is_better}
                            for t, r in res.items()}}

    def _load(self, path):
        from .models import load_model

        c = self.config
        return load_model(path, device=c.device, dtype=c.dtype, device_map=c.device_map)

    def _holdout_floor(self, scoring) -> float:
        """The target's mean score on the held-out items (never trained on): the metric's baseline for a
        model that does not know the answers (ROUGE-L gives template words some credit)."""
        from .measure import measure

        cp = self.out / "cache" / "target__holdout_floor.json"
        key = hash_obj([content_key(self.target), [it.to_json() for it in self.holdout], scoring.to_json()]
                       + ([] if self._format().is_default else [self._format().record()]))
        if cp.exists() and read_json(cp).get("key") == key:
            return read_json(cp)["floor"]
        model, tok = self._load(self.target)
        r = measure(model, tok, {"holdout": self.holdout}, scoring, batch_size=self.config.batch_size,
                    fmt=self._bind(tok))
        floor = float(np.mean(r["holdout"][scoring.metric]))
        write_json(cp, {"key": key, "floor": floor})
        return floor

    def _originals(self, model, path):
        """Where weight attacks read the model's original tensors back from: its safetensors when they are
        the loaded weights (checked tensor by tensor), else a spill file (attacks/restore.py)."""
        from .attacks.restore import Originals
        from .models.resolve import weights_dir

        return Originals(model, weights_dir(path), spill_dir=self.out / "cache")

    def _one(self, model, tok, attack: str, retain, scoring, originals=None) -> dict:
        """One registered attack on the resident model (in place, restored on exit), measured."""
        from .attacks.base import AttackContext, attacked
        from .attacks.quant.calib import calib_texts_from_items
        from .measure import measure

        cfg = self.config
        b = self._bind(tok)  # every attack prompts, trains and measures in the audit's one format
        # calibrated quantizers (GPTQ, AWQ) calibrate on the retain set: what a releaser would have at hand
        ctx = AttackContext(forget=list(self.forget), retain=retain, calib_texts=calib_texts_from_items(self.retain, b),
                            seed=cfg.seed, settings={"relearn_steps": cfg.relearn_steps, "relearn_lr": cfg.relearn_lr},
                            originals=originals, fmt=b)
        with attacked(attack, model, tok, ctx) as res:
            m = res.model if res.model is not None else model
            forget = self.forget if res.items is None else [self.forget[i] for i in res.items]
            sets = {"forget": forget, **({"retain": retain} if res.measure_retain else {})}
            kw = {}
            if res.prompts is not None:
                kw["prompts"] = {"forget": res.prompts}
            if res.stop_strings is not None:
                kw["stop_strings"] = {"forget": res.stop_strings}
            # a cloze statement is continued after a space, outside any QA format
            r = flatten(measure(m, tok, sets, scoring, batch_size=cfg.batch_size, fmt=None if attack == "cloze" else b, **kw))
            if res.items is not None:
                r["item_index"] = list(res.items)
            if res.model is not None:
                r.update(self._utility(m, tok))
            return r

    def _collapse(self, attacks, models) -> dict:
        """Collapse diagnostics (target vs unlearned, RTN quantizers): codes unchanged, drift kept. Cached by content."""
        from .attacks.collapse import collapse_diagnostics
        from .attacks.quant.spec import quantizer_config
        from .models import load_model

        rtn = [a for a in attacks if is_quantizer(a) and quantizer_config(a)["backend"] == "rtn"]
        if not rtn:
            return {}
        cp = self.out / "cache" / "collapse.json"
        key = hash_obj([content_key(models["target"]), content_key(models["unlearned"]), rtn])
        if cp.exists() and read_json(cp).get("key") == key:
            return read_json(cp)["result"]
        t, _ = load_model(models["target"], device="cpu", dtype=self.config.dtype)
        u, _ = load_model(models["unlearned"], device="cpu", dtype=self.config.dtype)
        out = {}
        for a in rtn:
            d = collapse_diagnostics(t, u, quantizer_for(a))
            out[a] = {"overall": d["overall"], "per_layer": {k: v["collapse_rate"] for k, v in d["layers"].items()}}
        write_json(cp, {"key": key, "result": out})
        return out

    def _mia(self, models) -> dict:
        from .core import score_pairs
        from .metrics import mia as M

        res = {}
        for m in models:
            model, tok = self._load(models[m])
            b = self._bind(tok)
            sides = {}
            for side, items in (("forget", self.forget), ("holdout", self.holdout)):
                sc = score_pairs(model, tok, [b.item_prompt(it) for it in items], [b.item_answer(it, it.answer) for it in items])
                sides[side] = [M.loss_score(lp) for lp in sc.token_logprobs]
            res[m] = {"loss_auc": M.auc_score(sides["forget"], sides["holdout"]),
                      "member_scores": sides["forget"], "nonmember_scores": sides["holdout"]}
            del model
            gc.collect()
        return res
