"""FSDP2 unlearning (amnesiac/unlearn/fsdp.py, `strategy="fsdp"`): refused combinations, SURE mask slicing, and
real 2-process launches on CPU (torch.distributed.run, gloo) compared with one process, plus checkpoints resumed
across process counts (2 → 1 and 1 → 2).

Tolerance: the same as tests/test_distributed.py (see there). FSDP changes no arithmetic DDP does not already
change: every rank computes its slice's loss on the full (all-gathered) weights, the reduce-scatter sums the two
ranks' gradients in another order than one process's batch does, and each shard's AdamW update is elementwise."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from amnesiac.unlearn import UnlearnError, unlearn
from amnesiac.unlearn.config import UnlearnConfig
from amnesiac.unlearn.distributed import init
from amnesiac.unlearn.fsdp import check, local_rows
from test_distributed import _assert_same_run, _launch, _weights, target  # noqa: F401  (target: fixture)


def test_local_rows_follow_torch_chunk():
    m = torch.arange(7)
    assert [local_rows(m, r, 2).tolist() for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6]]
    assert [local_rows(m, r, 4).tolist() for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6]]
    assert [local_rows(torch.arange(2), r, 3).tolist() for r in range(3)] == [[0], [1], []]  # a rank may hold none
    for n in range(1, 12):  # the slices tile the rows, in order
        assert torch.equal(torch.cat([local_rows(torch.arange(n), r, 3) for r in range(3)]), torch.arange(n))


@pytest.mark.parametrize("opts, match", [
    (dict(lora_rank=8), "LoRA"),
    (dict(robust_to="q4_1"), "quantization-aware"),
    (dict(method="npo_robust", robust_noise=0.5), "quantization-aware"),
    (dict(optimizer="adamw8bit"), "8-bit"),
])
def test_fsdp_refuses_what_it_cannot_shard(opts, match):
    with pytest.raises(UnlearnError, match=match):
        check(UnlearnConfig(strategy="fsdp", **opts))


def test_strategy_choices(monkeypatch):
    with pytest.raises(UnlearnError, match="DeepSpeed is not supported"):
        init("cpu", UnlearnConfig(strategy="deepspeed"))
    with pytest.raises(UnlearnError, match="unknown strategy 'zero3'; available: ddp, fsdp"):
        init("cpu", UnlearnConfig(strategy="zero3"))
    with pytest.raises(UnlearnError, match="does not combine with LoRA"):  # checked even before a group exists
        init("cpu", UnlearnConfig(strategy="fsdp", lora_rank=4))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # `accelerate launch --use_fsdp` selects the FSDP path
    with pytest.raises(UnlearnError, match="does not combine with LoRA"):
        init("cpu", UnlearnConfig(lora_rank=4))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(UnlearnError, match="DeepSpeed is not supported"):
        init("cpu", UnlearnConfig())
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    d, dev = init("cpu", UnlearnConfig(strategy="fsdp"))  # one process: nothing to shard
    assert (d.world, d.fsdp, dev) == (1, False, "cpu")


# ----- real launches -----

DRIVER = """
import sys, torch
torch.set_num_threads(1)
from amnesiac.unlearn import unlearn
base, out = sys.argv[1], sys.argv[2]
for name, kw in {RUNS}.items():
    model = kw.pop("model", base + "/t")
    r = unlearn(model, base + "/f.jsonl", base + "/r.jsonl", out=out + "/" + name, strategy="fsdp", **kw)
    assert r.info["distributed"]["strategy"].startswith("fsdp2"), r.info["distributed"]
    assert 0.4 < r.info["distributed"]["rank0_shard_fraction"] < 0.6  # rank 0 held about half the weights
    assert not any(type(p).__name__ == "DTensor" for p in r.model.parameters())  # a plain model comes back
    if r.model.config.tie_word_embeddings:  # gathered once, tied again
        assert r.model.lm_head.weight.data_ptr() == r.model.model.embed_tokens.weight.data_ptr()
"""
RUNS = {
    # example-mean NPO + token-mean KLR, grad_accum 2, checkpoints gathered from shards
    "npo_klr": dict(method="npo_klr", batch_size=5, grad_accum=2, checkpoint_every=2, keep_checkpoint=True),
    # SURE (row masks sliced per shard, masked weight decay on shards) with gradient checkpointing; batch 3 over
    # 7 items ends each epoch with a micro-batch of 1, so rank 1's slice is empty (a forward times 0)
    "ga_gdr_sure": dict(method="ga_gdr_sure", sure_percentile=70, batch_size=3, gradient_checkpointing=True),
    "rmu": dict(method="rmu", rmu_layer=1, batch_size=5),  # frozen parameters inside sharded layers
    # early stop: the monitor generates on every rank (collective forwards); a random model's recall is 0, so
    # both runs stop at the first check
    "npo_early": dict(method="npo", batch_size=5, early_stop_recall=0.0, early_stop_every=2, monitor_size=4),
}
COMMON = dict(lr=1e-3, max_steps=4, device="cpu", progress=False)


def _runs(extra: dict | None = None) -> dict:
    return {k: {**COMMON, **v, **(extra or {})} for k, v in RUNS.items()}


@pytest.mark.slow
def test_fsdp_two_processes_equal_one(target, tok, tmp_path):  # noqa: F811
    from transformers import LlamaConfig, LlamaForCausalLM

    from amnesiac.models import save_model

    # tied input/output embeddings (SmolLM2, Gemma): one parameter under two names in FSDP's root unit
    torch.manual_seed(4)
    save_model(LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True)), tok, tmp_path / "tied")
    runs = _runs()
    runs["tied"] = {**COMMON, "method": "npo_klr", "batch_size": 5, "model": str(tmp_path / "tied")}
    (tmp_path / "driver.py").write_text(DRIVER.replace("{RUNS}", repr(runs)))
    for name, kw in runs.items():
        kw = dict(kw)
        unlearn(kw.pop("model", str(target / "t")), str(target / "f.jsonl"), str(target / "r.jsonl"),
                out=tmp_path / "one" / name, **kw)
    _launch([str(tmp_path / "driver.py"), str(target), str(tmp_path / "two")], tmp_path)
    for name in runs:
        _assert_same_run(tmp_path / "one" / name, tmp_path / "two" / name,
                         tmp_path / "tied" if name == "tied" else target / "t")
    early = [json.loads((tmp_path / d / "npo_early" / "unlearn.json").read_text()) for d in ("one", "two")]
    assert [(i["steps"], i["stopped_early"]) for i in early] == [(2, True), (2, True)]
    # the gathered checkpoint is the full model's: same names and shapes as one process's, same values
    a = _weights_of(tmp_path / "one" / "npo_klr" / "checkpoint")
    b = _weights_of(tmp_path / "two" / "npo_klr" / "checkpoint")
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 2e-4
    # SURE: rows outside the masks did not move in the 2-process run either (masks were sliced, not misaligned)
    one, two, t = (_weights(tmp_path / d / "ga_gdr_sure") if d != "t" else _weights(target / "t")
                   for d in ("one", "two", "t"))
    for k in t:
        moved1 = (one[k] != t[k]).reshape(t[k].shape[0], -1).any(-1)
        moved2 = (two[k] != t[k]).reshape(t[k].shape[0], -1).any(-1)
        assert torch.equal(moved1, moved2), k


def _weights_of(ckpt):
    from safetensors.torch import load_file

    return load_file(str(ckpt / "params.safetensors"))


RESUME = dict(method="npo_klr", batch_size=5, grad_accum=2, lr=1e-3, max_steps=4, device="cpu", progress=False,
              checkpoint_every=2, keep_checkpoint=True)


def _killed_copy(src, dst):
    """OUT as a run killed right after its step-2 checkpoint leaves it: only the checkpoint."""
    dst.mkdir(parents=True)
    shutil.copytree(src / "checkpoint", dst / "checkpoint")


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_across_process_counts(target, tmp_path):  # noqa: F811
    paths = (str(target / "t"), str(target / "f.jsonl"), str(target / "r.jsonl"))
    unlearn(*paths, out=tmp_path / "one", **RESUME)  # uninterrupted, one process
    # 2 processes (FSDP, through the CLI: `torchrun -m amnesiac.cli unlearn --strategy fsdp`) write the
    # checkpoint; 1 process resumes it
    _launch(["-m", "amnesiac.cli", "unlearn", "--strategy", "fsdp", "--model", paths[0], "--forget", paths[1],
             "--retain", paths[2], "--method", "npo_klr", "--batch-size", "5", "--grad-accum", "2", "--lr", "1e-3",
             "--max-steps", "4", "--device", "cpu", "--no-progress", "--checkpoint-every", "2", "--keep-checkpoint",
             "--out", str(tmp_path / "two" / "run")], tmp_path)
    info = json.loads((tmp_path / "two" / "run" / "unlearn.json").read_text())
    assert info["distributed"]["strategy"].startswith("fsdp2") and info["config"]["strategy"] == "fsdp"
    _killed_copy(tmp_path / "two" / "run", tmp_path / "two_then_one")
    r = unlearn(*paths, out=tmp_path / "two_then_one", resume=True, **RESUME)
    assert r.info["resumed_from_step"] == 2
    _assert_same_run(tmp_path / "one", tmp_path / "two_then_one", target / "t", world=1)
    # 1 process writes the checkpoint; 2 processes (FSDP) resume it (full tensors sharded back)
    _killed_copy(tmp_path / "one", tmp_path / "one_then_two" / "run")
    drv_resume = DRIVER.replace("{RUNS}", repr({"run": RESUME})).replace("strategy=\"fsdp\",",
                                                                         "strategy=\"fsdp\", resume=True,")
    (tmp_path / "driver_resume.py").write_text(drv_resume)
    _launch([str(tmp_path / "driver_resume.py"), str(target), str(tmp_path / "one_then_two")], tmp_path)
    info = json.loads((tmp_path / "one_then_two" / "run" / "unlearn.json").read_text())
    assert info["resumed_from_step"] == 2 and info["distributed"]["world_size"] == 2
    _assert_same_run(tmp_path / "one", tmp_path / "one_then_two" / "run", target / "t")
