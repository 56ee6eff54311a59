"""`optimizer="adamw8bit"`: bitsandbytes' 8-bit AdamW states (they run on CPU with bitsandbytes 0.50), its
pickle-free checkpoint/resume, and the error paths of the optimizer choice."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from amnesiac.unlearn import UnlearnError, unlearn

pytest.importorskip("bitsandbytes")
FAST = dict(progress=False, batch_size=4)


@pytest.fixture(scope="module")
def people(qa_people):
    return {"forget": qa_people["forget"], "retain": qa_people["retain"][:16]}


def test_first_step_is_lr_times_sign_and_states_are_uint8():
    """Adam's first bias-corrected step is m̂/√v̂ = g/|g|: every weight moves by exactly −lr·sign(g)."""
    from amnesiac.unlearn.trainer import _optimizer_class

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(64, 64))  # 4096 elements: bitsandbytes' min_8bit_size
    p0, g = p.detach().clone(), torch.randn(64, 64)
    opt = _optimizer_class("adamw8bit")([p], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    p.grad = g
    opt.step()
    torch.testing.assert_close(p.detach() - p0, -1e-3 * g.sign(), rtol=1e-3, atol=1e-9)
    st = opt.state[p]
    assert st["state1"].dtype == st["state2"].dtype == torch.uint8
    assert st["state1"].shape == p.shape


def test_kill_and_resume_with_8bit_states_is_bitwise_identical(trained_tiny, tok, people, tmp_path):
    from safetensors.torch import load_file

    kw = dict(method="ga_gdr", lr=1e-3, max_steps=5, checkpoint_every=2, optimizer="adamw8bit", **FAST)
    full = unlearn(copy.deepcopy(trained_tiny), people["forget"], people["retain"], tokenizer=tok,
                   out=tmp_path / "a", **kw)

    class Kill(Exception):
        pass

    def killer(rec):
        if rec["step"] == 3:
            raise Kill

    with pytest.raises(Kill):
        unlearn(copy.deepcopy(trained_tiny), people["forget"], people["retain"], tokenizer=tok, out=tmp_path / "b",
                callbacks=[killer], **kw)
    saved = load_file(str(tmp_path / "b" / "checkpoint" / "optimizer.safetensors"))
    assert any(k.endswith(".state1") and v.dtype == torch.uint8 for k, v in saved.items())
    assert any(k.endswith(".absmax1") and v.dtype == torch.float32 for k, v in saved.items())
    scalars = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["opt_scalars"]
    assert set(scalars.values()) == {2}  # bitsandbytes keeps `step` as a Python int: JSON, not a tensor
    with pytest.raises(ValueError, match="different training config"):  # the optimizer is part of the config
        unlearn(copy.deepcopy(trained_tiny), people["forget"], people["retain"], tokenizer=tok, out=tmp_path / "b",
                resume=True, **{**kw, "optimizer": "adamw"})
    res = unlearn(copy.deepcopy(trained_tiny), people["forget"], people["retain"], tokenizer=tok, out=tmp_path / "b",
                  resume=True, **kw)
    assert res.info["resumed_from_step"] == 2
    sa, sb = full.model.state_dict(), res.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not [p for p in (tmp_path / "b").rglob("*") if p.suffix in (".bin", ".pt", ".pkl")]


def test_8bit_moves_weights_like_32bit(trained_tiny, tok, people):
    """Not equal (the states are rounded to 256 codes), but the same direction: cosine of Δw > 0.9."""
    kw = dict(method="npo_gdr", lr=1e-3, max_steps=4, **FAST)
    d = {}
    for name in ("adamw", "adamw8bit"):
        r = unlearn(copy.deepcopy(trained_tiny), people["forget"], people["retain"], tokenizer=tok, optimizer=name, **kw)
        before = trained_tiny.state_dict()
        d[name] = torch.cat([(v - before[k]).flatten() for k, v in r.model.state_dict().items()])
        assert r.info["config"]["optimizer"] == name
    cos = torch.nn.functional.cosine_similarity(d["adamw"], d["adamw8bit"], dim=0).item()
    assert 0.9 < cos < 1.0


def test_optimizer_errors(trained_tiny, tok, people, monkeypatch):
    with pytest.raises(UnlearnError, match="available: adamw, adamw8bit"):
        unlearn(copy.deepcopy(trained_tiny), people["forget"], tokenizer=tok, method="ga", optimizer="sgd", **FAST)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    with pytest.raises(UnlearnError, match="needs bitsandbytes"):
        unlearn(copy.deepcopy(trained_tiny), people["forget"], tokenizer=tok, method="ga", optimizer="adamw8bit",
                **FAST)


def test_cli_optimizer_flag(trained_tiny, tok, people, tmp_path):
    from typer.testing import CliRunner

    from amnesiac.cli import app
    from amnesiac.models import save_model

    save_model(trained_tiny, tok, tmp_path / "t")
    (tmp_path / "f.jsonl").write_text("".join(json.dumps(i.to_json()) + "\n" for i in people["forget"]))
    base = ["unlearn", "--model", str(tmp_path / "t"), "--forget", str(tmp_path / "f.jsonl"), "--method", "ga",
            "--max-steps", "1", "--batch-size", "4", "--no-progress"]
    r = CliRunner().invoke(app, [*base, "--optimizer", "sgd", "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "available: adamw, adamw8bit" in r.output
    assert not (tmp_path / "bad").exists()
    r = CliRunner().invoke(app, [*base, "--optimizer", "adamw8bit", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "unlearn.json").read_text())["config"]["optimizer"] == "adamw8bit"
