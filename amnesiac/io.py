"""Atomic writes, hashing and provenance shared by every output amnesiac writes."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temp file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(obj, indent=indent, default=_default, ensure_ascii=False)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps(obj) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    atomic_write_text(path, "".join(dumps(r, indent=None) + "\n" for r in rows))


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def hash_obj(obj: Any, n: int = 16) -> str:
    """Stable short hash of any JSON-able object (configs, data)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_default).encode()).hexdigest()[:n]


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("amnesiac", "torch", "transformers", "tokenizers", "numpy", "peft"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    from .core import threads

    out["torch_threads"] = threads.record()
    return out


def amnesiac_home() -> Path:
    """Cache root: $AMNESIAC_HOME or ~/.cache/amnesiac."""
    return Path(os.environ.get("AMNESIAC_HOME", Path.home() / ".cache" / "amnesiac")).expanduser()


# Files that decide what a model computes (weights, architecture, tokenizer, adapter); logs beside them
# (unlearn.json, wall times) are left out so that re-writing a log does not invalidate a cache.
_MODEL_FILES = ("*.safetensors", "*.gguf", "config.json", "generation_config.json", "tokenizer*.json",
                "tokenizer.model", "special_tokens_map.json", "adapter_config.json", "chat_template.jinja",
                "vocab.json", "merges.txt")
_DIGESTS: dict[tuple[str, int, int], str] = {}


def _digest_index() -> Path:
    return amnesiac_home() / "digests.json"


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file, read once: remembered (in memory and in $AMNESIAC_HOME/digests.json) by
    absolute path, size and mtime, so a rewritten file is hashed again and an unchanged one never is."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    idx_path = _digest_index()
    try:
        idx = json.loads(idx_path.read_text()) if idx_path.exists() else {}
    except (OSError, ValueError):  # a damaged index is only a cache: start a new one
        idx = {}
    rec = idx.get(str(p))
    if rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
        digest = rec["sha256"]
    else:
        digest = sha256_file(p)
        idx[str(p)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        try:
            write_json(idx_path, idx)
        except OSError:  # read-only home: the in-memory memo still applies
            pass
    _DIGESTS[key] = digest
    return digest


def content_key(path: str | os.PathLike, n: int = 16) -> str:
    """What a model *is*, not where it lies: a hash of its weight, config and tokenizer files' contents
    (a `.gguf` or other single file: that file). Two folders with identical files get one key; a model
    re-written at the same path gets a new one."""
    p = Path(path)
    if p.is_file():
        return file_digest(p)[:n]
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such model directory or file")
    files = sorted({f for pat in _MODEL_FILES for f in p.glob(pat) if f.is_file()})
    if not files:
        raise FileNotFoundError(f"{p}: no weight or config files to identify the model by")
    return hash_obj([[f.name, file_digest(f)] for f in files], n)
