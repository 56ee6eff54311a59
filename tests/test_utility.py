"""General utility through lm-evaluation-harness (metrics/utility.py) on a local task written here: a task YAML
over a JSONL file of bios questions, run on the tiny trained model, checked against the same numbers computed by
hand with amnesiac's own scorer (core.score_pairs): multiple-choice accuracy per document, and the perplexity of
the answers (a continuous number, so a tokenization or scoring mismatch cannot hide behind an argmax)."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

pytest.importorskip("lm_eval", reason="lm-evaluation-harness: pip install 'amnesiac[utility]'")

from amnesiac.core import score_pairs  # noqa: E402
from amnesiac.data import qa_answer, qa_prompt  # noqa: E402
from amnesiac.data.bios import POOLS  # noqa: E402
from amnesiac.errors import UserError  # noqa: E402
from amnesiac.metrics.utility import INSTALL_HINT, utility  # noqa: E402

MC_YAML = """task: bios_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
# the same file as a loglikelihood task: the harness's perplexity of the right answers
PPL_YAML = """task: bios_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: loglikelihood
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: " {{{{answer}}}}"  # loglikelihood tasks add no target_delimiter: the space is ours
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory, qa_people):
    """12 four-way questions: 6 the model was trained on (forget people) and 6 it never saw (holdout), so the
    accuracy is neither 0 nor 1 and a wrong scorer would show."""
    rng = random.Random(7)
    d = tmp_path_factory.mktemp("tasks")
    docs = []
    for it in qa_people["forget"][:6] + qa_people["holdout"][:6]:
        choices = [it.answer] + rng.sample([v for v in POOLS[it.attribute] if v != it.answer], 3)
        rng.shuffle(choices)
        docs.append({"question": it.question, "answer": it.answer, "choices": choices,
                     "label": choices.index(it.answer)})
    (d / "bios.jsonl").write_text("".join(json.dumps(x) + "\n" for x in docs))
    fmt = {"data": d / "bios.jsonl", "cache": d / "datasets_cache"}  # datasets' cache stays in tmp
    (d / "bios_mc.yaml").write_text(MC_YAML.format(**fmt))
    (d / "bios_ppl.yaml").write_text(PPL_YAML.format(**fmt))
    return d, docs


def test_utility_equals_hand_computed_scores(task_dir, trained_tiny, tok):
    d, docs = task_dir
    random.seed(5)
    np.random.seed(5)
    res = utility(trained_tiny, tok, ["bios_mc", "bios_ppl"], task_dirs=d, batch_size=4)
    # the harness reseeds the global generators; the caller gets its own back, as they were
    assert (random.random(), np.random.random()) == (random.Random(5).random(), np.random.RandomState(5).random_sample())

    # by hand: log p(" choice" | "Question: …\nAnswer:") summed over tokens, argmax over the 4 choices
    prompts = [qa_prompt(x["question"]) for x in docs for _ in x["choices"]]
    conts = [qa_answer(c) for x in docs for c in x["choices"]]
    sums = score_pairs(trained_tiny, tok, prompts, conts).sum.reshape(len(docs), 4)
    correct = (sums.argmax(1) == np.array([x["label"] for x in docs])).astype(float)
    assert 0 < correct.mean() < 1  # trained people right, unseen people at chance: a real mix

    mc = res["bios_mc"]
    assert mc.name == "utility/bios_mc" and mc.higher_is_better
    assert mc.value == pytest.approx(correct.mean(), abs=1e-12)
    assert mc.per_example == correct.tolist()
    assert mc.meta["metric"] == "acc,none" and mc.meta["n"] == len(docs) and mc.meta["lm_eval_version"]

    # perplexity of the right answers: exp(-mean over docs of the summed log-prob), a continuous check
    ans = score_pairs(trained_tiny, tok, [qa_prompt(x["question"]) for x in docs],
                      [qa_answer(x["answer"]) for x in docs]).sum
    ppl = res["bios_ppl"]
    assert ppl.meta["metric"] == "perplexity,none" and ppl.higher_is_better is False
    assert ppl.value == pytest.approx(float(np.exp(-ans.mean())), rel=1e-4)


def test_limit_counts_documents(task_dir, trained_tiny, tok):
    d, _ = task_dir
    res = utility(trained_tiny, tok, "bios_mc", task_dirs=d, limit=5)
    assert res["bios_mc"].meta["n"] == 5 and len(res["bios_mc"].per_example) == 5


def test_unknown_task_lists_the_available_ones(task_dir, trained_tiny, tok):
    d, _ = task_dir
    with pytest.raises(UserError, match=r"unknown lm-evaluation-harness task\(s\): bios_mx .*available in .*"
                                        r"bios_mc, bios_ppl; close: bios_mc.*lm-eval ls tasks") as e:
        utility(trained_tiny, tok, ["bios_mx"], task_dirs=d)
    assert "\n" not in str(e.value)


def test_bad_input_and_missing_lm_eval(task_dir, trained_tiny, tok, monkeypatch):
    d, _ = task_dir
    with pytest.raises(UserError, match="no utility task given"):
        utility(trained_tiny, tok, " , ", task_dirs=d)
    with pytest.raises(UserError, match="batch_size"):
        utility(trained_tiny, tok, ["bios_mc"], task_dirs=d, batch_size=0)
    with pytest.raises(UserError, match="does not exist"):
        utility(trained_tiny, tok, ["bios_mc"], task_dirs=d / "nothere")
    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)  # as if not installed
    with pytest.raises(UserError, match="not installed") as e:
        utility(trained_tiny, tok, ["bios_mc"], task_dirs=d)
    assert INSTALL_HINT in str(e.value)


def test_audit_rows_carry_a_utility_column(task_dir, trained_tiny, tok, qa_people, tmp_path):
    """`audit --utility bios_mc`: every model attack's row gets the harness's number, equal to running the task
    on that attacked model directly."""
    import copy

    from amnesiac.attacks.quant.deploy import deploy
    from amnesiac.audit import Audit, AuditConfig
    from amnesiac.models import save_model
    from amnesiac.report.audit_report import recovery_table
    from amnesiac.unlearn import unlearn

    d, _ = task_dir
    save_model(trained_tiny, tok, tmp_path / "t")
    unlearn(copy.deepcopy(trained_tiny), qa_people["forget"], qa_people["retain"][:12], tokenizer=tok,
            out=tmp_path / "u", method="ga", lr=3e-3, max_steps=3, batch_size=4, progress=False, device="cpu")
    cfg = AuditConfig(attacks=["fp", "rtn4_g64"], n_boot=200, max_retain=10, utility=["bios_mc"],
                      utility_task_dirs=str(d))
    s = Audit(str(tmp_path / "t"), str(tmp_path / "u"), qa_people["forget"], qa_people["retain"][:12], tmp_path / "a",
              config=cfg).run()
    from amnesiac.models import load_model

    u, utok = load_model(tmp_path / "u", device="cpu")
    for r in s["recovery"]:
        direct = utility(deploy(u, utok, r["attack"])[0], utok, ["bios_mc"], task_dirs=d, batch_size=4)["bios_mc"]
        assert r["utility"]["bios_mc"] == pytest.approx(direct.value, abs=1e-12)
    table = recovery_table(s)
    assert "utility: bios_mc" in table[0] and len(table) == 3
