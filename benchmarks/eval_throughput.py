"""Eval throughput: amnesiac's batched core vs a naive one-example-at-a-time HF loop and vs batched HF generate.

Workloads of the metric suite, each run every way on the same prompts:
  generation — (a) greedy QA answers, 32 new tokens (the KnowMem budget), stop string "\n" (as metrics.qa), then
                   exact-match recall;
               (b) VerbMem-style continuation of biography prefixes, 128 new tokens, no stop string, then ROUGE-L F1;
               naive   = `model.generate` per prompt (what MUSE's/TOFU's reference loops do);
               batched = `model.generate` on left-padded batches of the same size, in input order, with
                         `stop_strings` + `tokenizer` (the strong baseline: what a user would write);
               ours    = core.generate_greedy (length-bucketed, left-padded batches, KV cache).
  scoring    — per-token answer log-probs (TOFU probability):
               naive = one forward per example; ours = core.score_pairs (length-bucketed batches).
Greedy outputs must be identical (asserted: token ids without a stop string; with one, the texts cut at it,
since each way may decode a few tokens past the stop before noticing) and log-probs equal, then the speed ratios
are written to benchmarks/results/eval_throughput-<device>.json with a machine description.

Run: python benchmarks/eval_throughput.py [--n 128] [--batch-size 32] [--threads 1] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch


def build_model(seed: int, train_steps: int, log=print):
    """xs tiny Llama (hidden 128, 4 layers, 4 heads) briefly trained on bios QA so that greedy decoding has
    clear winners (a random model has near-ties that say nothing about our code)."""
    from amnesiac.core.logprobs import encode_pairs
    from amnesiac.data import bios, qa_answer, qa_prompt
    from amnesiac.models.tiny import SIZES, build_llama
    from amnesiac.models.tokenizer import train_tokenizer
    from amnesiac.models.train import train_lm

    g = bios.generate(n_people=200, n_pretrain_people=10, seed=seed)
    rng = random.Random(seed)
    items = [it for p in g["people"] for it in bios.qa_items(p, rng)]
    bios_txt = [bios.biography(p, rng) for p in g["people"] for _ in range(2)]
    corpus = bios_txt + [f"{qa_prompt(it.question)}{qa_answer(it.answer)}" for it in items]
    tok = train_tokenizer(corpus, vocab_size=SIZES["xs"]["vocab"])
    torch.manual_seed(seed)
    model = build_llama(SIZES["xs"], tok)
    ex = encode_pairs(tok, [qa_prompt(it.question) for it in items], [qa_answer(it.answer) + tok.eos_token for it in items])
    ex += encode_pairs(tok, [""] * len(bios_txt), [b + tok.eos_token for b in bios_txt])
    t0 = time.time()
    train_lm(model, ex, tok.pad_token_id, epochs=train_steps * 32 / len(ex), lr=3e-3, batch_size=32, seed=seed)
    log(f"trained {train_steps} steps in {time.time() - t0:.1f} s")
    return model.eval(), tok, items, bios_txt


def _stop_kw(tok, stops):
    return {"stop_strings": list(stops), "tokenizer": tok} if stops else {}


def _trim(g: list[int], tok) -> list[int]:
    """Generated ids up to and including the first EOS (later positions are padding)."""
    return g[: g.index(tok.eos_token_id) + 1] if tok.eos_token_id in g else g


def naive_generate(model, tok, prompts, max_new_tokens, stops=()):
    out = []
    dev = next(model.parameters()).device
    for p in prompts:
        ids = torch.tensor([[tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"]], device=dev)
        with torch.no_grad():
            g = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                               do_sample=False, pad_token_id=tok.pad_token_id,
                               **_stop_kw(tok, stops))[0, ids.shape[1]:].tolist()
        out.append(_trim(g, tok))
    return out


def batched_hf_generate(model, tok, prompts, max_new_tokens, batch_size, stops=()):
    """The strong baseline: HF `generate` on left-padded batches (input order, no length bucketing); HF derives
    position ids from the attention mask, so a padded row sees the positions it would see alone."""
    out = []
    dev = next(model.parameters()).device
    enc = [[tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    for s in range(0, len(enc), batch_size):
        batch = enc[s: s + batch_size]
        T = max(map(len, batch))
        ids = torch.tensor([[tok.pad_token_id] * (T - len(b)) + b for b in batch], device=dev)
        am = torch.tensor([[0] * (T - len(b)) + [1] * len(b) for b in batch], device=dev)
        with torch.no_grad():
            g = model.generate(ids, attention_mask=am, max_new_tokens=max_new_tokens, do_sample=False,
                               pad_token_id=tok.pad_token_id, **_stop_kw(tok, stops))[:, T:].tolist()
        out += [_trim(x, tok) for x in g]
    return out


def naive_score(model, tok, prompts, conts):
    dev = next(model.parameters()).device
    res = []
    for p, c in zip(prompts, conts):
        pid = [tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"]
        cid = tok(c, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([pid + cid], device=dev)
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        res.append(lp[len(pid) - 1:].gather(-1, ids[0, len(pid):, None])[:, 0].double().cpu().numpy())
    return res


def timed(fn, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def machine(device: str) -> dict:
    from amnesiac.io import versions

    d = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
         "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
         "load_average_1m_5m_15m": list(os.getloadavg()), "device": device, "versions": versions()}
    if device.startswith("cuda"):
        d["gpu"] = torch.cuda.get_device_name(0)
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=128, help="number of QA prompts")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from amnesiac.core import generate_greedy, score_pairs
    from amnesiac.data import qa_answer, qa_prompt
    from amnesiac.io import write_json
    from amnesiac.metrics.text import exact_match

    from amnesiac.metrics.muse import verbmem_gt_cut
    from amnesiac.metrics.text import rouge_muse

    model, tok, items, bios_txt = build_model(a.seed, a.train_steps)
    model.to(a.device)
    rs = random.Random(a.seed)
    items = rs.sample(items, a.n)
    prompts = [qa_prompt(it.question) for it in items]
    conts = [qa_answer(it.answer) for it in items]
    bio = rs.sample(bios_txt, a.n)
    bio_prompts = [" ".join(b.split()[:8]) for b in bio]
    generate_greedy(model, tok, prompts[:4], 4, batch_size=4)  # warm-up every path
    naive_generate(model, tok, prompts[:2], 4)
    batched_hf_generate(model, tok, prompts[:4], 4, 4, stops=["\n"])

    def em(outs):  # QA exact-match recall on the first line (docs/science.md §5)
        return float(np.mean([exact_match(o, it.answer) for o, it in zip(outs, items)]))

    def rouge(outs):  # VerbMem: ROUGE-L F1 vs the rest of the biography cut to max_new tokens (§5)
        return float(np.mean([rouge_muse(verbmem_gt_cut(tok, b[len(p):], 128), o)["rougeL_f1"]
                              for o, b, p in zip(outs, bio, bio_prompts)]))

    from amnesiac.core.generate import _cut_at_stops

    def text(ids, stops):  # what the metric sees: decoded as generate_greedy decodes, cut at the first stop
        t = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        return _cut_at_stops(t, stops)[0] if stops else t

    gen = {}
    for name, ps, new, stops, metric in (("qa_exact_match_32tok", prompts, a.max_new_tokens, ["\n"], em),
                                         ("verbmem_rouge_128tok", bio_prompts, 128, [], rouge)):
        naive_ids, t_naive = timed(lambda: naive_generate(model, tok, ps, new, stops), a.device)
        hf_ids, t_hf = timed(lambda: batched_hf_generate(model, tok, ps, new, a.batch_size, stops), a.device)
        (our_txt, our_ids), t_ours = timed(lambda: generate_greedy(model, tok, ps, new, stop_strings=stops,
                                                                  batch_size=a.batch_size, return_ids=True), a.device)
        for other, ids in (("naive", naive_ids), ("batched HF", hf_ids)):
            if not stops:  # no stop string: every way decodes exactly to EOS or the budget
                mism = [i for i, (x, y) in enumerate(zip(ids, our_ids)) if x != y]
                assert not mism, f"{name}: {other} ids differ on {len(mism)} of {len(ps)} prompts (first: {mism[0]})"
            txt = [text(g, stops) for g in ids]
            mism = [i for i, (x, y) in enumerate(zip(txt, our_txt)) if x != y]
            assert not mism, f"{name}: {other} outputs differ on {len(mism)} of {len(ps)} prompts (first: {mism[0]})"
            assert metric(txt) == metric(our_txt)
        gen[name] = {"naive_s": round(t_naive, 3), "batched_hf_generate_s": round(t_hf, 3), "ours_s": round(t_ours, 3),
                     "speedup_vs_naive": round(t_naive / t_ours, 2), "speedup_vs_batched_hf": round(t_hf / t_ours, 2),
                     "identical_greedy_outputs": True, "stop_strings": stops, "metric_value": metric(our_txt),
                     "max_new_tokens": new, "generated_tokens": int(sum(len(g) for g in our_ids))}
        print(f"{name}: naive {t_naive:.2f} s, batched HF {t_hf:.2f} s, ours {t_ours:.2f} s → "
              f"{t_naive / t_ours:.1f}× / {t_hf / t_ours:.1f}×")

    naive_lp, ts_naive = timed(lambda: naive_score(model, tok, prompts, conts), a.device)
    sb, ts_ours = timed(lambda: score_pairs(model, tok, prompts, conts, batch_size=a.batch_size), a.device)
    max_diff = max(float(np.abs(x - y).max()) for x, y in zip(naive_lp, sb.token_logprobs))
    assert max_diff < 1e-4, f"log-probs differ by {max_diff}"

    res = {
        "benchmark": "eval_throughput", "model": "tiny Llama xs (hidden 128, 4 layers, 4 heads, inter 512), "
        f"{sum(p.numel() for p in model.parameters())} params, trained {a.train_steps} steps on bios QA + biographies",
        "n_prompts": a.n, "batch_size": a.batch_size, "generation": gen,
        "scoring": {"naive_s": round(ts_naive, 3), "ours_s": round(ts_ours, 3), "speedup": round(ts_naive / ts_ours, 2),
                    "max_abs_logprob_diff": max_diff},
        "baselines": {"naive": "model.generate one prompt at a time",
                      "batched_hf": "model.generate, left-padded batches of batch_size in input order, stop_strings"},
        "target": ">= 5x vs naive on CPU at batch 32 (generation)", "machine": machine(a.device),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(a.out) if a.out else Path(__file__).parent / "results" / \
        f"eval_throughput-{a.device.split(':')[0]}-t{torch.get_num_threads()}.json"
    write_json(out, res)
    print(f"scoring: naive {ts_naive:.2f} s, ours {ts_ours:.2f} s → {ts_naive / ts_ours:.1f}×  ({out})")


if __name__ == "__main__":
    main()
