"""Models: loading any local causal LM, and the tiny benchmark models."""
from .load import ModelLoadError, load_model, load_tokenizer, save_model
from .resolve import ModelRef, load_adapter, model_content_key, resolve_model, weights_dir

__all__ = ["ModelLoadError", "ModelRef", "load_adapter", "load_model", "load_tokenizer", "model_content_key",
           "resolve_model", "save_model", "weights_dir"]
