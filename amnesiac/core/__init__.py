"""The shared numeric core: log-probs of continuations and batched greedy generation.

Every metric, loss and attack calls these; nothing else re-implements them.
"""
from .generate import generate_greedy
from .logprobs import (ScoredBatch, encode_pairs, score_pairs, score_texts, token_logprobs)

__all__ = ["ScoredBatch", "encode_pairs", "generate_greedy", "score_pairs", "score_texts", "token_logprobs"]
