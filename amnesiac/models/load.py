"""Loading any local causal LM: a folder with config + safetensors + tokenizer (or a GGUF file).

Safety rules: `trust_remote_code` stays off unless asked for; pickle checkpoints (`.bin`, `.pt`)
are refused, because unpickling runs arbitrary code.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError


class ModelLoadError(UserError, RuntimeError):  # amnesiac.errors family; RuntimeError kept for old callers
    pass


def resolve_device(device: str | None = "auto") -> str:
    """auto → cuda if available, else cpu; a malformed name is a one-line error (ModelLoadError)."""
    import re

    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"(cpu|cuda|mps|xpu|meta)(:\d+)?", str(device)):
        raise ModelLoadError(f"unknown device {device!r}", "use auto, cpu, cuda or cuda:N")
    return device


def check_device(device: str | None = "auto") -> str:
    """resolve_device, and a CUDA device that is not there is refused now rather than by torch after the
    model has loaded."""
    import torch

    dev = resolve_device(device)
    if dev.startswith("cuda"):
        n = torch.cuda.device_count()
        idx = int(dev.split(":")[1]) if ":" in dev else 0
        if n == 0:
            raise ModelLoadError(f"device {device!r}: CUDA is not available here", "use --device cpu (or auto)")
        if idx >= n:
            raise ModelLoadError(f"device {device!r}: only {n} CUDA device(s)", f"use cuda:0 … cuda:{n - 1}")
    return dev


def resolve_dtype(dtype: str | None):
    import torch

    table = {None: torch.float32, "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}", "available: float32, bfloat16, float16")
    return table[dtype]


def check_model_dir(path: str | Path) -> Path:
    from .resolve import needs_resolving, resolve_model

    if needs_resolving(path):  # a cached hub id or a PEFT adapter folder (models/resolve.py)
        return resolve_model(path, trust_remote_code=None).path
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"{p}: no such model directory or file")
    if p.is_file():
        if p.suffix == ".gguf":
            return p
        raise ModelLoadError(f"{p}: expected a model directory (config.json + *.safetensors) or a .gguf file")
    if not (p / "config.json").exists():
        raise ModelLoadError(f"{p}: no config.json, not a Hugging Face model directory")
    has_st = any(p.glob("*.safetensors"))
    if not has_st:
        pickles = [f.name for f in p.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        if pickles:
            raise ModelLoadError(
                f"{p}: only pickle checkpoints ({', '.join(pickles)}); amnesiac refuses them because unpickling "
                "can run arbitrary code. Convert once in a trusted environment: "
                "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out, safe_serialization=True)")
        raise ModelLoadError(f"{p}: no *.safetensors weights found")
    return p


_CTX_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def model_context(model) -> int | None:
    """The model's context length in tokens, from its config.json (read without loading weights) or its
    config object; None when it does not say (or for a .gguf file)."""
    import json

    if isinstance(model, (str, Path)):
        p = Path(model)
        if not p.is_dir() or not (p / "config.json").is_file():
            return None
        try:
            cfg = json.loads((p / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{p}/config.json: not valid JSON ({e})", "repair or re-save the model") from None
    else:
        c = getattr(model, "config", None)
        cfg = c.to_dict() if hasattr(c, "to_dict") else {}
    for k in _CTX_KEYS:
        v = cfg.get(k) if isinstance(cfg, dict) else None
        if isinstance(v, int) and v > 0:
            return v
    return None


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    from .resolve import needs_resolving, resolve_model

    if needs_resolving(path):  # a cached hub id or a PEFT adapter folder (models/resolve.py)
        path = resolve_model(path, trust_remote_code=None).tokenizer_path
    p = Path(path)
    if p.suffix == ".gguf":
        tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
        if not getattr(tok, "chat_template", None):  # transformers drops the GGUF's own template; llama.cpp uses it
            tok.chat_template = _gguf_chat_template(p)
    else:
        tok = AutoTokenizer.from_pretrained(str(p), trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _gguf_chat_template(p: Path) -> str | None:
    """The `tokenizer.chat_template` string a GGUF file carries (None when it has none)."""
    from gguf import GGUFReader

    field = GGUFReader(str(p)).fields.get("tokenizer.chat_template")
    return bytes(field.parts[field.data[0]]).decode("utf-8") if field is not None else None


def load_model(path: str | Path, device: str | None = "auto", dtype: str | None = "float32",
               trust_remote_code: bool = False, device_map: str | None = None):
    """(model, tokenizer) in eval mode. `device_map="auto"` spreads a large model over GPUs (accelerate)."""
    from transformers import AutoModelForCausalLM

    from .resolve import load_adapter, resolve_model

    ref = resolve_model(path, trust_remote_code)  # folder, .gguf, cached hub id or adapter (models/resolve.py)
    if ref.kind == "adapter":  # merged into its base: a plain model for measuring and quantizing
        return load_adapter(ref, True, device, dtype, trust_remote_code, device_map)
    p = check_model_dir(ref.path)
    kw = dict(dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code)
    if device_map:
        kw["device_map"] = device_map
    try:
        if p.suffix == ".gguf":
            # dequantize=True: a plain dense model (trainable, saveable). Without it transformers ≥ 5.2x
            # keeps the blocks packed (GgufLinear, not trainable) wherever a `kernels` GGUF matmul exists.
            from transformers.utils.quantization_config import GgufConfig

            model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name,
                                                         quantization_config=GgufConfig(dequantize=True), **kw)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(p), use_safetensors=True, **kw)
    except ImportError as e:
        if p.suffix == ".gguf" and "gguf" in str(e).lower():
            raise ModelLoadError(f"{p}: reading GGUF files needs the `gguf` package: pip install gguf") from e
        raise
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{p}: could not load model ({e})") from e
    if not device_map:
        model.to(check_device(device))
    model.eval()
    from ..core import threads

    threads.configure(model)
    return model, load_tokenizer(p, trust_remote_code)


def save_model(model, tokenizer, out: str | Path) -> Path:
    """safetensors + tokenizer into `out` (written to a temp folder first, then renamed)."""
    import os
    import shutil

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
    return out
