"""Models: loading any local causal LM, and the tiny benchmark models."""
from .load import ModelLoadError, load_model, load_tokenizer, save_model
from .resolve import ModelRef, load_adapter, resolve_model

__all__ = ["ModelLoadError", "ModelRef", "load_adapter", "load_model", "load_tokenizer", "resolve_model", "save_model"]
