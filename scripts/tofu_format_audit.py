"""Before / after of the verdict on TOFU-format data (the exact-match verdict was vacuous on long answers).

A tiny Llama memorises 6 long TOFU forget10 answers (+ 6 retain); a "retrained" one sees only the 6 retain.
The target itself is audited as the "unlearned" model (it forgot nothing). Printed: the old measure (exact
match of ≤ 16 generated tokens, what `amnesiac audit` used to decide on) and the new one (the metric the data
calls for, every other metric with CIs, the verdict). Usage: python scripts/tofu_format_audit.py OUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(out: Path) -> None:
    from amnesiac.audit import Audit, AuditConfig
    from amnesiac.core import generate_greedy
    from amnesiac.core.logprobs import encode_pairs
    from amnesiac.data import load_dataset, qa_answer, qa_prompt
    from amnesiac.data.answers import exact_match
    from amnesiac.data.schema import item_prompt
    from amnesiac.models import save_model
    from amnesiac.models.tiny import build_llama
    from amnesiac.models.tokenizer import train_tokenizer
    from amnesiac.models.train import train_lm

    torch.set_num_threads(1)
    items = [it for it in load_dataset("tofu:forget10") if 20 <= len(it.answer.split()) <= 28]
    forget, retain = items[:6], items[6:12]
    full = load_dataset("tofu:full")
    tok = train_tokenizer([f"{it.question} {it.answer}" for it in full], vocab_size=1024)

    def train(its, seed):
        torch.manual_seed(seed)
        m = build_llama(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4), tok)
        ex = encode_pairs(tok, [qa_prompt(it.question) for it in its], [qa_answer(it.answer) + tok.eos_token for it in its])
        train_lm(m, ex, tok.pad_token_id, epochs=150, lr=5e-3, batch_size=12, warmup=10, seed=seed, schedule="constant")
        return m.eval()

    save_model(train(forget + retain, 1), tok, out / "target")
    save_model(train(retain, 2), tok, out / "retrained")
    from amnesiac.models import load_model

    m, tk = load_model(out / "target")
    old = [exact_match(o, it.answer) for o, it in zip(
        generate_greedy(m, tk, [item_prompt(it) for it in forget], max_new_tokens=16, stop_strings=["\n"]), forget)]
    s = Audit(str(out / "target"), str(out / "target"), forget, retain, out / "audit", retrained=str(out / "retrained"),
              config=AuditConfig(attacks=["fp", "rtn8", "rtn4_g64", "paraphrase"])).run()
    res = s["results"]
    report = {"old_measure_forget_exact_match_16_tokens": {"target": sum(old) / len(old)},
              "scoring": s["scoring"], "verdict": s["verdict"]["verdict"], "reason": s["verdict"]["reason"],
              "target_fp": res["target"]["fp"], "retrained_fp": res["retrained"]["fp"],
              "rows": [{k: r.get(k) for k in ("attack", "value", "value_ci", "excess", "excess_ci", "p_holm", "significant")}
                       for r in s["recovery"]]}
    print(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tofu_format_audit"))
