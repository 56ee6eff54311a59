"""`amnesiac sweep --grid-offset`: the off-grid target construction (hand-checked), the sweep's schema and cache."""
from __future__ import annotations

import copy

import pytest
import torch

from amnesiac.attacks.quant.rtn import RTN


def _one_linear(row):
    lin = torch.nn.Linear(len(row), 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([row]))
    return torch.nn.Sequential(lin)


def test_offset_hand_checked_on_grid_row():
    from amnesiac.sweep_offset import offset_from_grid

    q = RTN(4, 4, "sym")  # one group of 4; absmax 7 → Δ = 1, the row is on the grid already
    m, info = offset_from_grid(_one_linear([7.0, -7.0, 3.0, 0.0]), q, 0.25, seed=0)
    w = m[0].weight[0]
    assert w[0].item() == 7.0  # the first absmax weight anchors the grid
    assert w[1].item() == -6.75  # the other absmax tie moves inward
    assert abs(abs(w[2].item() - 3.0) - 0.25) < 1e-6 and abs(abs(w[3].item()) - 0.25) < 1e-6
    # measured with RTN.position (grid recomputed from the new weights): 3 of 4 weights at 0.25, the anchor at 0
    assert info["mean"] == pytest.approx(0.75 * 0.25, abs=1e-6)
    assert info["at_zero"] == pytest.approx(0.25) and info["n_weights"] == 4
    assert torch.equal(q(m[0].weight), q(_one_linear([7.0, -7.0, 3.0, 0.0])[0].weight))


def test_offset_starts_from_the_rounded_weights():
    from amnesiac.sweep_offset import offset_from_grid, realised_offset

    q = RTN(4, 4, "sym")
    src = _one_linear([6.6, 2.2, -1.4, 0.3])  # Δ = 6.6/7: codes 7, 2 (2.33), −1 (−1.48), 0 (0.32)
    m, info = offset_from_grid(src, q, 0.4, seed=3)
    step = 6.6 / 7
    got = (m[0].weight[0] / step).tolist()
    assert got[0] == pytest.approx(7.0, abs=1e-5)
    for g, code in zip(got[1:], [2, -1, 0]):
        assert abs(g - code) == pytest.approx(0.4, abs=1e-5)
    assert realised_offset(m, q, 0.4)["at_requested"] == pytest.approx(0.75)
    assert torch.allclose(q(m[0].weight), torch.tensor([[7.0, 2.0, -1.0, 0.0]]) * step, atol=1e-6)


def test_offset_on_a_model_keeps_the_release_grid(trained_tiny):
    from amnesiac.attacks.quant.apply import select_weights
    from amnesiac.sweep_offset import offset_from_grid, release_quantizer

    q = release_quantizer()
    m, info = offset_from_grid(trained_tiny, q, 0.2, seed=0)
    n_groups = sum(w.shape[0] * -(-w.shape[1] // 64) for _, w in select_weights(trained_tiny))
    # every weight but one anchor per group sits exactly 0.2 steps off; re-quantizing gives Q(original)
    assert info["at_requested"] == pytest.approx(1 - n_groups / info["n_weights"], abs=1e-6)
    assert info["mean"] == pytest.approx(0.2 * (1 - n_groups / info["n_weights"]), abs=1e-4)
    assert info["at_zero"] == pytest.approx(n_groups / info["n_weights"], abs=1e-6)
    for (_, a), (_, b) in zip(select_weights(m), select_weights(trained_tiny)):
        assert torch.allclose(q(a), q(b), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="symmetric"):
        offset_from_grid(trained_tiny, RTN(4, 64, "asym"), 0.2)
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        offset_from_grid(trained_tiny, q, 0.5)


def test_config_rejects_bad_input():
    from amnesiac.sweep_offset import OffsetSweepConfig

    with pytest.raises(ValueError, match="available"):
        OffsetSweepConfig(bits=[5]).check()
    with pytest.raises(ValueError, match="offsets"):
        OffsetSweepConfig(offsets=[0.1, 0.6]).check()


def test_offset_sweep_schema_and_cache(trained_tiny, tok, qa_people, tmp_path):
    from amnesiac.models import save_model
    from amnesiac.sweep_offset import OffsetSweepConfig, run_offset_sweep

    t = save_model(copy.deepcopy(trained_tiny), tok, tmp_path / "target")
    cfg = OffsetSweepConfig(method="ga_gdr", lr=1e-3, offsets=[0.0, 0.3], bits=[16, 4], max_steps=3, batch_size=4)
    out = tmp_path / "so"
    s = run_offset_sweep(t, qa_people["forget"], qa_people["retain"][:20], out, cfg, log=lambda *_: None)
    assert s["schema"] == "amnesiac.sweep_offset/2" and s["release_grid"]["group"] == 64
    assert [(r["offset"], r["bits"]) for r in s["rows"]] == [(0.0, 16), (0.0, 4), (0.3, 16), (0.3, 4)]
    keys = {"forget_recall", "retain_recall", "target_forget_recall", "collapse_rate_4bit", "drift_kept_4bit",
            "realised_offset_mean", "realised_at_requested"}
    assert all(keys <= set(r) for r in s["rows"])
    r0 = s["rows"][0]
    assert r0["realised_offset_mean"] == pytest.approx(0, abs=1e-6) and r0["realised_at_requested"] == 1.0  # on the grid
    assert 0 < s["rows"][2]["realised_offset_mean"] <= 0.3
    for f in ("summary.json", "sweep_offset.html", "sweep_offset_forget.png", "sweep_offset_collapse.png"):
        assert (out / f).exists(), f
    stamps = {p: p.stat().st_mtime for p in out.glob("*/*/unlearn.json")}
    assert len(stamps) == 2
    s2 = run_offset_sweep(t, qa_people["forget"], qa_people["retain"][:20], out, cfg, log=lambda *_: None)
    assert s2["rows"] == s["rows"]
    assert {p: p.stat().st_mtime for p in out.glob("*/*/unlearn.json")} == stamps  # nothing retrained


def test_cli_checks_the_offset_axis_before_any_work():
    from typer.testing import CliRunner

    from amnesiac.cli import app

    def run(*args):  # (exit code, the error text with rich's box and line wrapping removed)
        r = CliRunner().invoke(app, ["sweep", *args])
        return r.exit_code, " ".join(r.output.replace("│", " ").split())

    code, text = run("--grid-offset", "0,0.6")
    assert code == 2 and "[0, 0.5)" in text
    code, text = run("--grid-offset", "0.1", "--lr", "1e-4,1e-3")
    assert code == 2 and "one --lr" in text
    code, text = run("--lr", "fast")
    assert code == 2 and "comma-separated numbers" in text
