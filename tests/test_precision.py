"""Unlearning precision (float32 | bfloat16 | bf16-mixed), the rounded-away count, and where the update went
(docs/science.md §1c), with hand-computed values."""
from __future__ import annotations

import copy

import pytest
import torch

from amnesiac.core import score_pairs
from amnesiac.data import qa_answer, qa_prompt
from amnesiac.unlearn import unlearn
from amnesiac.unlearn.trainer import _rounded_away, _rounding_summary

FAST = dict(progress=False, batch_size=4)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def people(qa_people):
    return {"forget": qa_people["forget"], "retain": qa_people["retain"][:24]}


def _nll(model, tok, items) -> float:
    sc = score_pairs(model, tok, [qa_prompt(i.question) for i in items], [qa_answer(i.answer) for i in items])
    return float(-sc.sum.sum() / sc.lengths.sum())


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "bf16-mixed"])
def test_each_precision_unlearns(precision, trained_tiny, tok, people):
    model = copy.deepcopy(trained_tiny)
    f0 = _nll(model, tok, people["forget"])
    start = {n: p.detach().to(torch.bfloat16 if precision == "bfloat16" else torch.float32).clone()
             for n, p in model.named_parameters()}
    res = unlearn(model, people["forget"], people["retain"], tokenizer=tok, method="ga_gdr", lr=2e-3, max_steps=4,
                  precision=precision, track_rounding=True, **FAST)
    params = dict(res.model.named_parameters())
    want = torch.bfloat16 if precision == "bfloat16" else torch.float32  # bf16-mixed: fp32 master weights
    assert {p.dtype for p in params.values()} == {want}
    assert any(not torch.equal(params[n], start[n]) for n in start)
    assert _nll(res.model.float(), tok, people["forget"]) > f0 + 0.05  # the forget answers got less likely
    ra = res.info["rounded_away"]
    assert ra["steps"] == 4 and 0.0 <= ra["mean"] <= 1.0
    if precision == "bfloat16":  # tiny-model weights ~0.02–0.2 ≫ 256·lr/2: many updates are swallowed
        assert ra["mean"] > 0.05
    else:  # fp32 weights: an update of ~lr is far above half an fp32 ulp
        assert ra["mean"] < 1e-3


@pytest.mark.parametrize("dtype, expected", [(torch.bfloat16, 0.5), (torch.float32, 0.0)])
def test_update_below_half_ulp_rounds_away_in_bf16_only(dtype, expected):
    # AdamW's first step moves each weight by lr·m̂/(√v̂+ε) = lr = 1e-3 (here without weight decay). In bf16 the
    # value below 1.0 is 1 − 2⁻⁸ = 0.99609, so 1.0 − 1e-3 = 0.999 rounds back to 1.0 (|u| < 2⁻⁹ ≈ 0.00195):
    # swallowed. 1e-3 − 1e-3 ≈ 0 is representable: applied. float32 keeps both.
    w = torch.nn.Parameter(torch.tensor([1.0, 1e-3], dtype=dtype))
    opt = torch.optim.AdamW([w], lr=1e-3, weight_decay=0.0)
    w.grad = torch.tensor([1.0, 1.0], dtype=dtype)
    before = [w.detach().clone()]
    opt.step()
    assert _rounded_away(opt, [w], before) == expected
    assert float(w.detach()[0]) == (1.0 if dtype == torch.bfloat16 else pytest.approx(0.999, abs=1e-6))
    assert abs(float(w.detach()[1])) < 1e-5


def test_bf16_mixed_keeps_a_sub_ulp_update():
    # fp32 master weights under bf16 autocast: the same 1e-3 update on 1.0 is kept (0.999 in float32)
    w = torch.nn.Parameter(torch.tensor([1.0, 1e-3]))
    opt = torch.optim.AdamW([w], lr=1e-3, weight_decay=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = (w.to(torch.bfloat16) * torch.ones(2, dtype=torch.bfloat16)).sum()
    loss.float().backward()
    before = [w.detach().clone()]
    opt.step()
    assert w.dtype == torch.float32 and _rounded_away(opt, [w], before) == 0.0
    assert float(w.detach()[0]) == pytest.approx(0.999, abs=1e-6)


def test_rounding_summary_hand_values():
    s = _rounding_summary([0.2, 0.6, 0.5, 0.1])
    assert s == {"mean": 0.35, "first": 0.2, "last": 0.1, "steps_majority_away": 0.5, "steps": 4}
    assert _rounding_summary([]) is None


def test_bad_precision_names_the_choices():
    from amnesiac.errors import UserError
    from amnesiac.sweep import SweepConfig
    from amnesiac.unlearn import UnlearnConfig, UnlearnError

    with pytest.raises(UnlearnError, match="bf16-mixed"):
        UnlearnConfig(precision="fp8")
    with pytest.raises(UserError, match="available: float32, bfloat16, bf16-mixed"):
        SweepConfig(precision=["float32", "bf16"]).check()


def test_sweep_recipe_precision_axis():
    from amnesiac.runs import reference_dtype, sweep_recipe
    from amnesiac.sweep import SweepConfig

    cfg = SweepConfig()
    assert "precision" not in sweep_recipe(cfg, 1e-4)  # float32: the recipe (and cache key) from before the axis
    assert sweep_recipe(cfg, 1e-4, "bfloat16")["precision"] == "bfloat16"
    assert reference_dtype("bfloat16") == torch.bfloat16 and reference_dtype("bf16-mixed") is None


# ----- where the update went (attacks/collapse.py) -----

def _one_row(values) -> torch.nn.Module:
    m = torch.nn.Sequential(torch.nn.Linear(16, 1, bias=False))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([values], dtype=torch.float32))
    return m


# absmax 0.7 → Δ = 0.7 / 7 = 0.1 on a symmetric 4-bit grid of group 16; zero bin: |w| < 0.05 (10 weights)
TARGET = [0.7, 0.02, -0.04, 0.3, 0.12, 0.26, 0.5, 0.08] + [0.0] * 8


def test_update_location_hand_values():
    from amnesiac.attacks.collapse import collapse_diagnostics
    from amnesiac.attacks.quant import RTN

    u = list(TARGET)
    u[1], u[2], u[3], u[6] = 0.03, -0.01, 0.31, 0.46  # |Δw| 0.01, 0.03 (zero bin); 0.01, 0.04 (not)
    o = collapse_diagnostics(_one_row(TARGET), _one_row(u), RTN(4, 16, "sym"))["overall"]
    assert o["changed_fraction"] == 4 / 16
    assert o["zero_bin_fraction"] == 10 / 16
    assert o["changed_in_zero_bin"] == 2 / 4
    assert o["update_l1_in_zero_bin"] == pytest.approx(0.04 / 0.09, rel=1e-5)
    # |w_t|/Δ of the changed weights: 0.2, 0.4, 3, 5 → bins [0, .25), [.25, .5), [2, 4), [4, 8)
    assert o["target_over_step_changed_hist"] == [1, 1, 0, 0, 0, 1, 1, 0]


def test_update_location_nothing_moved_and_bf16_reference():
    from amnesiac.attacks.collapse import collapse_diagnostics
    from amnesiac.attacks.quant import RTN

    q = RTN(4, 16, "sym")
    t = _one_row(TARGET)
    cast = _one_row(torch.tensor(TARGET).to(torch.bfloat16).float().tolist())  # the target as a bf16 run starts
    o = collapse_diagnostics(t, cast, q)["overall"]
    assert o["changed_fraction"] == 7 / 16  # all but 0.5 and the eight zeros are off the bf16 grid
    o = collapse_diagnostics(t, cast, q, target_dtype=torch.bfloat16)["overall"]
    assert o["changed_fraction"] == 0.0
    assert o["changed_in_zero_bin"] is None and o["update_l1_in_zero_bin"] is None  # undefined, not 0
    assert o["target_over_step_changed_hist"] == [0] * 8
