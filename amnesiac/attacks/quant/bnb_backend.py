"""bitsandbytes backend: what most users deploy (docs/science.md §3). kind = "nf4" | "fp4" (4-bit,
absmax blocks of `group`, default 64 as in the paper's released code) or "int8" (LLM.int8 row-wise
absmax, threshold 0 = no outlier decomposition). double_quant: the 4-bit blocks' absmax are themselves
quantized to 8 bits (blocks of 256), as `bnb_4bit_use_double_quant=True` stores them. bitsandbytes ≥ 0.45 runs these on CPU (8-bit
matmul casts activations to fp16)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BnbQuantizer:
    kind: str = "nf4"
    group: int = 64
    double_quant: bool = False

    @property
    def bits(self) -> int:
        return 8 if self.kind == "int8" else 4

    @property
    def name(self) -> str:
        return f"bnb_{self.kind}" + (f"_b{self.group}" if self.kind != "int8" else "") + ("_dq" if self.double_quant else "")

    def config(self) -> dict:
        return {"backend": "bnb", "kind": self.kind, "bits": self.bits, "blocksize": self.group if self.bits == 4 else None,
                "double_quant": self.double_quant}

    @torch.no_grad()
    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        import bitsandbytes.functional as F

        wf = w.detach().float()
        if self.kind == "int8":
            q, stats, _ = F.int8_vectorwise_quant(wf.half())
            out = F.int8_vectorwise_dequant(q, stats)
        else:
            # bnb flattens the tensor into blocks of `group` consecutive elements (row-major), so a
            # block never straddles two rows when the row width is a multiple of the block size
            q, st = F.quantize_4bit(wf, blocksize=self.group, quant_type=self.kind, compress_statistics=self.double_quant)
            out = F.dequantize_4bit(q, st)
        return out.reshape(w.shape).to(device=w.device, dtype=w.dtype)

    def native(self, model):
        """Every Linear but the LM head → bnb Linear4bit / Linear8bitLt, in place."""
        import bitsandbytes as bnb

        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        for mod in list(model.modules()):
            for cname, child in list(mod.named_children()):
                if not isinstance(child, torch.nn.Linear) or child is head:
                    continue
                w = child.weight.detach().float().cpu()
                if self.kind == "int8":
                    new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                              has_fp16_weights=False, threshold=0.0)
                    new.weight = bnb.nn.Int8Params(w.half(), requires_grad=False, has_fp16_weights=False)
                else:
                    new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                            compute_dtype=torch.float32, quant_type=self.kind)
                    new.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type=self.kind, blocksize=self.group,
                                                   compress_statistics=self.double_quant)
                if child.bias is not None:
                    new.bias = torch.nn.Parameter(child.bias.detach().float().clone(), requires_grad=False)
                setattr(mod, cname, new.to(child.weight.device))
        return model


def make(bits: int = 4, group: int | None = 64, kind: str | None = None, double_quant: bool = False, **_):
    if bits not in (4, 8):
        raise ValueError(f"bitsandbytes quantizes weights to 4 bits (nf4/fp4) or 8 bits (int8), not {bits}")
    kind = kind or ("int8" if bits == 8 else "nf4")
    if kind not in ("nf4", "fp4", "int8"):
        raise ValueError(f"bnb kind must be nf4, fp4 or int8, not {kind!r}")
    if (kind == "int8") != (bits == 8):
        raise ValueError(f"bnb {kind} is {'8' if kind == 'int8' else '4'}-bit; got bits={bits}")
    if kind != "int8" and (group or 64) not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
        raise ValueError(f"bnb 4-bit blocksize must be a power of two in 32–4096, got {group}")
    if double_quant and kind == "int8":
        raise ValueError("double quantization applies to bnb 4-bit (nf4/fp4) block scales, not int8")
    return BnbQuantizer(kind, group or 64, bool(double_quant))
