"""Quantization attacks: exact RTN, real backends (optional extras), GPTQ and AWQ (calibrated), and applying
any of them to a model by name (deploy)."""
from .apply import quantize_model, released_quantized, select_weights
from .backends import BACKENDS, BackendMissing, available, get_quantizer
from .deploy import deploy, deployed
from .rtn import RTN, QTensor, group_view, parse_rtn

__all__ = ["BACKENDS", "BackendMissing", "QTensor", "RTN", "available", "deploy", "deployed", "get_quantizer", "group_view", "parse_rtn",
           "quantize_model", "released_quantized", "select_weights"]
