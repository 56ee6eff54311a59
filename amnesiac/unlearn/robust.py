"""Quantization-aware unlearning (docs/science.md §2b): train *through* the deployment quantizer.

Each micro-batch's forward and backward run on Q(θ) and the gradient is applied to the latent
full-precision θ: the straight-through estimator ∂Q(θ)/∂θ ≈ I. It is implemented by a weight swap
(BinaryConnect-style) rather than a re-parametrisation: the selected weights are overwritten in place
with Q(θ), the losses are computed and back-propagated, and θ is restored before the optimizer step.
So the quantized forward is *bit for bit* the attack's output (the same quantizer object, the same
`quantize_model` weight selection), any model code path works unchanged (attention kernels, hooks,
gradient checkpointing), and parameter names, checkpoints and resume are untouched.

Several formats: one forward/backward per format per micro-batch, losses summed (§2b). `noise` adds a
view with θ + u·Δ, u ~ U(−σ/2, σ/2) per weight, Δ the 4-bit symmetric g64 step of θ's group: random
sub-step perturbations for quantizers not named in advance (noise-injection QAT).

With LoRA the trained tensors are adapters: the effective weight W₀ + s·BA is quantized, and the base
weight is set to Q(W₀ + s·BA) − s·BA for the forward (equal to Q up to one float rounding).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

NOISE_GROUP, NOISE_BITS = 64, 4


@dataclass
class _Target:
    name: str
    weight: torch.Tensor  # the parameter, or a (out, in) view of it
    delta: Callable[[], torch.Tensor] | None = None  # LoRA: current s·BA, same shape as weight


def targets(model, **select) -> list[_Target]:
    """The weights a deployment quantizes (attacks.quant.apply.select_weights: Linear layers, LM head and
    embeddings in full precision by default), seen through LoRA wrappers when present."""
    from ..attacks.quant.apply import select_weights

    lora_layers = {}
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a core dependency
        LoraLayer = ()
    for name, mod in model.named_modules():
        if LoraLayer and isinstance(mod, LoraLayer):
            lora_layers[f"{name}.base_layer.weight"] = mod
    out = []
    for name, w in select_weights(model, **select):
        if ".lora_" in name:  # adapter matrices are not deployed weights
            continue
        mod = lora_layers.get(name)
        if mod is not None:
            adapters = [a for a in mod.active_adapters if a in mod.lora_A]
            delta = (lambda m=mod, ads=adapters: sum(m.get_delta_weight(a) for a in ads)) if adapters else None
            out.append(_Target(name.replace(".base_layer", ""), w, delta))
        else:
            out.append(_Target(name, w))
    if not out:
        raise ValueError("no weights matched the quantization selection; nothing to make robust")
    return out


def _noise_step(w: torch.Tensor) -> torch.Tensor:
    """Δ of the 4-bit symmetric RTN grid with groups of 64 inputs, broadcast to w's (R, C) shape."""
    R, C = w.shape
    g = NOISE_GROUP if C % NOISE_GROUP == 0 else C
    amax = w.detach().float().reshape(R, C // g, g).abs().amax(-1, keepdim=True)
    return (amax / (2 ** (NOISE_BITS - 1) - 1)).expand(R, C // g, g).reshape(R, C)


@dataclass
class Robust:
    """The views a training step is computed on: one per quantizer name, plus a noise view if asked for."""

    names: list[str]
    noise: float = 0.0
    seed: int = 0
    quantizers: dict = field(default_factory=dict)
    _targets: list[_Target] | None = None

    @classmethod
    def build(cls, names, noise: float = 0.0, seed: int = 0) -> "Robust | None":
        from ..attacks.quant.spec import is_calibrated, parse_names, quantizer_from_name

        names = parse_names(names)
        cal = [n for n in names if is_calibrated(n)]
        if cal:  # GPTQ/AWQ re-solve a calibrated problem per layer: no per-step weight swap exists for them yet
            raise ValueError(f"--robust-to {','.join(cal)}: calibrated quantizers (GPTQ, AWQ) are not supported for "
                             "quantization-aware unlearning yet; use a per-weight format of the same width and groups "
                             "(e.g. rtn4_asym_g128: the grid GPTQ asym rounds onto)")
        mixed = [n for n in names if hasattr(quantizer_from_name(n), "bind")]
        if mixed:  # Q4_K_M & co. pick a format per tensor from the model's names and layers
            raise ValueError(f"--robust-to {','.join(mixed)}: a llama.cpp file type mixes formats per tensor, which the "
                             "weight swap does not support yet; name the formats it uses instead (e.g. q4_k,q6_k, or "
                             "q5_0,q8_0 where rows are not multiples of 256)")
        if noise < 0 or noise > 1:
            raise ValueError(f"robust_noise is a fraction of a 4-bit step in [0, 1], got {noise}")
        if not names and not noise:
            return None
        return cls(names, float(noise), seed, {n: quantizer_from_name(n) for n in names})

    def bind(self, model) -> None:
        self._targets = targets(model)

    @property
    def n_views(self) -> int:
        return len(self.names) + (1 if self.noise else 0)

    def views(self, micro_step: int) -> list[Callable[[], contextlib.AbstractContextManager]]:
        vs = [lambda n=n: self.quantized(n) for n in self.names]
        if self.noise:
            vs.append(lambda: self.noisy(micro_step))
        return vs

    @contextlib.contextmanager
    def _swap(self, make: Callable[[_Target, torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Overwrite each target weight with make(target, effective θ) (minus the LoRA delta), restore after."""
        if self._targets is None:
            raise RuntimeError("Robust.bind(model) must be called before training")
        saved = []
        try:
            with torch.no_grad():
                for t in self._targets:
                    latent = t.weight.detach().clone()
                    saved.append((t, latent))
                    d = t.delta() if t.delta is not None else None
                    eff = latent if d is None else latent + d.to(latent.dtype)
                    new = make(t, eff).to(latent.dtype)
                    t.weight.copy_(new if d is None else new - d.to(latent.dtype))
            yield
        finally:
            with torch.no_grad():
                for t, latent in saved:
                    t.weight.copy_(latent)

    def quantized(self, name: str):
        """Forward on Q(θ) with the attack's quantizer `name`; gradients land on θ (straight through)."""
        q = self.quantizers[name]
        return self._swap(lambda t, w: q(w))

    def noisy(self, micro_step: int):
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + micro_step) & 0x7FFFFFFF)

        def make(t, w):
            u = (torch.rand(w.shape, generator=g, dtype=torch.float32) - 0.5) * self.noise
            return w + (u.to(w.device) * _noise_step(w)).to(w.dtype)
        return self._swap(make)

    def wrap_monitor(self, monitor: Callable[[], float] | None) -> Callable[[], float] | None:
        """Early stopping looks at the quantized models: the worst (highest) forget recall over the formats."""
        if monitor is None or not self.names:
            return monitor

        def quantized_monitor() -> float:
            vals = []
            for n in self.names:
                with self.quantized(n):
                    vals.append(monitor())
            return max(vals)
        return quantized_monitor

    def describe(self) -> dict:
        return {"robust_to": list(self.names), "robust_noise": self.noise, "n_views": self.n_views,
                "n_tensors": len(self._targets or []),
                "estimator": "straight-through (weight swap; forward on Q(θ), gradient applied to θ)"}


def save_quantized(model, tok, out, names: list[str], log=None) -> dict:
    """For each format: OUT/quantized-<name>/ (an HF dir holding Q(θ) dequantized, loadable with
    from_pretrained) and, for GGUF formats, OUT/quantized-<name>/model-<name>.gguf (llama.cpp's file)."""
    from pathlib import Path

    from ..attacks.quant.apply import quantize_model
    from ..attacks.quant.spec import quantizer_config, quantizer_from_name
    from ..models.load import save_model

    written = {}
    for n in names:
        qm, _ = quantize_model(model, quantizer_from_name(n))
        d = Path(out) / f"quantized-{n}"
        save_model(qm, tok, d)
        entry = {"dir": str(d)}
        cfg = quantizer_config(n)
        if cfg["backend"] == "gguf":
            from ..attacks.quant.gguf_io import write_gguf

            try:
                entry["gguf"] = str(write_gguf(model, tok, d / f"model-{n}.gguf", ftype=cfg["kind"]))
            except (ValueError, NotImplementedError) as e:  # an architecture gguf_io cannot write: say so, keep the HF dir
                entry["gguf_error"] = str(e)
                import warnings

                warnings.warn(f"quantized model saved as an HF dir, but no .gguf was written for {n}: {e}")
                if log:
                    log(f"no .gguf written for {n}: {e}")
        written[n] = entry
        del qm
    return written
