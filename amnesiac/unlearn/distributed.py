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
strategy "fsdp" (or `accelerate launch --use_fsdp`) shards weights, gradients and optimizer states with FSDP2 instead
of replicating them: fsdp.py says what changes. DeepSpeed is refused (`init`).
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

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, device: str = "cpu", backend: str = "",
                 strategy: str = "ddp"):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.device, self.backend = torch.device(device), backend
        self.active = world > 1
        self.fsdp = self.active and strategy == "fsdp"  # weights/grads/optimizer states sharded (fsdp.py)
        self.shard_fraction: float | None = None  # FSDP: share of the trainable elements this rank holds
        self._full: dict[str, list[int]] = {}  # the whole current micro-batch, per split

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict:
        return {"world_size": self.world, "backend": self.backend or None,
                "strategy": ("fsdp2 (fully_shard per decoder layer)" if self.fsdp else "ddp") if self.active else None,
                **({"rank0_shard_fraction": self.shard_fraction} if self.fsdp else {}),
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
        if not self.fsdp:  # FSDP: broadcast before sharding (fsdp.shard); here params are shards
            for p in params.values():
                self._broadcast(p.data)
            for m in (sure_masks or {}).values():
                self._broadcast(m)
        if monitor is None:
            return None

        def agreed() -> float:
            # FSDP: the monitor's forward passes are collective, so every rank runs it; rank 0's value decides
            run = self.is_main or self.fsdp
            v = torch.tensor([monitor() if run else 0.0], dtype=torch.float64, device=self.device)
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
            if not idx and self.fsdp:  # empty slice, but FSDP's forward/backward are collective: run one, times 0
                return fn(c, self._full[split_name][:1]) * 0.0
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

    # ----- FSDP: shard after set-up, full tensors for checkpoints and the final model (fsdp.py) -----
    def wrap(self, model, params: dict, sure_masks: dict | None) -> tuple[dict, dict | None]:
        """FSDP: shard the model; returns (its trainable parameters, this rank's SURE mask rows). Else as given."""
        if not self.fsdp:
            return params, sure_masks
        from . import fsdp

        params, sure_masks = fsdp.shard(model, params, sure_masks, self)
        held = sum(p.to_local().numel() for p in params.values())
        self.shard_fraction = round(held / max(1, sum(p.numel() for p in params.values())), 4)
        return params, sure_masks

    def full_state(self, params: dict, opt, gather: bool = True):
        """(params, optimizer) as trainer.save/load_checkpoint take them: FSDP → full tensors (collective)."""
        if not self.fsdp:
            return params, opt
        from . import fsdp

        return fsdp.full_state(params, opt, gather, keep=self.is_main or not gather)

    def restore(self, params: dict, opt, full: dict, full_opt) -> None:
        """After load_checkpoint into full_state(gather=False): FSDP → shard it back into params / opt."""
        if self.fsdp:
            from . import fsdp

            fsdp.restore(params, opt, full, full_opt)

    def unwrap(self, model):
        """FSDP: a plain model with the all-gathered weights (collective). Else the model itself."""
        if not self.fsdp:
            return model
        from . import fsdp

        return fsdp.unshard_model(model)

    # ----- every step -----
    def sync_grads(self, params: list[torch.nn.Parameter], parts: dict[str, float]) -> None:
        """Average gradients (in float32 buckets) and the logged loss parts over all ranks, in place.
        FSDP: its backward already reduce-scattered (averaged) the gradients; only the loss parts remain."""
        if not self.active:
            return
        grads = []
        for p in (params if not self.fsdp else ()):
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


STRATEGIES = ("ddp", "fsdp")


def _on(var: str) -> bool:
    return os.environ.get(var, "").lower() in ("1", "true", "yes")


def init(device: str = "auto", cfg=None) -> tuple[Dist, str]:
    """Join the process group when launched by torchrun / `accelerate launch` (WORLD_SIZE > 1).

    Returns (Dist, this rank's device): CUDA → cuda:LOCAL_RANK with NCCL, else CPU with gloo. Single process:
    (a world of 1, the device as given). Idempotent (a second call reuses the group). cfg (an UnlearnConfig):
    its `strategy` (ddp | fsdp; `accelerate launch --use_fsdp` also selects fsdp), checked against its options."""
    global _current
    from ..models.load import resolve_device

    strategy = getattr(cfg, "strategy", "ddp") or "ddp"
    if strategy == "deepspeed" or _on("ACCELERATE_USE_DEEPSPEED"):
        raise UnlearnError("DeepSpeed is not supported by amnesiac's trainer (it owns the optimizer and the step, "
                           "which the trainer needs for SURE masks, clipping and checkpoints); use strategy 'fsdp' "
                           "to shard weights, gradients and optimizer states, or 'ddp'")
    if strategy not in STRATEGIES:
        raise UnlearnError(f"unknown strategy {strategy!r}; available: {', '.join(STRATEGIES)}")
    if _on("ACCELERATE_USE_FSDP"):  # accelerate's FSDP plugin options (wrap policy, ...) are not read: see fsdp.py
        strategy = "fsdp"
    if strategy == "fsdp" and cfg is not None:
        from . import fsdp

        fsdp.check(cfg)
    world = launched_world()
    if world <= 1:
        _current = _SINGLE
        return _SINGLE, resolve_device(device)
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
    _current = Dist(rank, world, local, dev, backend, strategy)
    return _current, dev


def _destroy() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
