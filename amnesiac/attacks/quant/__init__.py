"""Quantization attacks: exact RTN, real backends (optional extras), and applying either to a model."""
from .apply import quantize_model, released_quantized, select_weights
from .backends import BACKENDS, BackendMissing, available, get_quantizer
from .rtn import RTN, QTensor, group_view, parse_rtn

__all__ = ["BACKENDS", "BackendMissing", "QTensor", "RTN", "available", "get_quantizer", "group_view", "parse_rtn",
           "quantize_model", "released_quantized", "select_weights"]
