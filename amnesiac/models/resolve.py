"""One resolver for every way a user names a model, so every verb and the Python API accept the same forms.

    runs/target/                       a Hugging Face folder (config.json + *.safetensors)      kind "dir"
    model.Q4_1.gguf                    a GGUF file                                                kind "gguf"
    org/name, org/name@revision        a hub id, read OFFLINE from the local Hugging Face cache  kind "hub"
    my-lora/                           a PEFT adapter folder (adapter_config.json, no config)    kind "adapter"

A local path wins over a hub id of the same spelling. Nothing here touches the network: a hub id that is not
in the cache is one error line saying how to fetch it on a machine with internet. Adapters name their base
in adapter_config.json (`base_model_name_or_path`), itself resolved by the same rules (a folder, a GGUF file
or a cached hub id); `load_adapter` merges the adapter into its base (what measuring and quantization need:
a plain model) or keeps it as a trainable adapter (`merge=False`).

Safety rules as in load.py: safetensors only (pickle `.bin`/`.pt` weights and `adapter_model.bin` are
refused: unpickling runs arbitrary code), and a config that asks for the repository's own Python code
(`auto_map`) is refused unless `trust_remote_code=True`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .load import ModelLoadError, check_model_dir

# org/name[@revision]: the hub's own character set; "..", "--" and a leading "." or "/" are never repo ids
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<rev>[A-Za-z0-9._/-]+))?")
_PICKLE = (".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from. `path` is what gets read: the folder, the .gguf file, the hub snapshot
    folder in the cache, or the adapter folder. `revision` is the cached commit (hub ids, and adapters that
    come from the hub). `base` is an adapter's base model, itself a ModelRef."""
    kind: str  # "dir" | "gguf" | "hub" | "adapter"
    path: Path
    source: str  # what the caller wrote
    revision: str | None = None
    base: ModelRef | None = None
    description: str = ""

    @property
    def tokenizer_path(self) -> Path:
        """An adapter folder may ship the tokenizer it was trained with (e.g. added tokens); else the base's."""
        if self.kind == "adapter" and not _has_tokenizer(self.path):
            return self.base.tokenizer_path
        return self.path

    def to_json(self) -> dict:
        """What an output records about its model: where it came from, not just a path."""
        return {"kind": self.kind, "source": self.source, "path": str(self.path), "revision": self.revision,
                "base": self.base.to_json() if self.base else None, "description": self.description}


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (huggingface_hub reads it once at
    import, so a later HF_HOME / HF_HUB_CACHE would be missed): HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE,
    $HF_HOME/hub, $XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub."""
    env = os.environ
    for k in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(k):
            return Path(os.path.expandvars(env[k])).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """(repo_id, revision) when `spec` is spelled like a hub id, else None."""
    s = str(spec)
    m = _HUB_ID.fullmatch(s)
    if not m or ".." in s or "--" in m["repo"] or s.endswith(".gguf"):
        return None
    return m["repo"], m["rev"]


def needs_resolving(spec) -> bool:
    """True for what load.py's plain path rules cannot read: a hub id that is not a local path, or an
    adapter folder. Everything else (folders, .gguf files, missing paths, tokenizer-only folders) keeps
    load.py's own handling and messages."""
    if isinstance(spec, ModelRef):
        return True
    p = Path(spec).expanduser()
    if p.exists():
        return p.is_dir() and (p / "adapter_config.json").is_file() and not (p / "config.json").is_file()
    return parse_hub_id(str(spec)) is not None


def resolve_model(spec, trust_remote_code: bool | None = False) -> ModelRef:
    """A ModelRef for a folder, .gguf file, hub id (offline) or adapter folder; ModelLoadError (one line,
    with the fix) otherwise. `trust_remote_code=None` skips the auto_map check (for validation that does
    not know the flag yet; load_model always passes its flag)."""
    if isinstance(spec, ModelRef):
        return spec
    source = str(spec)
    p = Path(source).expanduser()
    if p.exists():
        if p.is_dir() and (p / "adapter_config.json").is_file() and not (p / "config.json").is_file():
            return _adapter(p, source, None, trust_remote_code)
        p = check_model_dir(p)  # load.py's rules: config.json + safetensors, or a .gguf file
        if p.suffix == ".gguf":
            return ModelRef("gguf", p, source, description=f"GGUF file {p}")
        _check_folder(p, trust_remote_code)
        return ModelRef("dir", p, source, description=f"local folder {p}")
    hub = parse_hub_id(source)
    if hub is None:
        check_model_dir(p)  # raises load.py's own "no such model directory or file"
    return _from_hub(source, *hub, trust_remote_code)


def _from_hub(source: str, repo: str, rev: str | None, trust_remote_code) -> ModelRef:
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    want = f"{repo}@{rev}" if rev else repo
    try:  # local_files_only: reads refs/<rev> and snapshots/<commit> in the cache, never the network
        snap = Path(snapshot_download(repo, revision=rev, cache_dir=str(cache), local_files_only=True))
    except Exception as e:  # noqa: BLE001  (LocalEntryNotFoundError, an incomplete snapshot, a bad id, …)
        cached = _cached_revisions(cache, repo)
        have = f" (the cache holds {repo} at {', '.join(cached)} only)" if cached else ""
        # "not found" is the whole story; anything else (an incomplete snapshot) is worth its own words
        why = "" if type(e).__name__ == "LocalEntryNotFoundError" else f" ({' '.join(str(e).split())[:200]})"
        raise ModelLoadError(
            f"{source}: no such model directory or file here, and hub id {want} is not in the local Hugging Face"
            f" cache {cache}{have}{why}",
            f"amnesiac never downloads: on a machine with internet run `hf download {repo}"
            f"{f' --revision {rev}' if rev else ''}` (older: huggingface-cli download; or huggingface_hub."
            f"snapshot_download('{repo}')), then copy that cache here (HF_HUB_CACHE or HF_HOME pointing at it)"
            " or pass the downloaded folder") from None
    commit = snap.name
    tag = f"{want} (commit {commit[:12]}) from the cache {cache}"
    if (snap / "adapter_config.json").is_file() and not (snap / "config.json").is_file():
        return _adapter(snap, source, commit, trust_remote_code, where=f"hub adapter {tag}")
    if not (snap / "config.json").is_file():
        ggufs = sorted(f.name for f in snap.glob("*.gguf"))
        if ggufs:
            raise ModelLoadError(f"{source}: the cached repo holds GGUF files, not a Hugging Face model",
                                 f"pass one file: {snap / ggufs[0]}" + (f" (or {', '.join(ggufs[1:4])})" if ggufs[1:] else ""))
    check_model_dir(snap)
    _check_folder(snap, trust_remote_code)
    return ModelRef("hub", snap, source, revision=commit, description=f"hub {tag}")


def _cached_revisions(cache: Path, repo: str) -> list[str]:
    d = cache / ("models--" + repo.replace("/", "--"))
    refs = sorted(f.name for f in (d / "refs").glob("*")) if (d / "refs").is_dir() else []
    snaps = sorted(f.name[:12] for f in (d / "snapshots").glob("*")) if (d / "snapshots").is_dir() else []
    return refs or snaps


def _check_folder(p: Path, trust_remote_code) -> None:
    """What check_model_dir leaves to the loader, checked before any weight is read: every shard a
    safetensors index names is there (an interrupted download), and repository code needs the flag."""
    index = p / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing = [s for s in shards if not (p / s).is_file()]
        if missing:
            raise ModelLoadError(f"{p}: {len(missing)} of {len(shards)} safetensors shards are missing "
                                 f"({', '.join(missing[:3])})", "the download was interrupted: fetch the model again")
    if trust_remote_code is False:
        try:
            cfg = json.loads((p / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{p}/config.json: not valid JSON ({e})", "repair or re-save the model") from None
        if cfg.get("auto_map"):
            raise ModelLoadError(
                f"{p}: config.json asks for the repository's own Python code (auto_map: "
                f"{', '.join(sorted(cfg['auto_map']))}) and amnesiac does not run it unless asked",
                "pass trust_remote_code=True (CLI: --trust-remote-code where offered) if you trust that code, or "
                f"delete auto_map from config.json to use transformers' built-in {cfg.get('model_type', '?')!r} class")


def _has_tokenizer(p: Path) -> bool:
    return any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def _adapter(p: Path, source: str, commit: str | None, trust_remote_code, where: str | None = None) -> ModelRef:
    names = {f.name for f in p.iterdir()}
    if "adapter_model.safetensors" not in names:
        pickles = sorted(n for n in names if n.startswith("adapter_model") and n.endswith(_PICKLE))
        if pickles:
            raise ModelLoadError(
                f"{p}: the adapter's weights are a pickle ({', '.join(pickles)}); amnesiac refuses them because "
                "unpickling can run arbitrary code",
                "convert once in a trusted environment: PeftModel.from_pretrained(base, dir)"
                ".save_pretrained(out, safe_serialization=True)")
        raise ModelLoadError(f"{p}: adapter_config.json but no adapter_model.safetensors",
                             "save the adapter with save_pretrained(out) (peft writes safetensors by default)")
    try:
        acfg = json.loads((p / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{p}/adapter_config.json: not valid JSON ({e})", "repair or re-save the adapter") from None
    base_spec = acfg.get("base_model_name_or_path")
    fix = f"edit base_model_name_or_path in {p / 'adapter_config.json'} to the base model's local folder or cached hub id"
    if not base_spec:
        raise ModelLoadError(f"{p}: adapter_config.json names no base model", fix)
    # peft records the base's hub revision next to its name: the adapter was trained on that commit
    if acfg.get("revision") and "@" not in str(base_spec) and not Path(base_spec).expanduser().exists():
        base_spec = f"{base_spec}@{acfg['revision']}"
    try:
        base = resolve_model(base_spec, trust_remote_code)
    except ModelLoadError as e:
        raise ModelLoadError(f"{p}: the adapter's base model {base_spec!r} could not be resolved ({e})", fix) from None
    if base.kind == "adapter":
        raise ModelLoadError(f"{p}: the base model {base_spec!r} is itself an adapter",
                             "merge that adapter into its base first (merge_and_unload().save_pretrained(out)) "
                             "and point base_model_name_or_path at the result")
    kind = acfg.get("peft_type", "?")
    rank = f", r={acfg['r']}" if acfg.get("r") else ""
    desc = f"{where or f'adapter folder {p}'} ({kind}{rank}) on {base.description}"
    return ModelRef("adapter", p, source, revision=commit, base=base, description=desc)


def model_content_key(spec, n: int = 16) -> str:
    """io.content_key of what a reference *is*, for caches and resume checks: the cached snapshot of a hub id
    (the id is no path), and for an adapter its own files together with its base's key (an adapter's
    files alone would give one key to the same adapter on two different bases)."""
    from ..io import content_key as files_key
    from ..io import hash_obj

    ref = resolve_model(spec, trust_remote_code=None)
    if ref.kind == "adapter":
        return hash_obj(["adapter", files_key(ref.path, n), model_content_key(ref.base, n)], n)
    return files_key(ref.path, n)


def weights_dir(spec) -> Path | None:
    """The safetensors folder whose tensors are exactly the loaded model's (a folder, a hub snapshot), or
    None when the loaded weights exist only after loading (a dequantized .gguf, an adapter merged into its
    base): callers that stream the original weights back (|Δw| after unlearning) must then copy them."""
    ref = resolve_model(spec, trust_remote_code=None)
    return ref.path if ref.kind in ("dir", "hub") else None


def load_adapter(spec, merge: bool = True, device: str | None = "auto", dtype: str | None = "float32",
                 trust_remote_code: bool = False, device_map: str | None = None):
    """(model, tokenizer) for an adapter: its base loaded by load_model, the adapter applied with peft.
    merge=True: merge_and_unload(), a plain transformers model (measuring, quantization attacks, saving);
    merge=False: a trainable PeftModel (only the adapter's weights require grad)."""
    from .load import load_model, load_tokenizer

    ref = resolve_model(spec, trust_remote_code)
    if ref.kind != "adapter":
        raise ModelLoadError(f"{ref.source}: not a PEFT adapter ({ref.description})",
                             "load it with load_model, or pass a folder with adapter_config.json")
    try:
        from peft import PeftModel
    except ImportError as e:
        raise ModelLoadError(f"{ref.path}: loading a PEFT adapter needs peft ({e})", "pip install peft") from None
    base, tok = load_model(ref.base.path, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                           device_map=device_map)
    if _has_tokenizer(ref.path):
        tok = load_tokenizer(ref.path, trust_remote_code)
        # tokens added while fine-tuning: the adapter's saved embedding rows expect the grown matrix
        if len(tok) > base.get_input_embeddings().num_embeddings:
            base.resize_token_embeddings(len(tok))
    try:
        model = PeftModel.from_pretrained(base, str(ref.path), is_trainable=not merge)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelLoadError(f"{ref.path}: the adapter does not fit its base {ref.base.source} "
                             f"({' '.join(str(e).split())[:300]})",
                             "check base_model_name_or_path in adapter_config.json") from None
    if merge:
        model = model.merge_and_unload()
        model.eval()
    return model, tok
