"""The one measuring layer: which metric the data calls for, and per-item scores on a tiny model."""
import pytest

from amnesiac.data.schema import QAItem
from amnesiac.errors import UserError
from amnesiac.measure import Scoring, answer_budget, measure, scoring_for


def test_scoring_follows_the_data():
    short = [QAItem("Where was A born?", "Oslo"), QAItem("What does B do?", "a veterinarian")]
    long = [QAItem("Tell me about C.", " ".join(["word"] * 27))] * 3
    facts = [QAItem("The capital of France is", "Paris", extra={"format": "completion"})]
    assert scoring_for(short).metric == "exact_match" and "median 1.5 words" in scoring_for(short).reason
    assert scoring_for(long).metric == "rougeL_recall" and "median 27 words" in scoring_for(long).reason
    assert scoring_for(facts).metric == "fact"
    assert scoring_for(long, "prob").metric == "prob" and "chosen by the user" in scoring_for(long, "prob").reason
    with pytest.raises(UserError, match="available"):
        scoring_for(short, "bleu")
    with pytest.raises(UserError, match="perturbed_answer"):
        scoring_for(short, "truth_ratio")
    with pytest.raises(UserError, match="empty"):
        scoring_for([])


def test_generation_budget_is_the_longest_answer_plus_slack(tok):
    items = [QAItem("q?", "a b c d e f g h"), QAItem("q2?", "x")]
    n = len(tok(" a b c d e f g h", add_special_tokens=False)["input_ids"])
    assert answer_budget(tok, items) == n + 16


def test_measure_scores_every_metric_that_applies(trained_tiny, tok, qa_people):
    f = qa_people["forget"][:4]
    pert = [QAItem(it.question, it.answer, paraphrased_answer=it.answer, perturbed_answers=["Nowhere", "Elsewhere"])
            for it in f]
    plain = [QAItem(it.question, it.answer) for it in qa_people["retain"][:3]]  # no perturbed answers
    r = measure(trained_tiny, tok, {"forget": pert, "retain": plain}, Scoring("truth_ratio", "test"))
    assert {"exact_match", "rougeL_recall", "prob", "truth_ratio", "outputs"} <= set(r["forget"])
    assert "truth_ratio" not in r["retain"] and len(r["retain"]["prob"]) == 3  # no perturbed answers there
    assert all(0.0 <= x <= 1.0 for x in r["forget"]["truth_ratio"])
    # the tiny model memorised these people: exact match agrees with ROUGE-L recall item by item
    for em, rl in zip(r["forget"]["exact_match"], r["forget"]["rougeL_recall"]):
        assert em == 0.0 or rl == 1.0
    # without the truth ratio: the same numbers for everything else, and the 1 + k extra continuations unscored
    from amnesiac.metrics.runner import Runner

    run = Runner(trained_tiny, tok, 32, cache=False, model_hash="-")
    r2 = measure(trained_tiny, tok, {"forget": pert, "retain": plain}, Scoring("truth_ratio", "test"),
                 truth_ratio=False, runner=run)
    assert "truth_ratio" not in r2["forget"]
    assert {k: v for k, v in r["forget"].items() if k != "truth_ratio"} == r2["forget"] and r["retain"] == r2["retain"]
    assert run.stats["scored"] == len(pert) + len(plain)  # one answer continuation per item
