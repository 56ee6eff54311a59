"""Undo an in-place attack exactly, without holding a second copy of the model.

An attack that changes weights (quantization, GPTQ / AWQ, relearning) can work on the model itself when
every original tensor can be read back one at a time. `Originals` says where from: the safetensors the
model was loaded from (each tensor checked bit-equal to the loaded one when `Originals` is built, then
read through a short-lived memory map, one tensor per open), or, for a tensor with no equal copy on disk
(an in-memory model, an adapter merged into its base, a dequantized .gguf, a dtype cast that does not
round-trip), a spill file written once, one tensor at a time. Peak memory of an attack is then one model +
one tensor instead of two models, and `restore` writes back the very bits that were loaded.

`restoring(model, originals)` wraps an in-place attack: whatever happens inside (a normal exit, an
exception halfway through quantizing), every tensor and each parameter's requires_grad and the train/eval
mode are put back on exit.
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch


def model_tensors(model) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers by state-dict name, each storage once (tied weights share one)."""
    out, seen = {}, set()
    for name, t in model.state_dict(keep_vars=True).items():
        if t.device.type == "meta":
            raise ValueError(f"{name} is not materialised (offloaded to disk?): an in-place attack needs every "
                             "weight in memory; use a device map without disk offload")
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        out[name] = t
    return out


def _file_keys(folder: Path) -> dict[str, Path]:
    from safetensors import safe_open

    keys: dict[str, Path] = {}
    for f in sorted(folder.glob("*.safetensors")):
        if f.name.startswith("adapter_"):
            continue
        with safe_open(str(f), framework="pt") as h:
            keys.update({k: f for k in h.keys()})
    return keys


def _read(file: Path, key: str) -> torch.Tensor:
    """One tensor, through a memory map opened and closed for it alone (no resident copy of the file)."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as h:
        return h.get_tensor(key)


class Originals:
    """Where each of a model's original tensors can be read back from: {name: (file, key)}."""

    def __init__(self, model, source: str | Path | None = None, spill_dir: str | Path | None = None):
        self.where: dict[str, tuple[Path, str]] = {}
        self._spill: Path | None = None
        self._spill_dir = spill_dir
        self.spilled = 0  # tensors with no equal copy on disk, written to the spill folder
        on_disk = _file_keys(Path(source)) if source is not None and Path(source).is_dir() else {}
        for name, t in model_tensors(model).items():
            if name in on_disk and self._equal(on_disk[name], name, t):
                self.where[name] = (on_disk[name], name)
            else:
                self._save(name, t)

    @staticmethod
    def _equal(file: Path, key: str, t: torch.Tensor) -> bool:
        o = _read(file, key)
        return o.shape == t.shape and torch.equal(o.to(t.dtype).to(t.device), t.detach())

    def _save(self, name: str, t: torch.Tensor) -> None:
        from safetensors.torch import save_file

        if self._spill is None:
            if self._spill_dir is not None:
                Path(self._spill_dir).mkdir(parents=True, exist_ok=True)
            self._spill = Path(tempfile.mkdtemp(prefix="amnesiac-originals-", dir=self._spill_dir))
        f = self._spill / f"{len(self.where)}.safetensors"
        save_file({"t": t.detach().to("cpu").contiguous()}, str(f))
        self.where[name] = (f, "t")
        self.spilled += 1

    def get(self, name: str) -> torch.Tensor:
        """The original tensor `name` (on CPU, in the dtype it is stored in)."""
        return _read(*self.where[name])

    @torch.no_grad()
    def restore(self, model) -> int:
        """Copy every original tensor back into `model`; returns how many were rewritten."""
        now = model_tensors(model)
        if set(now) != set(self.where):
            raise RuntimeError(f"the model's tensors changed names ({sorted(set(now) ^ set(self.where))[:3]}…): "
                               "cannot restore it")
        for name, t in now.items():
            t.copy_(self.get(name).to(t.dtype))
        return len(now)

    def close(self) -> None:
        if self._spill is not None:
            shutil.rmtree(self._spill, ignore_errors=True)
            self._spill = None

    def __enter__(self) -> Originals:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()


@contextmanager
def restoring(model, originals: Originals | None = None) -> Iterator[Originals]:
    """Run an in-place attack on `model` inside this block; on exit (also on error) the model is as before.
    Without `originals`, one is built here (and its spill file removed afterwards)."""
    own = originals is None
    orig = Originals(model) if own else originals
    training = model.training
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        yield orig
    finally:
        try:
            for p in model.parameters():
                p.grad = None
            orig.restore(model)
            for n, p in model.named_parameters():
                p.requires_grad_(grads.get(n, p.requires_grad))
            model.train(training)
        finally:
            if own:
                orig.close()
