"""Prompt formats (data/prompt.py): rendering, one BOS, the same prompts in training and measurement, the format
recorded in every JSON output, clear errors, and the default format unchanged."""
from __future__ import annotations

import copy
import json

import pytest

from amnesiac.data.prompt import QA_TEMPLATE, PromptFormat
from amnesiac.data.schema import QAItem
from amnesiac.errors import UserError

# ChatML as SmolLM2 / Qwen write it, once with a BOS written as text (as Llama-3's template does), once without
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHATML_BOS = "{{ bos_token }}" + CHATML
# Llama-2 style: the assistant's text follows " [/INST]" after a space; refuses a system role like Mistral's
INST = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not "
        "supported') }}{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %} {{ m['content'] }} "
        "{{ eos_token }}{% endif %}{% endfor %}")


def chat_tok(tok, template=CHATML_BOS):
    t = copy.deepcopy(tok)  # the session tokenizer stays without a chat template
    t.chat_template = template
    return t


def test_default_format_is_todays():
    b = PromptFormat().bind(None)
    assert b.template == QA_TEMPLATE == "Question: {question}\nAnswer:"
    assert b.prompt("Where?") == "Question: Where?\nAnswer:" and b.answer(" Oslo ") == " Oslo"
    done = QAItem("The capital of France is", "Paris", extra={"format": "completion"})
    assert b.item_prompt(done) == "The capital of France is" and b.item_answer(done, "Paris") == " Paris"
    assert PromptFormat().is_default and PromptFormat(QA_TEMPLATE).is_default
    assert PromptFormat().record() == {"template": QA_TEMPLATE, "chat_template": False, "system_prompt": None}
    # a shell-typed backslash-n is a newline
    assert PromptFormat.of("Q: {question}\\nA:").template == "Q: {question}\nA:"


def test_chat_format_renders_the_tokenizers_template(tok):
    t = chat_tok(tok)
    b = PromptFormat(chat_template=True, system_prompt="Answer {briefly}.").bind(t)
    # BOS dropped from the text (the tokenizer adds it), braces of the system prompt escaped, no space before answers
    assert b.template == ("<|im_start|>system\nAnswer {{briefly}}.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
                          "<|im_start|>assistant\n")
    assert b.prompt("Who is {x}?").endswith("user\nWho is {x}?<|im_end|>\n<|im_start|>assistant\n")
    assert b.sep == "" and b.answer(" Oslo") == "Oslo"
    # --template shapes the user message inside the chat template
    b2 = PromptFormat(template="Q: {question}", chat_template=True).bind(t)
    assert b2.prompt("Who?") == "<|im_start|>user\nQ: Who?<|im_end|>\n<|im_start|>assistant\n"
    # a template whose assistant text follows a space: measured from the template itself
    b3 = PromptFormat(chat_template=True).bind(chat_tok(tok, INST))
    assert b3.prompt("Who?") == "[INST] Who? [/INST]" and b3.sep == " "
    # in-context examples become earlier turns
    fs = b2.few_shot([("A?", "a")], "B?")
    assert fs == ("<|im_start|>user\nQ: A?<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"
                  "<|im_start|>user\nQ: B?<|im_end|>\n<|im_start|>assistant\n")
    assert b.record()["chat_template"] and b.record()["rendered"] == b.template


@pytest.mark.parametrize("template", [CHATML_BOS, CHATML], ids=["bos-in-template", "no-bos"])
def test_exactly_one_bos_when_scored_and_generated(tok, template):
    from amnesiac.core.logprobs import encode_pairs, encode_text, special_prefix

    t = chat_tok(tok, template)
    assert special_prefix(t) == [t.bos_token_id]  # the tiny tokenizer adds BOS itself, as Llama's does
    b = PromptFormat(chat_template=True).bind(t)
    ids, start = encode_pairs(t, [b.prompt("Where was Ann born?")], [b.answer("Oslo")])[0]
    assert ids[0] == t.bos_token_id and ids.count(t.bos_token_id) == 1
    gen = encode_text(t, b.prompt("Where was Ann born?"))  # what core.generate feeds the model
    assert gen == ids[:start] and gen.count(t.bos_token_id) == 1


def test_a_tokenizer_that_adds_no_bos_keeps_the_templates(tok):
    from amnesiac.core.logprobs import encode_text, special_prefix

    t = chat_tok(tok)
    t._tokenizer.post_processor = None  # now adds nothing itself (GPT-2 / SmolLM2 style)
    assert special_prefix(t) == []
    b = PromptFormat(chat_template=True).bind(t)
    assert b.template.startswith("<s><|im_start|>user")
    ids = encode_text(t, b.prompt("Where?"))
    assert ids[0] == t.bos_token_id and ids.count(t.bos_token_id) == 1


@pytest.mark.parametrize("kw, needle", [
    (dict(template="Q:"), "no {question} placeholder"),
    (dict(template="Q: {question} {foo}"), "unknown field(s) {foo} — available: {question}"),
    (dict(template="Q: {question"), "literal braces"),
    (dict(system_prompt="Be brief."), "--system-prompt needs --chat-template"),
])
def test_bad_options_fail_clearly(kw, needle):
    with pytest.raises(UserError, match="template|system"):
        PromptFormat(**kw)
    with pytest.raises(UserError) as e:
        PromptFormat(**kw)
    assert needle in str(e.value)


def test_chat_template_errors_name_the_model_and_the_fix(tok):
    t = copy.deepcopy(tok)
    t.name_or_path = "my/model"
    with pytest.raises(UserError) as e:
        PromptFormat(chat_template=True).bind(t)
    assert "my/model" in str(e.value) and "no chat template" in str(e.value) and "--template" in str(e.value)
    with pytest.raises(UserError) as e:
        PromptFormat(chat_template=True, system_prompt="Be brief.").bind(chat_tok(tok, INST))
    assert "system message" in str(e.value) and "System role not supported" in str(e.value)
    assert "drop --system-prompt" in str(e.value)


def test_config_options_on_every_verb():
    from amnesiac.audit import AuditConfig
    from amnesiac.evaluate import EvalConfig
    from amnesiac.sweep import SweepConfig
    from amnesiac.unlearn import UnlearnConfig
    from amnesiac.unlearn.common import UnlearnError

    for cls in (AuditConfig, EvalConfig, UnlearnConfig):
        assert cls(template="Q: {question}\\nA:").prompt_format().template == "Q: {question}\nA:"
        with pytest.raises(UserError, match="unknown field"):
            cls(template="{question} {foo}")
        with pytest.raises(UserError, match="needs --chat-template"):
            cls(system_prompt="x")
    with pytest.raises(UnlearnError):
        UnlearnConfig(template="Q:")
    with pytest.raises(UserError, match="placeholder"):
        SweepConfig(template="Q:").check()


def test_training_prompts_are_the_measured_prompts(tok, qa_people, tiny_model):
    """make_split (the unlearning loss) and measure() build the same prompt and answer ids in a chat format."""
    from amnesiac.core.logprobs import encode_pairs
    from amnesiac.measure import measure, scoring_for
    from amnesiac.unlearn.common import make_split

    t = chat_tok(tok)
    items = qa_people["forget"][:4]
    fmt = PromptFormat(chat_template=True, system_prompt="Answer briefly.")
    split = make_split("forget", items, t, fmt=fmt)
    r = measure(tiny_model, t, {"forget": items}, scoring_for(items), fmt=fmt, raw=True,
                max_new_tokens=2)["forget"]
    b = fmt.bind(t)
    again = encode_pairs(t, r["_prompts"], [b.answer(it.answer) + t.eos_token for it in items])
    assert split.seqs == again
    assert all(p.startswith("<|im_start|>system\nAnswer briefly.") for p in r["_prompts"])
    # the scored answer tokens are the training answer tokens without EOS
    for sc, (ids, start) in zip(r["_answers"], split.seqs):
        assert list(sc["ids"]) == ids[start:-1]


def test_default_format_measures_as_before(tok, qa_people, trained_tiny):
    from amnesiac.measure import measure, scoring_for

    items = qa_people["forget"][:6]
    s = scoring_for(items)
    base = measure(trained_tiny, tok, {"forget": items}, s)
    for fmt in (None, PromptFormat(), QA_TEMPLATE, PromptFormat(QA_TEMPLATE)):
        assert measure(trained_tiny, tok, {"forget": items}, s, fmt=fmt) == base
    other = measure(trained_tiny, tok, {"forget": items}, s, fmt="Q: {question}\nA:")
    assert other["forget"]["prob"] != base["forget"]["prob"]  # the format reaches the scores


def test_prompt_attacks_keep_todays_layout_and_follow_a_chat_format(tok, qa_people):
    from amnesiac.attacks.prompts import build_prompts

    items = qa_people["forget"][:3]
    icl = build_prompts("icl_forget", items, k=1, seed=0)[0][0]
    assert icl.count("Question: ") == 2 and icl.endswith(f"Question: {items[0].question}\nAnswer:")
    assert "\nAnswer: " in icl and icl.split("\n\n")[0].count("\n") == 1  # "Question: q\nAnswer: a\n\n" shots
    assert build_prompts("step_by_step", items)[0][0] == \
        f"Question: {items[0].question}\nLet's think step by step.\nAnswer:"
    b = PromptFormat(chat_template=True).bind(chat_tok(tok))
    icl_c = build_prompts("icl_forget", items, k=1, seed=0, fmt=b)[0][0]
    assert icl_c.count("<|im_start|>user") == 2 and icl_c.count("<|im_start|>assistant") == 2
    assert build_prompts("paraphrase", items, fmt=b)[0][0] == b.prompt(items[0].paraphrased_questions[0])


@pytest.fixture
def chat_dirs(tmp_path, trained_tiny, tok, qa_people):
    """A target folder whose tokenizer has a chat template, and a 1-step GA unlearning of it in that format."""
    from amnesiac.models import save_model
    from amnesiac.unlearn import unlearn

    t = chat_tok(tok)
    save_model(trained_tiny, t, tmp_path / "target")
    unlearn(str(tmp_path / "target"), qa_people["forget"], qa_people["retain"][:8], out=tmp_path / "unlearned",
            method="ga", max_steps=1, batch_size=4, device="cpu", progress=False, chat_template=True,
            system_prompt="Answer briefly.")
    return tmp_path


def test_unlearn_and_audit_record_and_share_the_format(chat_dirs, qa_people):
    from amnesiac.audit import Audit, AuditConfig

    rec = json.loads((chat_dirs / "unlearned" / "unlearn.json").read_text())
    pf = rec["prompt_format"]
    assert pf["chat_template"] and pf["system_prompt"] == "Answer briefly." and pf["answer_prefix"] == ""
    assert pf["rendered"].startswith("<|im_start|>system\nAnswer briefly.")
    forget, retain = qa_people["forget"][:6], qa_people["retain"][:4]
    cfg = AuditConfig(attacks=["fp", "icl_forget", "relearn"], n_boot=50, max_retain=4, relearn_steps=1)
    s = Audit(str(chat_dirs / "target"), str(chat_dirs / "unlearned"), forget, retain, chat_dirs / "au",
              config=cfg).run()  # no prompt options: the recorded format
    assert s["prompt_format"]["chat_template"] and s["prompt_format"]["system_prompt"] == "Answer briefly."
    assert s["prompt_format"]["rendered"] == pf["rendered"]
    saved = json.loads((chat_dirs / "au" / "summary.json").read_text())
    assert saved["prompt_format"] == s["prompt_format"]
    with pytest.raises(UserError, match="unlearned with prompt format --chat-template"):
        Audit(str(chat_dirs / "target"), str(chat_dirs / "unlearned"), forget, retain, chat_dirs / "au2",
              config=AuditConfig(attacks=["fp"], template="Q: {question}\nA:")).run()
    assert not (chat_dirs / "au2").exists()  # refused before OUT is touched


def test_eval_and_attack_verbs_record_the_format(chat_dirs, qa_people):
    from typer.testing import CliRunner

    from amnesiac.cli import app

    data = chat_dirs / "forget.jsonl"
    data.write_text("".join(json.dumps(it.to_json()) + "\n" for it in qa_people["forget"][:4]))
    r = CliRunner().invoke(app, ["eval", "--model", str(chat_dirs / "unlearned"), "--data", str(data), "--out",
                                 str(chat_dirs / "ev"), "--retain", "none", "--device", "cpu", "--no-progress",
                                 "--no-cache", "--qa-max-new-tokens", "2"])
    assert r.exit_code == 0, r.output
    meta = json.loads((chat_dirs / "ev" / "summary.json").read_text())["meta"]
    assert meta["prompt_format"]["chat_template"] and meta["prompt_format"]["system_prompt"] == "Answer briefly."
    r = CliRunner().invoke(app, ["attack", "prompts", "--model", str(chat_dirs / "target"), "--forget", str(data),
                                 "--transforms", "question", "--device", "cpu", "--out", str(chat_dirs / "pa.json"),
                                 "--chat-template"])
    assert r.exit_code == 0, r.output
    rec = json.loads((chat_dirs / "pa.json").read_text())
    assert rec["prompt_format"]["chat_template"] and rec["results"]["question"]["meta"]["example_prompt"].startswith(
        "<|im_start|>user\n")
    r = CliRunner().invoke(app, ["attack", "probe", "--model", str(chat_dirs / "target"), "--forget", str(data),
                                 "--device", "cpu", "--system-prompt", "x"])
    assert r.exit_code == 2 and "needs --chat-template" in r.output


def test_experiments_carry_the_format_and_keep_default_keys(tmp_path):
    from amnesiac.demo import DemoConfig
    from amnesiac.models import tiny
    from amnesiac.reproduce.tofu import TofuConfig
    from amnesiac.runs import sweep_recipe
    from amnesiac.sweep import SweepConfig

    # the default format adds nothing to a recipe or a model config: earlier cache keys stay valid
    assert tiny.default_config("xs", 0, template=QA_TEMPLATE) == tiny.default_config("xs", 0)
    assert "template" not in sweep_recipe(SweepConfig(), 1e-4)
    assert TofuConfig().model_part() == TofuConfig(template=QA_TEMPLATE).model_part()
    assert DemoConfig().template_kw() == {} and DemoConfig(template="Q: {question}\\nA:").template_kw() == {
        "template": "Q: {question}\nA:"}
    custom = tiny.default_config("xs", 0, template="Q: {question}\nA:")
    assert custom["template"] == "Q: {question}\nA:" and tiny.model_dir(custom) != tiny.model_dir(tiny.default_config())
    assert TofuConfig(template="Q: {question}\nA:").model_part()["template"] == "Q: {question}\nA:"
    r = sweep_recipe(SweepConfig(chat_template=True, system_prompt="Be brief."), 1e-4)
    assert r["chat_template"] and r["system_prompt"] == "Be brief."
    with pytest.raises(UserError, match="unknown field"):
        DemoConfig(template="{question} {x}")
    with pytest.raises(UserError, match="placeholder"):
        TofuConfig(template="Q:").check()


def test_tofu_training_examples_follow_the_template(tok):
    from amnesiac.reproduce.tofu_models import encode_qa

    (ids, start), = encode_qa(tok, [("Who?", "Ann")], "Q: {question}\nA:")
    assert tok.decode(ids[:start], skip_special_tokens=True) == "Q: Who?\nA:"
    assert encode_qa(tok, [("Who?", "Ann")]) == encode_qa(tok, [("Who?", "Ann")], QA_TEMPLATE)


def test_the_format_is_part_of_the_training_identity():
    from amnesiac.io import hash_obj
    from amnesiac.unlearn import UnlearnConfig

    c = UnlearnConfig()
    old = {k: v for k, v in c.to_json().items()
           if k not in (*c._NON_TRAINING, "template", "chat_template", "system_prompt")}
    assert c.training_hash() == hash_obj(old)  # checkpoints of the default format resume as before
    assert UnlearnConfig(chat_template=True).training_hash() != c.training_hash()
    assert UnlearnConfig(template="Q: {question}").training_hash() != c.training_hash()
