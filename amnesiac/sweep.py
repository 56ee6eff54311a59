"""`amnesiac sweep`: the paper's learning-rate figure (docs/science.md §1).

Unlearns one target at each learning rate (fixed step budget, no early stop, cached per lr), evaluates
each unlearned model at each precision, and draws forget and retain recall vs lr (one line per precision)
plus the collapse rate at 4 bits vs lr. Small lr ⇒ small update that quantization may undo; large lr ⇒
update survives quantization but costs retain; SURE is meant to get both — or the plot shows it does not.
The second axis (how far the target sits off the release grid) is in sweep_offset.py.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .attacks.quant.spec import BIT_WIDTHS as BITS  # bit width -> deployment name; 16 = full precision
from .errors import UserError
from .io import hash_obj, read_json, versions, write_json
from .models.resolve import model_content_key as content_key  # folders, .gguf, hub ids, adapters
from .data.prompt import PromptOptions
from .runs import cached_measure, cached_unlearn, check_precisions, items_key, reference_dtype, sweep_recipe

COLLAPSE_VERSION = 2  # bump when the cached collapse record changes
COLLAPSE_KEYS = ("collapse_rate", "drift_kept", "changed_fraction", "changed_in_zero_bin", "update_l1_in_zero_bin",
                 "zero_bin_fraction", "target_over_step_changed_hist")  # where the update went (§1c)


@dataclass
class SweepConfig(PromptOptions):  # the prompt format (template, chat_template, system_prompt) of every run and measurement
    method: str = "npo_klr"
    lrs: list[float] = field(default_factory=lambda: [1e-6, 3e-6, 1e-5, 3e-5, 1e-4])
    bits: list[int] = field(default_factory=lambda: [16, 8, 4, 3])
    precision: list[str] = field(default_factory=lambda: ["float32"])  # unlearning precisions: float32,bfloat16,bf16-mixed
    sure_percentile: float | None = None
    robust_to: str | None = None  # quantization-aware runs (docs/science.md §2b): e.g. "rtn4_g64"
    max_steps: int = 60
    batch_size: int = 8
    seed: int = 0
    metric: str | None = None  # the recall metric (measure.METRICS); None: chosen from the data (measure.scoring_for)

    def check(self) -> None:
        self.prompt_format()  # a template without {question}, a system prompt without a chat template
        from .measure import check_metric

        check_metric(self.metric)
        bad = [b for b in self.bits if b not in BITS]
        if bad:
            raise UserError(f"unsupported bit widths {bad}; available: {sorted(BITS)} (16 = full precision)")
        if not self.lrs or any(lr <= 0 for lr in self.lrs):
            raise UserError("learning rates must be positive and at least one must be given")
        check_precisions(self.precision)
        if self.robust_to:
            from .attacks.quant.spec import parse_names

            parse_names(self.robust_to)  # unknown quantizer names fail here, before any model is built


@dataclass
class SweepOptions(PromptOptions):
    """What `amnesiac sweep` takes: the learning-rate sweep (SweepConfig) or, with grid_offset, the offset sweep
    (sweep_offset.OffsetSweepConfig). The list defaults differ between the two, so None means "that sweep's"."""
    method: str = SweepConfig.method  # unlearning method of every run
    lr: list[float] | None = None  # learning rates (default 1e-6,3e-6,1e-5,3e-5,1e-4; with --grid-offset one lr, default 1e-4)
    grid_offset: list[float] | None = None  # second axis: offsets of the target from the 4-bit release grid, in steps (e.g. 0,0.1,0.2,0.4)
    bits: list[int] | None = None  # bit widths, 16 = full precision (default 16,8,4,3; with --grid-offset 16,8,4)
    sure: float | None = None  # SURE percentile (e.g. 90) for every run
    precision: list[str] = field(default_factory=lambda: ["float32"])  # unlearning precisions, an axis next to --lr: float32,bfloat16,bf16-mixed
    robust_to: str | None = None  # quantization-aware runs through these formats (e.g. rtn4_g64)
    max_steps: int = SweepConfig.max_steps  # optimizer steps per run (no early stop: a fixed budget)
    seed: int = SweepConfig.seed  # unlearning seed; with --grid-offset also the offset directions
    metric: str | None = None  # recall metric (e.g. rougeL_recall for chat answers); None: chosen from the data

    def config(self):
        """The checked SweepConfig, or OffsetSweepConfig when grid_offset is given (UserError on bad values)."""
        common = dict(method=self.method, sure_percentile=self.sure, robust_to=self.robust_to, max_steps=self.max_steps,
                      seed=self.seed, precision=list(self.precision), template=self.template, chat_template=self.chat_template,
                      system_prompt=self.system_prompt, metric=self.metric)
        if self.grid_offset is not None:
            from .sweep_offset import OffsetSweepConfig

            if self.lr is not None and len(self.lr) != 1:
                raise UserError("--grid-offset sweeps offsets at one learning rate; give one --lr")
            cfg = OffsetSweepConfig(offsets=list(self.grid_offset), **common,
                                    **({"lr": self.lr[0]} if self.lr else {}), **({"bits": list(self.bits)} if self.bits else {}))
        else:
            cfg = SweepConfig(**common, **({"lrs": list(self.lr)} if self.lr is not None else {}),
                              **({"bits": list(self.bits)} if self.bits else {}))
        cfg.check()
        return cfg


def sweep(opts: SweepOptions, target: str | Path | None, forget: str, retain: str, out: str | Path | None = None,
          scenario: str = "trained", log=print) -> tuple[dict, Path]:
    """`amnesiac sweep`: the learning-rate sweep, or the grid-offset sweep when opts.grid_offset is given, of
    `target` (default: the prepared tiny target of `scenario`) on data specs forget / retain, into `out`
    (default sweep/ or sweep_offset/). Returns (summary, out)."""
    from .data import load_dataset

    cfg = opts.config()  # every option checked before any model is built
    if target is None:
        from .models import tiny
        from .scenarios import scenario_models

        kw = {"template": cfg.prompt_format().template} if opts.template is not None else {}  # trained in it too
        target = scenario_models(tiny.prepare("xs", 0, log=log, **kw), scenario, log)["target"]
    fset, rset = load_dataset(forget), load_dataset(retain)
    if opts.grid_offset is not None:
        from .sweep_offset import run_offset_sweep

        out = Path(out or "sweep_offset")
        return run_offset_sweep(target, fset, rset, out, cfg, log=log), out
    out = Path(out or "sweep")
    return run_sweep(target, fset, rset, out, cfg, log=log), out


def run_sweep(target: str | Path, forget, retain, out: str | Path, cfg: SweepConfig | None = None,
              log=print) -> dict:
    """See _run_sweep; writes into `out`, never into the target model or a folder amnesiac did not write."""
    from .io import claim_output

    with claim_output(out, [target], kind="sweep", resume=True, inplace=True) as claim:
        claim.begin()
        return _run_sweep(target, forget, retain, out, cfg, log)


def _run_sweep(target: str | Path, forget, retain, out: str | Path, cfg: SweepConfig | None = None,
              log=print) -> dict:
    from .attacks.collapse import collapse_diagnostics
    from .attacks.quant.spec import quantizer_from_name
    from .measure import scoring_for
    from .models import load_model

    cfg = cfg or SweepConfig()
    cfg.check()
    if not forget:
        raise UserError("the forget set is empty", "give a --forget set with at least one item")
    out, target = Path(out), Path(target)
    t0 = time.time()
    scoring = scoring_for(forget, cfg.metric)
    metric = scoring.metric
    tmodel, tok = load_model(target, device="cpu")
    q4 = quantizer_from_name(BITS[4])
    rows = []
    sets = {"forget": forget, "retain": retain}
    for prec, lr in [(p, lr) for p in cfg.precision for lr in cfg.lrs]:
        opts = sweep_recipe(cfg, lr, prec)
        udir = cached_unlearn(target, forget, retain, opts, out / "models",
                              tag=f"lr{lr:g}" + ("" if prec == "float32" else f"-{prec}"),
                              log=lambda m: log(f"[sweep] {m}"))
        held: list = []

        def loaded():
            if not held:
                held.append(load_model(udir, device="cpu"))
            return held[0]

        ev = {str(b): cached_measure(udir, BITS[b], sets, scoring, out / "cache", loaded=loaded, fmt=cfg.prompt_format())
              for b in cfg.bits}
        cp = out / "cache" / f"collapse-{hash_obj([content_key(target), content_key(udir), COLLAPSE_VERSION])}.json"
        if cp.exists():
            d = read_json(cp)
        else:
            d = collapse_diagnostics(tmodel, loaded()[0], q4, target_dtype=reference_dtype(prec))["overall"]
            d = {k: d.get(k) for k in COLLAPSE_KEYS}
            write_json(cp, d)
        rounded = (read_json(udir / "unlearn.json").get("rounded_away") or {}).get("mean")
        for b, v in ev.items():
            rows.append({"lr": lr, "precision": prec, "bits": int(b), "metric": metric,
                         "forget_recall": float(np.mean(v["forget"][metric])),
                         "retain_recall": float(np.mean(v["retain"][metric])),
                         "collapse_rate_4bit": d["collapse_rate"], "drift_kept_4bit": d["drift_kept"],
                         "where_4bit": {k: d.get(k) for k in COLLAPSE_KEYS[2:]}, "rounded_away": rounded,
                         "model": str(udir)})
    summary = {"schema": "amnesiac.sweep/2", "config": cfg.__dict__, "target": str(target),
               "target_key": content_key(target), "data": {"forget": items_key(forget), "retain": items_key(retain)},
               "scoring": scoring.to_json(), "prompt_format": cfg.prompt_format().record(), "rows": rows, "versions": versions(), "wall_s": round(time.time() - t0, 1)}
    write_json(out / "summary.json", summary)
    _plots(summary, out)
    return summary


def _plots(summary: dict, out: Path) -> None:
    from .report import Section, plots, write_report

    rows = summary["rows"]
    series_f: dict[str, list] = {}
    series_r: dict[str, list] = {}
    precs = sorted({r.get("precision", "float32") for r in rows})
    for r in rows:
        name = "full precision" if r["bits"] == 16 else f"{r['bits']}-bit"
        if len(precs) > 1:
            name = f"{r.get('precision', 'float32')}, {name}"
        series_f.setdefault(name, []).append((r["lr"], r["forget_recall"]))
        series_r.setdefault(name, []).append((r["lr"], r["retain_recall"]))
    coll: dict[str, list] = {}
    for p in precs:
        coll[f"collapse rate (4-bit), {p}"] = sorted({(r["lr"], r["collapse_rate_4bit"]) for r in rows
                                                     if r.get("precision", "float32") == p})
    m = summary["config"]["method"]
    imgs = [(f"{m}: forget recall vs lr", plots.lines_by_x(series_f, "learning rate", "forget recall", f"{m}: forget", logx=True)),
            (f"{m}: retain recall vs lr", plots.lines_by_x(series_r, "learning rate", "retain recall", f"{m}: retain", logx=True)),
            (f"{m}: 4-bit codes unchanged vs lr", plots.lines_by_x(coll, "learning rate", "collapse rate", "collapse rate", logx=True))]
    (out / "sweep_lr_forget.png").write_bytes(imgs[0][1])  # the figure on its own, e.g. for a README
    table = [["precision", "lr", "bits", "forget recall", "retain recall", "codes unchanged 4b", "drift kept 4b",
              "update L1 in zero bin 4b"]]
    table += [[r.get("precision", "float32"), f"{r['lr']:g}", str(r["bits"]), f"{r['forget_recall']:.2f}",
               f"{r['retain_recall']:.2f}", f"{100 * r['collapse_rate_4bit']:.1f}%",
               _num(r["drift_kept_4bit"]), _num((r.get("where_4bit") or {}).get("update_l1_in_zero_bin"))]
              for r in rows]
    write_report(out, f"amnesiac sweep: {m}", [Section("Learning-rate sweep", "", table, imgs)], stem="sweep")


def _num(x) -> str:
    return "-" if x is None else f"{x:.2f}"
