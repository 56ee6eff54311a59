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


# ----- ownership of outputs: amnesiac replaces only what it created -----

OUTPUT_MARKER = ".amnesiac-output.json"  # in every output folder amnesiac creates: kind, run id, created time


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of an amnesiac output folder, or None (not ours, or no folder)."""
    m = Path(folder) / OUTPUT_MARKER
    try:
        d = json.loads(m.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and "kind" in d else None


def claim_output(out: str | os.PathLike, inputs: Iterable[Any] = (), *, overwrite: bool = False, kind: str,
                 resume: bool = False, inplace: bool = False, lock: bool = True, option: str = "--out") -> "OutputClaim":
    """Claim `out` for one run that writes it. Checks now (no side effects), writes late, replaces atomically.

    Rules: `out` equal to, inside, or containing any of `inputs` (paths; other specs such as
    "bios:forget10" are ignored) is refused; an existing non-empty folder without amnesiac's marker
    (`.amnesiac-output.json`) is refused and never deleted; a folder amnesiac wrote is replaced only with
    `overwrite=True` and only if it holds the same `kind`; the nearest existing parent must be writable.
    A `.json` path is a file output: refused if it exists unless `overwrite`. All refusals raise
    amnesiac.errors.OutputError (a UserError: exit 2) with a one-line message.

    Usage (everything validated and loaded inside the block, the output written last):

        with claim_output(out, [model_dir, data_path], overwrite=overwrite, kind="attack-quantize") as claim:
            model = load(...)            # a failure here leaves OUT untouched
            d = claim.begin()           # late: a fresh temp sibling of OUT (or OUT itself with inplace=True)
            save(model, d)
        # leaving the block normally: the temp folder gets the marker and replaces OUT atomically (rename);
        # an exception: the temp folder is removed and OUT is as it was.

    Entering the block takes an exclusive lock (`fcntl.flock` on a sibling `.OUT.amnesiac.lock`): a second process
    claiming the same OUT is refused at once. `inplace=True` (unlearn: checkpoints must survive a kill for
    `resume`) makes begin() return OUT itself: a replaced amnesiac output is removed then, and OUT is left
    as it is on an exception. `resume=True` accepts an existing amnesiac output of this kind as it is.
    `lock=False`: the caller locks later (distributed runs: only rank 0 writes)."""
    return OutputClaim(Path(out), list(inputs), overwrite=overwrite, kind=kind, resume=resume, inplace=inplace,
                       lock=lock, option=option)


class OutputClaim:
    """See claim_output. Attributes: out, kind, run_id, path (where to write, after begin())."""

    def __init__(self, out: Path, inputs: list, *, overwrite: bool, kind: str, resume: bool = False,
                 inplace: bool = False, lock: bool = True, option: str = "--out"):
        import uuid

        self.out, self.kind, self.overwrite, self.resume = Path(out).expanduser(), kind, overwrite, resume
        self.inplace, self.option, self._lock_on_enter = inplace, option, lock
        self.inputs = [Path(i).expanduser() for i in inputs if isinstance(i, (str, os.PathLike)) and i is not None
                       and Path(i).expanduser().exists()]
        self.is_file = self.out.suffix == ".json"
        self.run_id = uuid.uuid4().hex[:12]
        self.path: Path | None = None
        self._lock_fd: int | None = None
        self._old: dict | None = None
        self.check()

    # -- checks (no side effects; run again under the lock) --
    def _err(self, what: str, hint: str):
        from .errors import OutputError

        return OutputError(f"{self.option} {self.out}: {what}", hint)

    def check(self) -> None:
        o = self.out.resolve()
        for i in self.inputs:
            r = i.resolve()
            rel = ("is the input" if o == r else "is inside the input" if r in o.parents
                   else "contains the input" if o in r.parents else None)
            if rel:
                raise self._err(f"{rel} {i}", "choose an output path outside every input (amnesiac never "
                                "writes over what it reads)")
        anc = o.parent  # outputs are written as temp siblings then renamed: the parent must take new entries
        while not anc.exists():
            anc = anc.parent
        if not anc.is_dir():
            raise self._err(f"{anc} is a file, not a folder", "choose another output path")
        if not os.access(anc, os.W_OK | os.X_OK):
            raise self._err(f"{anc} is not writable", "choose a writable location")
        if not o.exists():
            return
        if self.is_file:
            if not o.is_file():
                raise self._err("exists and is not a file", "choose another output path")
            if not self.overwrite:
                raise self._err("already exists", "pass --overwrite to replace it, or choose another output path")
            return
        if not o.is_dir():
            raise self._err("exists and is not a folder", "choose another output path")
        if not any(o.iterdir()):
            return  # an empty folder holds nothing to lose
        self._old = read_marker(o)
        if self._old is None and self.resume and (o / "checkpoint" / "state.json").is_file():
            self._old = {"kind": self.kind, "legacy": True}  # a run started before markers existed
        if self._old is None:
            raise self._err("exists, is not empty and was not written by amnesiac (no .amnesiac-output.json)",
                            "amnesiac never deletes it: choose another output path, or empty it yourself")
        if self._old.get("kind") != self.kind:
            raise self._err(f"holds an amnesiac {self._old.get('kind')!r} output, not {self.kind!r}",
                            "choose another output path")
        if not (self.overwrite or self.resume):
            raise self._err(f"already holds an amnesiac {self.kind} output",
                            "pass --overwrite to replace it, or choose another output path")

    # -- lock --
    def lock(self) -> None:
        import fcntl

        if self._lock_fd is not None:
            return
        o = self.out.resolve()
        o.parent.mkdir(parents=True, exist_ok=True)
        lp = o.with_name(f".{o.name}.amnesiac.lock")
        while True:
            fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._err("another amnesiac process is writing it (lock held)",
                                "wait for it to finish, or choose another output path") from None
            try:  # the holder before us may have unlinked the file after we opened it: lock the live one
                if os.fstat(fd).st_ino == os.stat(lp).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self._lock_fd, self._lock_path = fd, lp

    def unlock(self) -> None:
        if self._lock_fd is None:
            return
        try:
            os.unlink(self._lock_path)  # while still holding it: a waiter re-checks the inode (see lock)
        except OSError:
            pass
        os.close(self._lock_fd)
        self._lock_fd = None

    # -- writing --
    def marker(self) -> dict:
        import datetime

        return {"kind": self.kind, "run_id": self.run_id, "pid": os.getpid(),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "inputs": [str(i) for i in self.inputs]}

    def begin(self) -> Path:
        """Where to write, created now (late: after every option is validated and the inputs loaded)."""
        import glob
        import shutil

        if self.path is not None:
            return self.path
        self.lock()
        self.check()  # the world may have changed since the first check
        o = self.out
        for left in o.parent.glob(f".{glob.escape(o.name)}.{'[0-9a-f]' * 12}.tmp"):  # killed runs' temp outputs
            shutil.rmtree(left) if left.is_dir() else left.unlink()
        if self.is_file:
            self.path = o.with_name(f".{o.name}.{self.run_id}.tmp")
        elif self.inplace:
            keep = self.resume and self._old is not None
            if o.exists() and not keep:
                if self._old is not None:  # an amnesiac output of this kind, --overwrite given (check())
                    shutil.rmtree(o)
                elif o.is_dir():
                    o.rmdir()  # empty (check())
            o.mkdir(parents=True, exist_ok=True)
            if not (o / OUTPUT_MARKER).exists():
                write_json(o / OUTPUT_MARKER, self.marker())
            self.path = o
        else:
            self.path = o.with_name(f".{o.name}.{self.run_id}.tmp")
            self.path.mkdir(parents=True)
        return self.path

    def commit(self) -> None:
        """Swap the finished temp output into place (rename); an old amnesiac output is removed after."""
        import shutil

        if self.path is None or self.inplace:
            return
        o = self.out
        if self.is_file:
            if self.path.exists():
                os.replace(self.path, o)
            return
        write_json(self.path / OUTPUT_MARKER, self.marker())
        if o.exists():
            old = o.with_name(f".{o.name}.{self.run_id}.old")
            os.replace(o, old)
            os.replace(self.path, o)
            shutil.rmtree(old)
        else:
            os.replace(self.path, o)

    def abort(self) -> None:
        import shutil

        if self.path is not None and not self.inplace and self.path.exists():
            if self.path.is_dir():
                shutil.rmtree(self.path)
            else:
                self.path.unlink()

    def __enter__(self) -> "OutputClaim":
        if self._lock_on_enter:
            self.lock()
        return self

    def __exit__(self, et, ev, tb) -> None:
        try:
            if et is None:
                self.commit()
            else:
                self.abort()
        finally:
            self.unlock()
