"""Models: loading any local causal LM, and the tiny benchmark models."""
from .load import ModelLoadError, load_model, load_tokenizer, save_model

__all__ = ["ModelLoadError", "load_model", "load_tokenizer", "save_model"]
