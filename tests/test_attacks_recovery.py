"""Relearning, prompt attacks, hidden-state probes and the `amnesiac attack` CLI on the tiny trained model."""
import copy
import json

import pytest
import torch

from amnesiac.attacks import apply_attack, build_prompts, linear_probe, logit_lens, split_forget


def test_split_forget(qa_people):
    f = qa_people["forget"]
    tr, ho = split_forget(f, 0.5, "item", seed=0)
    assert len(tr) + len(ho) == len(f) and not {id(x) for x in tr} & {id(x) for x in ho}
    trp, hop = split_forget(f, 0.5, "person", seed=0)
    assert {x.person for x in trp}.isdisjoint({x.person for x in hop})
    with pytest.raises(ValueError):
        split_forget(f, 1.0)


def test_relearn_changes_weights_and_logs(trained_tiny, tok, qa_people):
    model = copy.deepcopy(trained_tiny).requires_grad_(False)  # unlearned models often come back frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = apply_attack("relearn", model, tok, forget=qa_people["forget"], fraction=0.5, steps=4, lr=1e-3, batch_size=4)
    r = res.record
    assert [s["step"] for s in r["train_log"]] == [0, 1, 2, 3] and all(s["loss"] > 0 for s in r["train_log"])
    assert r["weight_change"]["l2"] > 0 and r["config"]["train_source"] == "forget"
    assert 0 <= r["heldout_recall_before"] <= 1 and 0 <= r["heldout_recall_after"] <= 1
    assert r["cost"]["wall_s"] > 0 and r["heldout_questions"]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # input untouched
    assert any(not torch.equal(v, before[k]) for k, v in res.model.state_dict().items())
    ctl = apply_attack("relearn", model, tok, forget=qa_people["forget"], control="retain", retain=qa_people["retain"],
                       steps=2, lr=1e-3, batch_size=4, evaluate=False)
    assert ctl.record["config"]["train_source"] == "retain" and "heldout_recall_after" not in ctl.record


def test_prompt_transforms(qa_people):
    f, r = qa_people["forget"], qa_people["retain"]
    q = build_prompts("question", f)
    assert q[0] == [f"Question: {f[0].question}\nAnswer:"]
    assert all(len(v) == 2 for v in build_prompts("paraphrase", f))  # bios: two paraphrases per question
    icl = build_prompts("icl_forget", f, k=2)[0][0]
    assert icl.count("Question:") == 3 and icl.endswith(q[0][0]) and f"Answer: {f[0].answer}\n" not in icl
    same = build_prompts("icl_same_person", f, k=3)[0][0]
    assert same.count(f[0].person) == 4
    assert build_prompts("icl_retain", f, pool=r, k=1)[0][0].count("Question:") == 2
    cl = build_prompts("cloze", f)
    assert cl[0][0] and f[0].answer not in cl[0][0] and (cl[0][0] + " " + f[0].answer) in f[0].paraphrased_answer
    assert build_prompts("step", f) == build_prompts("step_by_step", f)  # alias used by the audit
    with pytest.raises(KeyError):
        build_prompts("nope", f)


def test_prompt_attack_runs(trained_tiny, tok, qa_people):
    res = apply_attack("prompts", trained_tiny, tok, items=qa_people["forget"], pool=qa_people["retain"],
                       transforms=["question", "paraphrase", "icl_same_person"])
    out = res.record["results"]
    assert res.model is None and set(out) == {"question", "paraphrase", "icl_same_person"}
    assert out["question"]["value"] >= 0.8  # the trained model answers its own format
    assert out["paraphrase"]["meta"]["n_prompts"] == 2 * len(qa_people["forget"])
    assert out["paraphrase"]["meta"]["any"] >= out["paraphrase"]["value"]


def test_logit_lens_and_probe_beat_chance(trained_tiny, tok, qa_people):
    from amnesiac.data import bios

    ll = logit_lens(trained_tiny, tok, qa_people["retain"])
    layers = ll.meta["layers"]
    assert len(layers) == 3 and layers[-1]["top1"] >= 0.8  # output layer = the model's own prediction
    assert layers[-1]["top1"] > layers[0]["top1"]
    lp = linear_probe(trained_tiny, tok, qa_people["retain"], qa_people["forget"])
    chance = max(bios.chance_rates().values())  # the most generous chance rate (smallest pool)
    assert lp.meta["retain_heldout_acc"] > 3 * chance
    assert 0 <= lp.value <= 1 and lp.meta["per_attribute"]
    pr = apply_attack("probe", trained_tiny, tok, forget=qa_people["forget"])
    assert "logit_lens" in pr.record and "linear_probe" not in pr.record


def test_cli_quantize_and_collapse(tiny_model, tok, tmp_path):
    from typer.testing import CliRunner

    from amnesiac.cli import app
    from amnesiac.models import load_model, save_model

    src = save_model(tiny_model, tok, tmp_path / "m")
    runner = CliRunner()
    r = runner.invoke(app, ["attack", "quantize", "--model", str(src), "--bits", "4", "--group", "16",
                            "--scheme", "asym", "--out", str(tmp_path / "q"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "q" / "attack.json").read_text())
    assert rec["config"]["name"] == "rtn4_asym_g16" and rec["cost"]["wall_s"] >= 0
    qm, _ = load_model(tmp_path / "q", device="cpu")
    from amnesiac.attacks import RTN

    w = tiny_model.model.layers[0].mlp.down_proj.weight
    assert torch.allclose(qm.model.layers[0].mlp.down_proj.weight, RTN(4, 16, "asym")(w))
    r = runner.invoke(app, ["attack", "collapse", "--target", str(src), "--unlearned", str(tmp_path / "q"),
                            "--bits", "4", "--group", "16", "--scheme", "asym", "--out", str(tmp_path / "c.json")])
    assert r.exit_code == 0, r.output
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["overall"]["collapse_rate"] == 1.0  # Q(Q(w)) = Q(w): codes unchanged
