"""Collapse diagnostic (docs/science.md §1b) on constructed model pairs with known answers."""
import copy

import pytest
import torch

from amnesiac.attacks import apply_attack, collapse_diagnostics, released_quantized
from amnesiac.attacks.quant import RTN, select_weights

Q = RTN(4, 16, "sym")


def _perturb(model, fn):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, w in select_weights(m):
            w.copy_(fn(name, w))
    return m


def test_identical_models_collapse_fully(tiny_model):
    rep = collapse_diagnostics(tiny_model, copy.deepcopy(tiny_model), Q)
    o = rep["overall"]
    assert o["collapse_rate"] == 1.0 and o["value_identical"] == 1.0 and o["changed_fraction"] == 0.0
    assert o["drift_kept"] is None  # nothing moved: ratio undefined, reported as such
    assert len(rep["layers"]) == 14 and sum(o["dw_over_step_hist"]) == o["n_weights"]
    assert 0.2 < o["grid_offset_mean"] < 0.3  # random init: offsets ~ uniform on [0, 0.5]


def test_large_change_breaks_collapse(tiny_model):
    torch.manual_seed(0)
    u = _perturb(tiny_model, lambda n, w: w + torch.randn_like(w) * w.std())
    o = collapse_diagnostics(tiny_model, u, Q)["overall"]
    assert o["collapse_rate"] < 0.5 and o["frac_dw_ge_half_step"] > 0.3
    assert 0.5 < o["drift_kept"] < 1.5  # rounding carries a large update on average


def _masked_update(w, step_fn, Qz):
    """An update that leaves each group's absmax weight alone (so the grid itself does not move)."""
    qt = Qz.quantize(w)
    keep = (w.abs() == w.abs().view(w.shape[0], -1, 16).amax(-1, keepdim=True).expand(-1, -1, 16).reshape(w.shape))
    d = step_fn(qt.step_flat())
    return torch.where(keep, torch.zeros_like(d), d)


def test_drift_kept_zero_on_grid_subhalf_step(tiny_model):
    # on-grid target (released quantized) + an update of 0.3 Δ: every code stays, Q(w_u) = Q(w_t) → drift kept 0
    target = released_quantized(tiny_model, Q)
    u = _perturb(target, lambda n, w: w + _masked_update(w, lambda s: 0.3 * s, Q))
    o = collapse_diagnostics(target, u, Q)["overall"]
    assert o["collapse_rate"] == 1.0 and o["drift_kept"] == pytest.approx(0.0, abs=1e-6)
    assert o["grid_offset_mean"] < 1e-4  # the target sits on the grid
    assert o["changed_fraction"] > 0.8 and o["mean_abs_dw_over_step"] > 0.2


def test_drift_kept_one_for_whole_steps(tiny_model):
    # on-grid target + exactly one step down (away from the clamp edge for positive weights): Q(w_u) − Q(w_t) = Δw
    target = released_quantized(tiny_model, Q)
    u = _perturb(target, lambda n, w: w + _masked_update(w, lambda s: -s, Q) * (w > 0))
    o = collapse_diagnostics(target, u, Q)["overall"]
    assert o["drift_kept"] == pytest.approx(1.0, abs=1e-4)
    assert o["collapse_rate"] < 0.6 and o["value_identical"] == o["collapse_rate"]


def test_registered_collapse_and_cache(tiny_model):
    cache = {}
    u = copy.deepcopy(tiny_model)
    r1 = apply_attack("collapse", u, None, target=tiny_model, bits=4, group=16)
    assert r1.model is None and r1.record["overall"]["collapse_rate"] == 1.0 and "wall_s" in r1.record["cost"]
    collapse_diagnostics(tiny_model, u, Q, cache=cache)
    n = len(cache)
    collapse_diagnostics(tiny_model, u, Q, cache=cache)
    assert n == 14 and len(cache) == n  # target quantized once
    with pytest.raises(TypeError, match="integer codes"):
        collapse_diagnostics(tiny_model, u, lambda w: w)
