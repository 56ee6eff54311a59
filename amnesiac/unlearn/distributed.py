"""Multi-process unlearning with DDP semantics, under `torchrun` or `accelerate launch` (torch.distributed).

No DDP wrapper: the trainer keeps its one loop, and this module adds four things to it.
- Data: every rank loads the same model, data and reference and walks the same micro-batch index streams
  (trainer.Sampler). Rank r takes a contiguous, balanced, disjoint slice of each micro-batch (`shard`), so
  `batch_size` stays the *global* micro-batch and the trained weights do not depend on the number of processes.
- Exact averaging: every loss term is a mean over units, either examples or scored tokens (UNITS; docs/science.md §2
  gives the losses). A rank's term is scaled by W·n_r/N (n_r its units, N those of the whole micro-batch), so the
  average of the ranks' gradients is the gradient of the global mean, up to float summation order.
- `sync_grads`, called right after the micro-batch loop, all-reduces (averages) the gradients and the logged loss
  parts before SURE masks and clipping: every rank then takes the same step and the weights stay identical.
- Rank 0 alone writes OUT, log.jsonl and checkpoints; every rank reads a checkpoint on resume. The trainable
  weights and SURE masks are broadcast from rank 0 at the start; the early-stop monitor runs on rank 0 and its
  value is broadcast, so all ranks stop at the same step.

A rank that raises (bad data, a non-finite loss) exits; torchrun/accelerate then stop the other ranks.
FSDP is not supported: see `init` for what is refused and docs/guides/multi-gpu.md for what is missing.
"""
from __future__ import annotations

import atexit
import os
from typing import Callable

import torch

from .common import Method, Regularizer, Split, UnlearnError

# What each loss term is a mean over: (split the units come from, "examples" | "tokens").
# tokens = scored positions (labels_mask[:, 1:]); RMU's (N, H) mean is over N tokens × a constant H.
UNITS = {
    ("forget", "ga"): ("forget", "tokens"),  # ga_loss: token mean
    ("forget", "npo"): ("forget", "examples"),  # npo_loss: mean over sequences
    ("forget", "simnpo"): ("forget", "examples"),
    ("forget", "idkdpo"): ("forget", "examples"),  # forget and forget_idk share indices
    ("forget", "rmu"): ("forget", "tokens"),
    ("retain_term", "rmu"): ("retain", "tokens"),
    ("reg", "gdr"): ("retain", "tokens"),
    ("reg", "klr"): ("retain", "tokens"),  # KL averaged over positions
}
BUCKET_ELEMS = 1 << 24  # gradients are all-reduced in float32 buckets of ≤ 16 M elements (64 MB)


def shard_indices(idx: list[int], rank: int, world: int) -> list[int]:
    """Rank `rank`'s contiguous slice of idx; the first len(idx) % world ranks get one more element."""
    base, extra = divmod(len(idx), world)
    start = rank * base + min(rank, extra)
    return idx[start: start + base + (1 if rank < extra else 0)]


def count_units(split: Split, idx: list[int], unit: str) -> int:
    if unit == "examples":
        return len(idx)
    # core.logprobs.collate scores positions max(start, 1) .. len(ids) - 1 of each sequence
    return sum(max(0, len(split.seqs[i][0]) - max(split.seqs[i][1], 1)) for i in idx)


class Dist:
    """This process's place in the group; a world of 1 makes every method a no-op."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, device: str = "cpu", backend: str = ""):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.device, self.backend = torch.device(device), backend
        self.active = world > 1
        self._full: dict[str, list[int]] = {}  # the whole current micro-batch, per split

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict:
        return {"world_size": self.world, "backend": self.backend or None,
                "batch_size_is": "global (split across ranks)" if self.active else "per process"}

    def shard(self, idx: list[int], split: str) -> list[int]:
        if not self.active:
            return idx
        self._full[split] = idx
        return shard_indices(idx, self.rank, self.world)

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    # ----- set-up: weighted losses, identical starting state, one monitor -----
    def prepare(self, ctx, method: Method, reg: Regularizer, params: dict, sure_masks: dict | None,
                monitor: Callable[[], float] | None):
        """Patch method/reg (instance attributes) to return rank-weighted losses; broadcast rank 0's trainable
        weights and SURE masks; return the monitor to use (rank 0's value, broadcast)."""
        if not self.active:
            return monitor
        self._weigh(method, "forget_loss", ("forget", method.name))
        if type(method).retain_loss is not Method.retain_loss:
            self._weigh(method, "retain_loss", ("retain_term", method.name))
        if type(reg).loss is not Regularizer.loss:
            self._weigh(reg, "loss", ("reg", reg.name))
        for p in params.values():
            self._broadcast(p.data)
        for m in (sure_masks or {}).values():
            self._broadcast(m)
        if monitor is None:
            return None

        def agreed() -> float:
            v = torch.tensor([monitor() if self.is_main else 0.0], dtype=torch.float64, device=self.device)
            torch.distributed.broadcast(v, 0)
            return float(v.item())
        return agreed

    def _weigh(self, obj, attr: str, key: tuple[str, str]) -> None:
        units = getattr(obj, "dist_units", {}).get(key[0]) or UNITS.get(key)
        if units is None:
            known = ", ".join(sorted({k[1] for k in UNITS}))
            raise UnlearnError(f"{key[1]!r}: unknown how its {key[0]} loss averages, so it cannot be split across "
                               f"processes exactly (known: {known}; a plugin sets dist_units = "
                               "{'forget': ('forget', 'tokens'|'examples'), ...})")
        split_name, unit = units
        fn = getattr(obj, attr)

        def weighted(c, idx):
            if not idx:  # this rank's slice is empty (micro-batch smaller than the world): no gradient
                return torch.zeros((), device=c.device, requires_grad=True)
            loss = fn(c, idx)
            if loss is None:
                return None
            split = c.data[split_name]
            total = count_units(split, self._full[split_name], unit)
            return loss * (self.world * count_units(split, idx, unit) / max(total, 1))
        setattr(obj, attr, weighted)

    def _broadcast(self, t: torch.Tensor) -> None:
        """Bit-exact broadcast from rank 0 of any dtype, sent as bytes (gloo lacks some dtypes)."""
        buf = t.detach().to(torch.uint8) if t.dtype == torch.bool else t.detach().contiguous()
        torch.distributed.broadcast(buf.reshape(-1).view(torch.uint8), 0)
        if buf.data_ptr() != t.data_ptr():
            with torch.no_grad():
                t.copy_(buf)

    # ----- every step -----
    def sync_grads(self, params: list[torch.nn.Parameter], parts: dict[str, float]) -> None:
        """Average gradients (in float32 buckets) and the logged loss parts over all ranks, in place."""
        if not self.active:
            return
        grads = []
        for p in params:
            if p.grad is None:  # an empty slice, or a parameter this rank's loss did not reach
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        i = 0
        while i < len(grads):
            bucket, n = [], 0
            while i < len(grads) and (not bucket or n + grads[i].numel() <= BUCKET_ELEMS):
                bucket.append(grads[i])
                n += grads[i].numel()
                i += 1
            flat = torch.cat([g.reshape(-1).float() for g in bucket])
            torch.distributed.all_reduce(flat)
            flat /= self.world
            off = 0
            for g in bucket:
                g.copy_(flat[off: off + g.numel()].view_as(g))
                off += g.numel()
        keys = sorted(parts)
        v = torch.tensor([parts[k] for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(v)
        for k, x in zip(keys, (v / self.world).tolist()):
            parts[k] = x


_SINGLE = Dist()
_current: Dist = _SINGLE


def current() -> Dist:
    """The group this process joined via `init` (a world of 1 if none)."""
    return _current


def launched_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init(device: str = "auto") -> tuple[Dist, str]:
    """Join the process group when launched by torchrun / `accelerate launch` (WORLD_SIZE > 1).

    Returns (Dist, this rank's device): CUDA → cuda:LOCAL_RANK with NCCL, else CPU with gloo. Single process:
    (a world of 1, the device as given). Idempotent (a second call reuses the group)."""
    global _current
    from ..models.load import resolve_device

    world = launched_world()
    if world <= 1:
        _current = _SINGLE
        return _SINGLE, resolve_device(device)
    for var, what in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(var, "").lower() in ("1", "true", "yes"):
            raise UnlearnError(f"`accelerate launch` with {what} is not supported by amnesiac's trainer; launch with "
                               "a plain multi-process config (DDP: `accelerate launch --multi_gpu --num_processes N`) "
                               "or torchrun. What FSDP would need: docs/guides/multi-gpu.md")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.startswith("cuda"):
        if ":" in dev:
            raise UnlearnError(f"device {dev!r}: under a multi-process launch each process uses cuda:LOCAL_RANK; "
                               "pass --device cuda or auto")
        dev, backend = f"cuda:{local}", "nccl"
        torch.cuda.set_device(local)
    elif dev == "cpu":
        backend = "gloo"
    else:
        raise UnlearnError(f"device {dev!r} under a multi-process launch; available: auto, cuda, cpu")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, init_method="env://")
        atexit.register(_destroy)
    elif torch.distributed.get_world_size() != world:
        raise UnlearnError("an existing process group disagrees with WORLD_SIZE")
    backend = torch.distributed.get_backend()
    _current = Dist(rank, world, local, dev, backend)
    return _current, dev


def _destroy() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
