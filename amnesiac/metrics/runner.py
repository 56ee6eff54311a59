"""Cached scoring and generation for the evaluator: one forward pass per unique text, resumable on disk.

Per-example results are stored under $AMNESIAC_HOME/cache/<model hash>/<kind>-<config hash>.jsonl, one
line per example keyed by a hash of its text (prompt, continuation). The file is appended chunk by chunk,
so an interrupted run resumes where it stopped; a half-written last line is ignored. Data-set identity is
the set of example keys, so two data sets sharing texts share their cache lines too.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import amnesiac_home, hash_obj


def model_fingerprint(model) -> str | None:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes); None when a tensor type cannot be
    read as bytes (caching is then off for that model rather than risking a wrong hit)."""
    import torch

    h = hashlib.sha256()
    try:
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            t = t.detach()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    except Exception:  # tensor subclasses of some quantization back-ends
        return None
    h.update(type(model).__name__.encode())
    return h.hexdigest()[:20]


def _chunks(xs: list, n: int):
    for i in range(0, len(xs), n):
        yield xs[i: i + n]


class Runner:
    """Scores (prompt, continuation) pairs and generates greedy continuations for one model, with memo + disk cache."""

    def __init__(self, model, tok, batch_size: int = 32, cache: bool = True, progress: bool = False,
                 chunk: int = 256, max_length: int | None = None, model_hash: str | None = None):
        self.model, self.tok, self.batch_size, self.progress = model, tok, batch_size, progress
        self.chunk, self.max_length = chunk, max_length
        self.model_hash = model_hash or model_fingerprint(model)
        self.cache_root = amnesiac_home() / "cache" / self.model_hash if cache and self.model_hash else None
        self._mem: dict[str, dict[str, dict]] = {}  # store name → key → row
        self.stats = {"scored": 0, "generated": 0, "cache_hits": 0}
        from ..core.logprobs import special_prefix

        # v2: the tokenizer's own special tokens (no forced BOS); its identity is part of every key
        self.tok_key = hash_obj([type(tok).__name__, len(tok), special_prefix(tok), tok.eos_token_id], 12)

    # ---- storage ------------------------------------------------------------------------------
    def _store(self, kind: str, cfg: dict) -> tuple[str, Path | None]:
        name = f"{kind}-{hash_obj(cfg, 12)}"
        if name not in self._mem:
            rows: dict[str, dict] = {}
            path = self.cache_root / f"{name}.jsonl" if self.cache_root else None
            if path is not None and path.exists():
                for line in path.read_text(encoding="utf-8").splitlines():
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a crash: recompute that example
                        continue
                    rows[r["k"]] = r
            self._mem[name] = rows
        return name, (self.cache_root / f"{name}.jsonl" if self.cache_root else None)

    def _append(self, path: Path | None, rows: list[dict]) -> None:
        if path is None or not rows:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
            f.flush()

    def _todo(self, name: str, keys: list[str]) -> list[int]:
        seen, todo = set(), []
        for i, k in enumerate(keys):
            if k not in self._mem[name] and k not in seen:
                seen.add(k)
                todo.append(i)
        self.stats["cache_hits"] += len(keys) - len(todo)
        return todo

    def _bar(self, n: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=n, desc=desc, leave=False, disable=not self.progress)

    # ---- scoring ------------------------------------------------------------------------------
    def score(self, prompts: Sequence[str], conts: Sequence[str], with_stats: bool = False,
              with_argmax: bool = False, desc: str = "scoring") -> list[dict]:
        """Per pair {"lp", "ids", ["mu", "sd"], ["am"]} as numpy arrays / lists, input order."""
        from ..core.logprobs import score_pairs

        cfg = {"kind": "score", "stats": with_stats, "argmax": with_argmax, "max_length": self.max_length, "v": 2,
               "tok": self.tok_key}
        name, path = self._store("score", cfg)
        keys = [hash_obj([p, c], 24) for p, c in zip(prompts, conts)]
        todo = self._todo(name, keys)
        with self._bar(len(todo), desc) as bar:
            for part in _chunks(todo, self.chunk):
                sb = score_pairs(self.model, self.tok, [prompts[i] for i in part], [conts[i] for i in part],
                                 self.batch_size, with_stats, with_argmax, self.max_length)
                rows = []
                for j, i in enumerate(part):
                    r = {"k": keys[i], "lp": sb.token_logprobs[j].tolist(), "ids": list(sb.token_ids[j])}
                    if with_stats:
                        r["mu"], r["sd"] = sb.mu[j].tolist(), sb.sigma[j].tolist()
                    if with_argmax:
                        r["am"] = list(sb.argmax_ids[j])
                    rows.append(r)
                    self._mem[name][keys[i]] = r
                self._append(path, rows)
                self.stats["scored"] += len(part)
                bar.update(len(part))
        out = []
        for k in keys:
            r = self._mem[name][k]
            d = {"lp": np.asarray(r["lp"], dtype=np.float64), "ids": r["ids"]}
            if with_stats:
                d["mu"], d["sd"] = np.asarray(r["mu"], dtype=np.float64), np.asarray(r["sd"], dtype=np.float64)
            if with_argmax:
                d["am"] = r["am"]
            out.append(d)
        return out

    # ---- generation ---------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop_strings: Sequence[str] = (),
                 desc: str = "generating") -> list[str]:
        """Greedy continuations (core.generate_greedy: batched, length-bucketed, KV cache), input order."""
        from ..core.generate import generate_greedy

        cfg = {"kind": "gen", "max_new": max_new_tokens, "stops": list(stop_strings), "v": 2, "tok": self.tok_key}
        name, path = self._store("gen", cfg)
        keys = [hash_obj(p, 24) for p in prompts]
        todo = self._todo(name, keys)
        with self._bar(len(todo), desc) as bar:
            for part in _chunks(todo, self.chunk):
                outs = generate_greedy(self.model, self.tok, [prompts[i] for i in part], max_new_tokens,
                                       stop_strings=stop_strings, batch_size=self.batch_size)
                rows = [{"k": keys[i], "out": o} for i, o in zip(part, outs)]
                for r in rows:
                    self._mem[name][r["k"]] = r
                self._append(path, rows)
                self.stats["generated"] += len(part)
                bar.update(len(part))
        return [self._mem[name][k]["out"] for k in keys]
