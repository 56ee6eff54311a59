"""Data: the embedded bios benchmark, TOFU, and generic JSONL loaders (one schema for all)."""
from .schema import (QA_TEMPLATE, DataError, QAItem, VerbItem, load_qa_jsonl, load_text_jsonl,
                     load_verbmem_jsonl, qa_answer, qa_prompt, read_jsonl)
from .sources import build_bios, load_dataset
from . import facts  # noqa: E402,F401  (registers the `facts:` data source)

__all__ = ["QA_TEMPLATE", "DataError", "QAItem", "VerbItem", "build_bios", "load_dataset", "load_qa_jsonl",
           "load_text_jsonl", "load_verbmem_jsonl", "qa_answer", "qa_prompt", "read_jsonl"]
