"""LoRA adapters via peft (imported lazily: peft is heavy), merged back into a plain HF model on save."""
from __future__ import annotations


def wrap(model, rank: int, alpha: float | None = None, dropout: float = 0.0, targets: str = "all-linear"):
    """Return a peft model whose only trainable parameters are rank-r adapters on `targets`
    ("all-linear" = every Linear except the LM head; or a comma list like "q_proj,v_proj").
    lora_alpha defaults to 2r (scale α/r = 2, a common choice)."""
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise ValueError(f"lora_rank must be ≥ 1, got {rank}")
    tm = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    cfg = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, lora_dropout=dropout,
                     target_modules=tm, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def merge(model):
    """Fold the adapters into the base weights; returns the plain transformers model."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
