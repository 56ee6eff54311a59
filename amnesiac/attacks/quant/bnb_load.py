"""bitsandbytes as users load it: the model's saved folder through transformers,
`AutoModelForCausalLM.from_pretrained(dir, quantization_config=BitsAndBytesConfig(...))` (docs/science.md §3).

This is the deployment the seed paper's code and most users run (`load_in_4bit=True`, whose default type
is FP4), with bitsandbytes' real Linear4bit / Linear8bitLt modules and kernels. It starts from the folder,
not from the model in memory, so deploy() checks that the folder holds exactly the weights of the model it
was given (an in-memory model, a merged adapter or a model changed after loading has no such folder).

Settings (spec.LOADED): kind fp4 | nf4 (blocks of 64, bitsandbytes' default), double_quant = the blocks'
absmax stored in 8 bits (`bnb_4bit_use_double_quant`), int8 = `load_in_8bit` with transformers' default
outlier threshold 6.0 (activation columns above it are multiplied in 16-bit). Compute dtype and load dtype
are the given model's dtype (float32 on CPU by default); the device is the model's.

The same weights are simulated per weight by bnb_backend (`bnb_fp4`, `bnb_nf4_dq`, …); how far the two
deployments differ is measured in tests/test_bnb_load.py and benchmarks/bnb_load.py.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import UserError

KINDS = ("fp4", "nf4", "int8")


def bnb_config(kind: str, double_quant: bool = False, compute_dtype=None):
    """The BitsAndBytesConfig a user writes for this setting."""
    from transformers import BitsAndBytesConfig

    if kind not in KINDS:
        raise UserError(f"unknown bitsandbytes kind {kind!r}; available: {', '.join(KINDS)}")
    if kind == "int8":
        if double_quant:
            raise UserError("double quantization applies to bitsandbytes 4-bit (fp4/nf4), not load_in_8bit")
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind, bnb_4bit_use_double_quant=bool(double_quant),
                              bnb_4bit_compute_dtype=compute_dtype)


def saved_folder(model, path: str | Path | None = None) -> Path:
    """The folder `model` was loaded from (transformers records it as `name_or_path`), or `path`; a clear
    error when there is none or it is not a safetensors model folder."""
    from ...models.load import ModelLoadError, check_model_dir

    src = path if path is not None else getattr(model, "name_or_path", "") or ""
    hint = ("save it first (model.save_pretrained(DIR)) and load it from there, or use the simulated bnb_fp4 / "
            "bnb_nf4 (the same weights, computed per weight in memory)")
    if not str(src) or not Path(str(src)).expanduser().is_dir():
        raise UserError(f"bitsandbytes loading reads the model's saved folder, and this model has none "
                        f"(name_or_path={str(src)!r}: an in-memory model, a hub id or a .gguf file)", hint)
    try:
        return check_model_dir(Path(str(src)).expanduser())
    except ModelLoadError as e:
        raise UserError(f"bitsandbytes loading reads the model's saved folder: {e}", hint) from None


def check_same_weights(model, folder: Path) -> int:
    """Raise unless every tensor in `folder`'s safetensors equals the model's tensor of that name (cast to
    the model's dtype). Streams one tensor at a time. Returns the number of tensors compared."""
    import torch
    from safetensors import safe_open

    state = model.state_dict()
    n = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():
                if key not in state:
                    continue
                mine = state[key]
                saved = sf.get_tensor(key).to(device=mine.device, dtype=mine.dtype)
                if saved.shape != mine.shape or not torch.equal(saved, mine):
                    raise UserError(f"the model in memory differs from its saved folder {folder} (tensor {key}): "
                                    "bitsandbytes loading would quantize the folder's weights, not these",
                                    "save the model you mean to deploy (model.save_pretrained(DIR)) and load it from DIR")
                n += 1
    if n == 0:
        raise UserError(f"{folder}: no tensor of its safetensors files has a name of the model in memory",
                        "give the folder this model was saved to")
    return n


def load_bnb(model, kind: str = "fp4", double_quant: bool = False, path: str | Path | None = None):
    """(bnb-quantized model loaded from `model`'s saved folder, info). `model` itself is not modified."""
    from transformers import AutoModelForCausalLM

    from .backends import require

    require("bnb")
    folder = saved_folder(model, path)
    n_checked = check_same_weights(model, folder)
    p = next(model.parameters())
    cfg = bnb_config(kind, double_quant, compute_dtype=p.dtype)
    m = AutoModelForCausalLM.from_pretrained(str(folder), quantization_config=cfg, dtype=p.dtype,
                                             device_map={"": str(p.device)}, use_safetensors=True,
                                             trust_remote_code=False)
    m.eval()
    import bitsandbytes as bnb

    mods = [n for n, x in m.named_modules() if isinstance(x, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]
    if not mods:  # transformers skipped every layer: this would silently be full precision
        raise UserError(f"{folder}: transformers loaded no bitsandbytes layer (architecture not supported?)")
    from importlib.metadata import version

    return m, {"folder": str(folder), "tensors_checked": n_checked, "n_modules": len(mods),
               "bnb_config": {k: str(v) for k, v in cfg.to_dict().items()}, "mode": "loaded",
               "versions": {"bitsandbytes": version("bitsandbytes"), "transformers": version("transformers")}}
