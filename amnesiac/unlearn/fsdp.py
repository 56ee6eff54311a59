"""FSDP2 for full-parameter unlearning (`--strategy fsdp`): torch.distributed.fsdp.fully_shard per decoder layer.

Why: under DDP every rank holds the whole model, its gradients and AdamW's two moments (16 B per parameter in
fp32, 8 B in bf16), so a 13B model does not fit one 80 GB GPU. FSDP2 keeps 1/W of each on every rank and
all-gathers one decoder layer at a time for forward and backward.

What stays as under DDP (distributed.py): every rank walks the same micro-batch streams and takes its slice, the
losses are weighted by W·n_r/N, so the reduce-scatter's average is the gradient of the global mean; the logged
loss parts are averaged; rank 0 writes. What changes:
- `shard` (after the reference, SURE saliency and masks are computed on the whole model): rank 0's weights and
  masks are broadcast, then every decoder layer and the root are `fully_shard`ed; parameters become DTensors
  sharded on dim 0 (torch.chunk rows), so the SURE row masks are sliced to the same rows (`local_rows`).
- gradients are reduce-scattered (averaged) by FSDP itself during backward; `clip_grad_norm_` on the DTensors
  gives the global norm.
- every forward is collective, so a rank with an empty slice still runs one (on one example, times 0), and the
  early-stop monitor runs on every rank (rank 0's value is broadcast, so the stop decision is identical).
- checkpoints: `full_state` all-gathers the parameters and AdamW moments into full tensors (every rank takes
  part, rank 0 writes the usual safetensors checkpoint), and `restore` shards a full checkpoint back; so a
  checkpoint is independent of the process count and of the strategy (1 process can resume a 2-process run).
- the final model: `unshard_model` all-gathers every weight into a new, plain (unsharded) model of the same class,
  which is what gets saved (safetensors) and returned; the sharded module passed in is left as it is.

Limit: every rank loads the whole model first (and the reference / SURE saliency are computed unsharded), so
the weights must fit one device; what is sharded is the training state (weights, grads, AdamW moments).

Refused, with the reason (`check`): LoRA (adapters are ~0.5 % of the weights: FSDP would shard almost nothing
worth sharding, and merging needs the full base weights), quantization-aware views (robust.py quantizes whole
weight matrices in place; a rank holds row shards as DTensors), the 8-bit optimizer (bitsandbytes' kernels take
plain tensors, not DTensors). DeepSpeed: distributed.init refuses it.
"""
from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import torch

from .common import UnlearnError, decoder_layers


def check(cfg) -> None:
    """Refuse option combinations FSDP does not support, before anything is loaded."""
    from .config import wants_robust

    if cfg.lora_rank:
        raise UnlearnError("strategy 'fsdp' does not combine with LoRA: adapters are a tiny share of the weights "
                           "(nothing worth sharding) and merging them needs the full base weights; use the default "
                           "strategy 'ddp' for LoRA")
    if cfg.robust_to or cfg.robust_noise or wants_robust(cfg.method):
        raise UnlearnError("strategy 'fsdp' does not combine with quantization-aware training (robust_to / "
                           "robust_noise): its views quantize whole weight matrices in place, and under FSDP each "
                           "process holds only a shard of rows; use strategy 'ddp'")
    if cfg.optimizer != "adamw":
        raise UnlearnError(f"strategy 'fsdp' needs optimizer 'adamw' (got {cfg.optimizer!r}): bitsandbytes' 8-bit "
                           "kernels take plain tensors, not FSDP's sharded DTensors")


def local_rows(full: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """The dim-0 rows of `full` that rank `rank` holds under FSDP2's Shard(0): torch.chunk's split (⌈n/W⌉ rows per
    rank, the last ranks get fewer or none)."""
    chunks = full.chunk(world, dim=0)
    return chunks[rank] if rank < len(chunks) else full[:0]


def _mesh(device: torch.device, world: int):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world,))


def shard(model, params: dict, masks: dict | None, dist) -> tuple[dict, dict | None]:
    """fully_shard every decoder layer and the root; returns (trainable DTensor parameters by name, SURE masks
    sliced to this rank's rows)."""
    from torch.distributed.fsdp import fully_shard

    for p in params.values():  # identical starting weights on every rank (as DDP's prepare does), before slicing
        dist._broadcast(p.data)
    for m in (masks or {}).values():
        dist._broadcast(m)
    names = list(params)
    mesh = _mesh(dist.device, dist.world)
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the rest: embeddings, final norm, LM head
    by_name = dict(model.named_parameters())
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UnlearnError(f"FSDP renamed trainable parameters (e.g. {missing[0]!r}); cannot shard this model")
    sharded = {n: by_name[n] for n in names}
    if masks is None:
        return sharded, None
    local = {}
    for n, m in masks.items():
        lm = local_rows(m, dist.rank, dist.world)
        rows = sharded[n].to_local().shape[0]
        if lm.shape[0] != rows:  # FSDP2 shards dim 0 like torch.chunk; anything else would misalign the mask
            raise UnlearnError(f"SURE mask of {n!r}: {lm.shape[0]} rows for a shard of {rows}; unexpected FSDP layout")
        local[n] = lm
    return sharded, local


def _full(t):
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state(params: dict, opt, gather: bool = True, keep: bool = True):
    """(full parameters by name, an optimizer stand-in whose .state maps them to full AdamW states), what
    trainer.save_checkpoint / load_checkpoint take. gather=False: empty tensors of the full shapes, for loading.
    Gathering is collective (every rank calls it, in the same order); one tensor at a time is all-gathered on the
    device and moved to CPU memory, kept only where `keep` (the writing rank): a full checkpoint never sits on
    a GPU. Elsewhere the result is empty."""
    full, state = {}, defaultdict(dict)
    with torch.no_grad():
        for n, p in params.items():
            if not gather:
                full[n] = torch.empty(p.shape, dtype=p.dtype)  # CPU: restore moves one tensor at a time
                continue
            t = _full(p.detach()).cpu()
            if keep:
                full[n] = t
            for k, v in opt.state.get(p, {}).items():
                v = _full(v).cpu() if torch.is_tensor(v) else v
                if keep:
                    state[t][k] = v
    return full, SimpleNamespace(state=state)


def restore(params: dict, opt, full: dict, full_opt) -> None:
    """Shard a loaded full checkpoint (full_state(gather=False) filled by load_checkpoint) back into the DTensor
    parameters and AdamW states; every rank loaded the same files, rank 0's copy is scattered."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        for n, p in params.items():
            p.copy_(distribute_tensor(full[n].to(p.device), p.device_mesh, p.placements))
            st = {}
            for k, v in full_opt.state.get(full[n], {}).items():
                if k != "step" and torch.is_tensor(v) and not isinstance(v, DTensor) and v.shape == p.shape:
                    v = distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                st[k] = v  # AdamW's `step` stays a plain scalar tensor, as torch keeps it
            if st:
                opt.state[p] = st


def unshard_model(model):
    """A new, plain (unsharded) model of the same class holding the all-gathered weights (every rank)."""
    from torch.distributed.fsdp import FSDPModule

    cls = next(c for c in type(model).__mro__ if issubclass(c, torch.nn.Module) and not issubclass(c, FSDPModule))
    with torch.no_grad():
        sd, seen = {}, {}
        for k, v in model.state_dict().items():  # a tied weight appears under two names: gather it once
            sd[k] = seen[id(v)] if id(v) in seen else seen.setdefault(id(v), _full(v.detach()))
        with torch.device("meta"):
            plain = cls(model.config)
        plain.load_state_dict(sd, assign=True)
        own = dict(model.named_buffers())  # non-persistent buffers (rotary inv_freq) are not in the state dict
        for name, _ in list(plain.named_buffers()):
            mod, _, leaf = name.rpartition(".")
            plain.get_submodule(mod)._buffers[leaf] = own[name]
    if getattr(model.config, "tie_word_embeddings", False):
        plain.tie_weights()
    if getattr(model, "generation_config", None) is not None:
        plain.generation_config = model.generation_config
    still_meta = [n for n, t in list(plain.named_parameters()) + list(plain.named_buffers()) if t.is_meta]
    if still_meta:
        raise UnlearnError(f"after FSDP, {still_meta[0]!r} could not be restored into a plain model")
    return plain.eval()
