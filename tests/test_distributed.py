"""Multi-process unlearning (amnesiac/unlearn/distributed.py): sharding and loss-weighting arithmetic, refused
launch configurations, and two real 2-process launches on CPU (gloo) compared with one process, same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from amnesiac.unlearn import UnlearnError, unlearn
from amnesiac.unlearn.common import Split
from amnesiac.unlearn.distributed import count_units, init, shard_indices

REPO = Path(__file__).resolve().parents[1]
# fp32 on CPU: the 2-process run sums the same per-example terms in a different order (two half-batches, each
# padded to its own length), so weights agree to float rounding, not bit for bit: measured max |Δw| 2e-8..1.2e-6
# for updates of ~3e-3 (lr 1e-3). The exception is Adam fed a round-off-level gradient (KLR at step 1, where
# θ = π_ref and the exact KL gradient is 0; embedding rows reached only through it): Adam divides by √v, so
# noise of 1e-9 becomes an update of up to lr; measured there: 13 of 45k weights off by ≤ 6.7e-5); and 8-bit
# Adam, whose state rounding to 256 codes can flip on a last-bit difference (measured: 2 weights off by 2e-5).
ATOL = 5e-6  # nearly every weight
MAX_ATOL = 2e-4  # every weight (≤ 5 % of the largest update)
MAX_FRAC_ABOVE_ATOL = 1e-3


def test_shards_are_disjoint_balanced_and_cover_the_batch():
    assert shard_indices([10, 11, 12, 13, 14], 0, 2) == [10, 11, 12]
    assert shard_indices([10, 11, 12, 13, 14], 1, 2) == [13, 14]
    assert [shard_indices([7, 8, 9, 6], r, 3) for r in range(3)] == [[7, 8], [9], [6]]
    assert [shard_indices([5], r, 2) for r in range(2)] == [[5], []]  # a rank may get nothing
    for n in range(9):
        idx = list(range(100, 100 + n))
        parts = [shard_indices(idx, r, 4) for r in range(4)]
        assert sum(parts, []) == idx
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_units_and_weights_give_the_global_mean():
    # seqs = (ids, start of scored part); scored positions are max(start, 1) .. len - 1
    split = Split("f", [], [([1, 2, 3, 4], 2), ([1, 2], 0), ([1, 2, 3, 4, 5, 6], 3)], pad_id=0)
    assert count_units(split, [0, 1, 2], "tokens") == 2 + 1 + 3
    assert count_units(split, [0, 2], "examples") == 2
    # a token-mean loss over 6 tokens with per-token values v: global mean = Σv/6. Rank 0 has example 0
    # (2 tokens), rank 1 examples 1, 2 (4 tokens); W·n_r/N-weighted local means, averaged, give Σv/6.
    v = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    local = [sum(v[:2]) / 2, sum(v[2:]) / 4]
    w = [2 * 2 / 6, 2 * 4 / 6]
    assert (w[0] * local[0] + w[1] * local[1]) / 2 == pytest.approx(sum(v) / 6)


def test_every_registered_loss_declares_its_units():
    """A new method/regulariser must say what its loss averages over before it can be split across processes."""
    from amnesiac.cli import load_all
    from amnesiac.registry import registry
    from amnesiac.unlearn.common import Method
    from amnesiac.unlearn.distributed import UNITS

    load_all()
    for name, cls in registry("unlearn_methods").items():
        assert ("forget", name) in UNITS or "forget" in getattr(cls, "dist_units", {}), name
        if cls.retain_loss is not Method.retain_loss:
            assert ("retain_term", name) in UNITS, name
    for name, cls in registry("regularizers").items():
        assert name == "none" or ("reg", name) in UNITS, name


def test_launch_configurations_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # FSDP is supported: tests/test_fsdp.py
    with pytest.raises(UnlearnError, match="DeepSpeed is not supported"):
        init("cpu")
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    with pytest.raises(UnlearnError, match="cuda:LOCAL_RANK"):
        init("cuda:1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    d, dev = init("cpu")
    assert (d.world, d.is_main, dev) == (1, True, "cpu")


# ----- real launches: 2 processes (torch.distributed.run, gloo) vs 1 process -----

@pytest.fixture(scope="module")
def target(tok, qa_people, tmp_path_factory):
    """A tiny random Llama saved to disk with 7 forget and 12 retain QA items as JSONL."""
    from amnesiac.models import save_model
    from conftest import make_tiny

    d = tmp_path_factory.mktemp("dist")
    save_model(make_tiny(tok, seed=3, hidden=64, layers=2, heads=4, inter=128), tok, d / "t")
    for name, items in (("f", qa_people["forget"][:7]), ("r", qa_people["retain"][:12])):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(i.to_json()) + "\n" for i in items))
    return d


def _launch(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(d / "model.safetensors"))


def _assert_same_run(one: Path, two: Path, target: Path, world: int = 2) -> None:
    a, b, t = _weights(one), _weights(two), _weights(target)
    assert max((a[k] - t[k]).abs().max().item() for k in a) > 1e-3  # training moved the weights ...
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])  # ... the same way in both runs
    assert diff.max().item() < MAX_ATOL
    assert (diff > ATOL).float().mean().item() <= MAX_FRAC_ABOVE_ATOL
    la = [json.loads(x) for x in (one / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (two / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == [r["step"] for r in la]  # one writer: no duplicated lines
    for ra, rb in zip(la, lb):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4, abs=1e-5)
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-4)
    info = json.loads((two / "unlearn.json").read_text())
    assert info["distributed"]["world_size"] == world


@pytest.mark.slow
def test_cli_two_processes_equal_one(target, tmp_path):
    """`torchrun -m amnesiac.cli unlearn` (what `accelerate launch --multi_gpu -m amnesiac.cli` runs): NPO_KLR
    (example-mean forget loss, token-mean KL), batch 5 split 3 + 2, grad_accum 2, checkpoints by rank 0."""
    common = ["unlearn", "--model", str(target / "t"), "--forget", str(target / "f.jsonl"),
              "--retain", str(target / "r.jsonl"), "--method", "npo_klr", "--lr", "1e-3", "--max-steps", "4",
              "--batch-size", "5", "--grad-accum", "2", "--device", "cpu", "--no-progress",
              "--checkpoint-every", "2", "--keep-checkpoint"]
    opts = dict(method="npo_klr", lr=1e-3, max_steps=4, batch_size=5, grad_accum=2, device="cpu", progress=False,
                checkpoint_every=2, keep_checkpoint=True)
    unlearn(str(target / "t"), str(target / "f.jsonl"), str(target / "r.jsonl"), out=tmp_path / "one", **opts)
    _launch(["-m", "amnesiac.cli", *common, "--out", str(tmp_path / "two")], tmp_path)
    _assert_same_run(tmp_path / "one", tmp_path / "two", target / "t")
    assert (tmp_path / "two" / "checkpoint" / "params.safetensors").exists()
    assert not (tmp_path / "two" / "checkpoint.tmp").exists()


DRIVER = """
import sys, torch
torch.set_num_threads(1)
from amnesiac.unlearn import unlearn
base, out = sys.argv[1], sys.argv[2]
for name, kw in {RUNS}.items():
    unlearn(base + "/t", base + "/f.jsonl", base + "/r.jsonl", out=out + "/" + name, **kw)
"""
RUNS = {  # token-mean (GA, GDR, RMU) and example-mean (IdkDPO) losses, 8-bit optimizer states
    "ga_gdr_8bit": dict(method="ga_gdr", optimizer="adamw8bit"),
    "rmu": dict(method="rmu", rmu_layer=1),
    "idkdpo": dict(method="idkdpo"),
}
COMMON = dict(lr=1e-3, max_steps=3, batch_size=5, grad_accum=2, device="cpu", progress=False)


@pytest.mark.slow
def test_python_api_two_processes_equal_one(target, tmp_path):
    runs = {k: {**COMMON, **v} for k, v in RUNS.items()}
    (tmp_path / "driver.py").write_text(DRIVER.replace("{RUNS}", repr(runs)))
    for name, kw in runs.items():
        unlearn(str(target / "t"), str(target / "f.jsonl"), str(target / "r.jsonl"), out=tmp_path / "one" / name, **kw)
    _launch([str(tmp_path / "driver.py"), str(target), str(tmp_path / "two")], tmp_path)
    for name in runs:
        _assert_same_run(tmp_path / "one" / name, tmp_path / "two" / name, target / "t")
