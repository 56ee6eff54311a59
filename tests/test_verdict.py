"""The one verdict (metrics.recovery.judge) and its statistics, on hand-made numbers."""
import numpy as np
import pytest

from amnesiac.metrics.recovery import Judged, judge
from amnesiac.metrics.stats import holm, paired_test


def test_holm_on_hand_made_pvalues():
    # sorted p: 0.01 (×4 = 0.04), 0.02 (×3 = 0.06), 0.03 (×2 = 0.06 → monotone 0.06), 0.04 (×1 = 0.04 → 0.06)
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = holm([0.01, float("nan"), 0.02])  # NaN is not a test: m = 2
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_paired_test_numbers():
    x = np.r_[np.ones(8), np.zeros(2)]
    r = paired_test(x, np.zeros(10), n_resamples=2000, seed=0)
    assert r["diff"] == pytest.approx(0.8) and r["low"] <= 0.8 <= r["high"] and r["p"] == pytest.approx(1 / 2001)
    same = paired_test(x, x, n_resamples=500)
    assert same["diff"] == 0 and same["p"] == pytest.approx(1.0)  # every resampled difference is 0 (≤ 0)
    assert paired_test([0.3, 0.5], 0.1)["diff"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="equal-length"):
        paired_test([1, 2], [1])


def _rows(t, u, r=None):
    fp = u["fp"]
    return [Judged(a, v, t, floor=r, u_fp=None if a == "fp" else fp) for a, v in u.items()]


def test_fail_when_an_attack_recovers_above_retrained_and_own_fp():
    n = 60
    t = np.ones(n)
    u = {"fp": np.r_[np.ones(6), np.zeros(n - 6)], "rtn4_g64": np.r_[np.ones(50), np.zeros(n - 50)]}
    r = np.r_[np.ones(3), np.zeros(n - 3)]
    v = judge(_rows(t, u, r), "exact_match", retrained_fp=r, n_boot=2000)
    by = {x["attack"]: x for x in v["rows"]}
    assert v["verdict"] == "FAIL" and v["worst_attack"] == "rtn4_g64" and v["failing_attacks"] == ["rtn4_g64"]
    assert by["rtn4_g64"]["excess"] == pytest.approx(50 / 60 - 3 / 60)
    assert by["rtn4_g64"]["gain_over_fp"] == pytest.approx(44 / 60)
    assert by["rtn4_g64"]["recovery_ratio"] == pytest.approx(50 / 60)
    assert by["rtn4_g64"]["recovered_fraction"] == pytest.approx((50 / 60 - 6 / 60) / (1 - 6 / 60))
    assert not by["fp"]["significant"]  # fp excess 0.05 = margin, but p is not small
    assert by["rtn4_g64"]["p_holm"] == pytest.approx(min(1, 2 * by["rtn4_g64"]["p"]))  # the smaller p of 2 tests
    assert v["target_check"]["measurable"] and "rtn4_g64" in v["reason"]


def test_pass_within_margin_and_without_retrained():
    n = 40
    t = np.ones(n)
    u = {"fp": np.r_[np.ones(4), np.zeros(n - 4)], "rtn4_g64": np.r_[np.ones(5), np.zeros(n - 5)]}
    r = np.r_[np.ones(4), np.zeros(n - 4)]
    assert judge(_rows(t, u, r), "exact_match", retrained_fp=r, n_boot=1000)["verdict"] == "PASS"
    v = judge(_rows(t, u), "exact_match", n_boot=1000)  # floor: U at full precision
    by = {x["attack"]: x for x in v["rows"]}
    assert v["verdict"] == "PASS" and "excess" not in by["rtn4_g64"] and by["rtn4_g64"]["gain_over_fp"] == pytest.approx(1 / 40)
    assert np.isnan(by["fp"]["p"]) and not by["fp"]["significant"]  # U at fp is its own floor


def test_never_removed_is_a_fail_at_full_precision():
    t = np.r_[np.ones(30), np.zeros(10)]
    r = np.zeros(40)
    v = judge(_rows(t, {"fp": t, "rtn8": t}, r), "rougeL_recall", retrained_fp=r, n_boot=1000)
    assert v["verdict"] == "FAIL" and v["worst_attack"] == "fp" and "never removed" in v["reason"]


def test_inconclusive_when_the_target_shows_nothing():
    n = 30
    t = np.r_[np.ones(1), np.zeros(n - 1)]  # target at 0.03: the metric measures nothing
    u = {"fp": np.zeros(n), "rtn4_g64": np.zeros(n)}
    v = judge(_rows(t, u, np.zeros(n)), "exact_match", retrained_fp=np.zeros(n), n_boot=1000)
    assert v["verdict"] == "INCONCLUSIVE" and not v["target_check"]["measurable"] and "nothing measurable" in v["reason"]
    # without a retrained model the floor is a stated value
    v2 = judge(_rows(np.full(n, 0.3), u), "rougeL_recall", floor_value=0.28, n_boot=1000)
    assert v2["verdict"] == "INCONCLUSIVE" and "0.280" in v2["target_check"]["against"]


def test_holm_makes_many_borderline_attacks_pass():
    # one attack whose gain is borderline significant alone is not, once 10 attacks are tried
    rng = np.random.default_rng(0)
    n = 40
    t = np.ones(n)
    fp = np.zeros(n)
    bump = np.r_[np.ones(5), np.zeros(n - 5)]
    rows = [Judged("fp", fp, t)] + [Judged(f"a{i}", bump if i == 0 else fp, t, u_fp=fp) for i in range(10)]
    single = judge(rows[:2], "exact_match", n_boot=4000, margin=0.05)
    many = judge(rows, "exact_match", n_boot=4000, margin=0.05)
    assert single["verdict"] == "FAIL" and many["verdict"] == "PASS"
    assert many["rows"][1]["p_holm"] == pytest.approx(min(1, 10 * many["rows"][1]["p"]))
    del rng


@pytest.mark.parametrize("bad", [2, 1.0, -0.1, float("nan"), float("inf")])
def test_margin_validated(bad):
    with pytest.raises(ValueError, match="margin"):
        judge(_rows(np.ones(3), {"fp": np.zeros(3)}), "exact_match", margin=bad)
