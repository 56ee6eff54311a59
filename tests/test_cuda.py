"""CUDA against CPU (skipped without a GPU; run by benchmarks/gpu_check.sh): the same tiny model gives the same
log-probs, greedy outputs, unlearned weights and RTN codes on both devices, to the stated tolerances.

Tolerances: CUDA kernels sum in another order than the CPU's (and may use other algorithms), so fp32 results agree
to rounding, not bit for bit: log-probs to 1e-4 (their magnitude is ~1-10); weights after 3 AdamW steps at lr 1e-3
to 2e-4 (as tests/test_distributed.py: Adam turns round-off-level gradients into updates of up to lr)."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_logprobs_and_greedy_generation_match_cpu(trained_tiny, tok, qa_people):
    import copy

    from amnesiac.core import generate_greedy, score_pairs
    from amnesiac.data import qa_answer
    from amnesiac.data.schema import item_prompt

    items = qa_people["forget"] + qa_people["retain"][:30]
    prompts = [item_prompt(it) for it in items]
    conts = [qa_answer(it.answer) for it in items]
    cpu = score_pairs(trained_tiny, tok, prompts, conts, batch_size=8)
    out_cpu = generate_greedy(trained_tiny, tok, prompts, 16, stop_strings=["\n"], batch_size=8)
    gpu_model = copy.deepcopy(trained_tiny).to("cuda")  # the fixture is shared: leave it on the CPU
    gpu = score_pairs(gpu_model, tok, prompts, conts, batch_size=8)
    out_gpu = generate_greedy(gpu_model, tok, prompts, 16, stop_strings=["\n"], batch_size=8)
    diff = max(float(abs(a - b).max()) for a, b in zip(cpu.token_logprobs, gpu.token_logprobs))
    assert diff < 1e-4
    same = sum(a == b for a, b in zip(out_cpu, out_gpu))
    assert same == len(items), f"greedy outputs differ on {len(items) - same} of {len(items)} prompts"


def test_unlearning_on_cuda_matches_cpu(tok, qa_people, tmp_path):
    from amnesiac.models import save_model
    from amnesiac.unlearn import unlearn
    from conftest import make_tiny

    save_model(make_tiny(tok, seed=3, hidden=64, layers=2, heads=4, inter=128), tok, tmp_path / "t")
    opts = dict(method="npo_gdr", lr=1e-3, max_steps=3, batch_size=4, progress=False)
    f, r = qa_people["forget"][:6], qa_people["retain"][:8]
    a = unlearn(str(tmp_path / "t"), f, r, device="cpu", **opts)
    b = unlearn(str(tmp_path / "t"), f, r, device="cuda", **opts)
    assert b.info["device"].startswith("cuda") and b.info["memory"]["cuda_max_allocated_bytes"] > 0
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert max(float((sa[k] - sb[k].cpu()).abs().max()) for k in sa) < 2e-4
    for ra, rb in zip(a.info["losses"], b.info["losses"]):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4, abs=1e-5)


def test_rtn_codes_match_cpu():
    from amnesiac.attacks.quant.backends import get_quantizer

    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(0)) * 0.02
    for kw in (dict(bits=4, group=64, scheme="sym"), dict(bits=8, group=None, scheme="sym")):
        q = get_quantizer("rtn", **kw)
        a, b = q(w), q(w.cuda()).cpu()
        # a weight exactly halfway between two codes may round either way after a last-bit difference in the scale
        assert (a != b).float().mean().item() < 1e-3
        assert float((a - b).abs().max()) <= float(w.abs().max()) / (2 ** (kw["bits"] - 1) - 1) + 1e-6
