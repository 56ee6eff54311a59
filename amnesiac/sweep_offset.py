"""`amnesiac sweep --grid-offset`: recovery vs how far the target sits off the release grid (docs/science.md §1b).

§1b measured that 4-bit re-quantization brings forgotten knowledge back when the target's weights sit on
the release grid and not when the target is trained normally. This axis draws the curve in between.

The off-grid target T_o (one per requested offset o, in steps Δ of the release grid, 0 ≤ o < 0.5):
    T_o = Q(w) + s·o·Δ   for every weight of every Linear layer,
where Q is the release grid (RTN 4-bit symmetric, group 64: demo.RELEASE_GRID), Δ the step of the weight's
group and s = ±1 a sign drawn once per weight from `seed` (the same signs for every o, so the targets differ
only in o). Two exceptions keep the grid itself fixed, since a symmetric grid is set by each group's absmax:
the first weight of each group at |code| = qmax (the absmax) stays where it is, and the other weights at
|code| = qmax move inward; all-zero groups stay. Then every other weight lies *exactly* o steps from its
grid point, Q(T_o) = Q(w), and RTN.position measures it (reported per offset: mean, quantiles, share at o).

Why this construction rather than "fine-tune a little off the grid": it sets the offset exactly and
identically for every weight, so the x axis means one thing; a fine-tune spreads the offsets over [0, 0.5]
by an amount that depends on its lr and steps (§1b's 0.14 / 0.38 figures are means of such spreads). The
price: T_o is Q(w) plus structured noise of size o·Δ, which may cost the target some knowledge at larger o
(the target's own recall is measured and plotted at each o, so that is visible).

Each T_o is unlearned with one method / lr / step budget (cached), measured at full precision and at the
requested bit widths (4 = re-quantized to the release grid), with the collapse diagnostic at 4 bits.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .attacks.quant.spec import BIT_WIDTHS as BITS  # bit width -> deployment name; 4 = the release grid
from .errors import UserError
from .io import content_key, hash_obj, read_json, versions, write_json
from .data.prompt import PromptOptions
from .runs import cached_measure, cached_unlearn, check_precisions, reference_dtype, sweep_recipe

RELEASE_GRID = BITS[4]


@dataclass
class OffsetSweepConfig(PromptOptions):  # the prompt format (template, chat_template, system_prompt) of every run and measurement
    method: str = "npo_klr"
    lr: float = 1e-4
    offsets: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.4])
    bits: list[int] = field(default_factory=lambda: [16, 8, 4])
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
        if not self.offsets or any(not 0 <= o < 0.5 for o in self.offsets):
            raise UserError(f"grid offsets must lie in [0, 0.5) steps (0.5 is a rounding tie); got {self.offsets}")
        if self.lr <= 0:
            raise UserError(f"the learning rate must be positive, got {self.lr}")
        check_precisions(self.precision)
        if self.robust_to:
            from .attacks.quant.spec import parse_names

            parse_names(self.robust_to)


def release_quantizer():
    from .attacks.quant.spec import quantizer_from_name

    return quantizer_from_name(RELEASE_GRID)


@torch.no_grad()
def offset_from_grid(model, quantizer, offset: float, seed: int = 0):
    """A copy of `model` whose Linear weights sit `offset` steps off `quantizer`'s symmetric grid (module doc).
    Returns (model, info) with info = realised_offset(...) of the result."""
    from .attacks.quant.apply import select_weights
    from .attacks.quant.rtn import group_view

    if getattr(quantizer, "scheme", None) != "sym" or not hasattr(quantizer, "quantize"):
        raise ValueError("the grid-offset construction needs a symmetric RTN grid (absmax sets the step); "
                         f"got {getattr(quantizer, 'name', quantizer)!r}")
    if not 0 <= offset < 0.5:
        raise ValueError(f"offset must lie in [0, 0.5) steps, got {offset}")
    m = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    qmax = 2 ** (quantizer.bits - 1) - 1
    for _, w in select_weights(m):
        R, C = w.shape
        qt = quantizer.quantize(w)
        codes = qt.codes.float()  # (R, G, g) grouped view, remainder group padded by its last column
        sign = torch.randint(0, 2, (R, C), generator=gen).float() * 2 - 1
        sign = group_view(sign, quantizer.group).clone()
        edge = codes.abs() == qmax
        sign = torch.where(edge, -torch.sign(codes), sign)  # absmax ties move inward ...
        anchor = torch.zeros_like(edge)
        anchor.scatter_(-1, codes.abs().argmax(-1, keepdim=True), True)  # ... but the first one stays: Δ is kept
        zero_group = (codes == 0).all(-1, keepdim=True)
        move = ~(anchor | zero_group)
        new = qt.scale * (codes + torch.where(move, sign * offset, torch.zeros_like(sign)))
        w.copy_(new.reshape(R, -1)[:, :C].to(w.dtype))
    return m, realised_offset(m, quantizer, offset)


@torch.no_grad()
def realised_offset(model, quantizer, requested: float | None = None) -> dict:
    """Distribution of each weight's distance to its nearest grid point, |pos − round(pos)| with
    pos = RTN.position(w) (the grid recomputed from w itself, as a user re-quantizing would)."""
    from .attacks.quant.apply import select_weights

    offs = []
    for _, w in select_weights(model):
        pos = quantizer.position(w)
        offs.append((pos - torch.round(pos)).abs().flatten())
    off = torch.cat(offs).double().numpy()
    q = np.quantile(off, [0.05, 0.5, 0.95])
    info = {"n_weights": int(off.size), "mean": float(off.mean()), "p05": float(q[0]), "median": float(q[1]),
            "p95": float(q[2]), "at_zero": float(np.mean(off < 1e-4))}
    if requested is not None:
        info["requested"] = requested
        info["at_requested"] = float(np.mean(np.abs(off - requested) < 1e-4))
    return info


def build_offset_target(target: Path, offset: float, seed: int, out: Path, log=print) -> Path:
    """T_o written once (cached by source model, offset and seed) with offset.json holding the measurement."""
    from .models import load_model, save_model

    dst = out / "targets" / f"offset{offset:g}-{hash_obj({'t': content_key(target), 'o': offset, 's': seed}, 8)}"
    if (dst / "offset.json").exists():
        return dst
    log(f"[sweep] target {offset:g} steps off the release grid")
    m, tok = load_model(target, device="cpu")
    q = release_quantizer()
    mo, realised = offset_from_grid(m, q, offset, seed)
    save_model(mo, tok, dst)
    write_json(dst / "offset.json", {"source": str(target), "offset": offset, "seed": seed,
                                     "grid": q.config(), "realised": realised})
    return dst


def _recalls(model_dir: Path, forget, retain, bits: list[int], scoring, cache: Path, fmt=None) -> dict:
    """Mean forget / retain score of `model_dir` at each bit width in prompt format `fmt` (runs.cached_measure,
    keyed by content)."""
    from .models import load_model

    held: list = []

    def loaded():
        if not held:
            held.append(load_model(model_dir, device="cpu"))
        return held[0]

    out = {}
    for b in bits:
        r = cached_measure(model_dir, BITS[b], {"forget": forget, "retain": retain}, scoring, cache, loaded=loaded, fmt=fmt)
        out[str(b)] = {"forget_recall": float(np.mean(r["forget"][scoring.metric])),
                       "retain_recall": float(np.mean(r["retain"][scoring.metric]))}
    return {"bits": out}


def run_offset_sweep(target: str | Path, forget, retain, out: str | Path, cfg: OffsetSweepConfig | None = None,
                     log=print) -> dict:
    """See _run_offset_sweep; writes into `out`, never into the target model or a folder amnesiac did not write."""
    from .io import claim_output

    with claim_output(out, [target], kind="sweep-offset", resume=True, inplace=True) as claim:
        claim.begin()
        return _run_offset_sweep(target, forget, retain, out, cfg, log)


def _run_offset_sweep(target: str | Path, forget, retain, out: str | Path, cfg: OffsetSweepConfig | None = None,
                     log=print) -> dict:
    from .attacks.collapse import collapse_diagnostics
    from .measure import scoring_for
    from .models import load_model

    cfg = cfg or OffsetSweepConfig()
    cfg.check()
    if not forget:
        raise UserError("the forget set is empty", "give a --forget set with at least one item")
    out, target = Path(out), Path(target)
    t0 = time.time()
    scoring = scoring_for(forget, cfg.metric)
    q4 = release_quantizer()
    rows = []
    for o, prec in [(o, p) for o in cfg.offsets for p in cfg.precision]:
        tdir = build_offset_target(target, o, cfg.seed, out, log)
        opts = sweep_recipe(cfg, cfg.lr, prec)
        udir = cached_unlearn(tdir, forget, retain, opts, out / "models",
                              tag=f"offset{o:g}" + ("" if prec == "float32" else f"-{prec}"),
                              log=lambda m: log(f"[sweep] {m}"))
        ev_t = _recalls(tdir, forget, retain, cfg.bits, scoring, out / "cache", cfg.prompt_format())
        ev_u = _recalls(udir, forget, retain, cfg.bits, scoring, out / "cache", cfg.prompt_format())
        cp = out / "cache" / f"collapse-{hash_obj([content_key(tdir), content_key(udir), 2])}.json"
        if not cp.exists():
            tmodel, _ = load_model(tdir, device="cpu")
            umodel, _ = load_model(udir, device="cpu")
            d = collapse_diagnostics(tmodel, umodel, q4, target_dtype=reference_dtype(prec))["overall"]
            write_json(cp, {k: d[k] for k in ("collapse_rate", "value_identical", "drift_kept", "mean_abs_dw_over_step",
                                              "changed_fraction", "changed_in_zero_bin", "update_l1_in_zero_bin")})
        col = read_json(cp)
        realised = read_json(tdir / "offset.json")["realised"]
        for b in cfg.bits:
            u, t = ev_u["bits"][str(b)], ev_t["bits"][str(b)]
            rows.append({"offset": o, "precision": prec, "bits": b, "metric": scoring.metric, "forget_recall": u["forget_recall"], "retain_recall": u["retain_recall"],
                         "target_forget_recall": t["forget_recall"], "target_retain_recall": t["retain_recall"],
                         "collapse_rate_4bit": col["collapse_rate"], "drift_kept_4bit": col["drift_kept"],
                         "mean_abs_dw_over_4bit_step": col["mean_abs_dw_over_step"],
                         "update_l1_in_zero_bin_4bit": col.get("update_l1_in_zero_bin"),
                         "realised_offset_mean": realised["mean"], "realised_at_requested": realised["at_requested"],
                         "target": str(tdir), "model": str(udir)})
    summary = {"schema": "amnesiac.sweep_offset/2", "config": cfg.__dict__, "source_target": str(target),
               "scoring": scoring.to_json(), "prompt_format": cfg.prompt_format().record(),
               "release_grid": q4.config(), "rows": rows, "seed": cfg.seed, "versions": versions(),
               "wall_s": round(time.time() - t0, 1)}
    write_json(out / "summary.json", summary)
    _plots(summary, out)
    return summary


def _plots(summary: dict, out: Path) -> None:
    from .report import Section, plots, write_report

    rows, m = summary["rows"], summary["config"]["method"]
    lr = summary["config"]["lr"]
    name = {16: "full precision"}
    fseries: dict[str, list] = {"target, full precision": sorted({(r["offset"], r["target_forget_recall"])
                                                                  for r in rows if r["bits"] == 16})}
    multi = len({r.get("precision", "float32") for r in rows}) > 1
    cset: dict[str, set] = {}
    for r in rows:
        lab = name.get(r["bits"], f"{r['bits']}-bit" + (" (release grid)" if r["bits"] == 4 else ""))
        p = f"{r.get('precision', 'float32')}, " if multi else ""
        fseries.setdefault(f"unlearned, {p}{lab}", []).append((r["offset"], r["forget_recall"]))
        cset.setdefault(f"4-bit codes unchanged, {p}unlearned vs target", set()).add((r["offset"], r["collapse_rate_4bit"]))
    coll = {k: sorted(v) for k, v in cset.items()}
    fig_f = plots.lines_by_x(fseries, "target's offset from the release grid (steps)", "forget recall",
                             f"{m} (lr {lr:g}): forget recall vs grid offset")
    fig_c = plots.lines_by_x(coll, "target's offset from the release grid (steps)", "collapse rate",
                             "codes unchanged at 4 bits", ylim=None)
    (out / "sweep_offset_forget.png").write_bytes(fig_f)
    (out / "sweep_offset_collapse.png").write_bytes(fig_c)
    table = [["offset (requested / measured mean)", "precision", "bits", "forget recall (target → unlearned)",
              "retain recall (target → unlearned)", "codes unchanged 4b", "drift kept 4b"]]
    table += [[f"{r['offset']:g} / {r['realised_offset_mean']:.3f}", r.get("precision", "float32"), str(r["bits"]),
               f"{r['target_forget_recall']:.2f} → {r['forget_recall']:.2f}",
               f"{r['target_retain_recall']:.2f} → {r['retain_recall']:.2f}", f"{100 * r['collapse_rate_4bit']:.1f}%",
               "-" if r["drift_kept_4bit"] is None else f"{r['drift_kept_4bit']:.2f}"] for r in rows]
    text = ("Each target is the source target rounded onto the release grid (RTN 4-bit sym g64) with every weight "
            "then moved o steps off it in a seeded random direction (group absmax anchors kept, so the grid is "
            "unchanged); 'measured mean' is the mean distance to the nearest grid point from RTN.position, which "
            "includes the anchors at 0.")
    write_report(out, f"amnesiac sweep: {m} vs grid offset",
                 [Section("Grid-offset sweep", text, table, [("forget recall vs grid offset", fig_f),
                                                             ("collapse rate vs grid offset", fig_c)])],
                 stem="sweep_offset")
