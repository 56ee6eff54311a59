"""Model references (models/resolve.py): a folder, a .gguf file, a hub id read offline from a Hugging Face cache
built here the way huggingface_hub lays it out, and PEFT adapters whose base is a folder or a cached hub id.
Every load is checked by its numbers (logits equal to the source model's), every refusal by its one line."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from amnesiac.models import ModelLoadError, load_adapter, load_model, load_tokenizer, resolve_model, save_model
from amnesiac.models.load import check_model_dir
from tests.conftest import make_tiny

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TEXT = "Question: In which city was the person born?\nAnswer: Lisbon"


def _logits(m, tok, text=TEXT):
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        return m(input_ids=ids).logits


def put_in_cache(cache, repo: str, src, commit: str = COMMIT, ref: str | None = "main"):
    """The layout huggingface_hub writes: models--org--name/blobs/<sha256> holding the bytes,
    snapshots/<commit>/<file> symlinks to them, refs/<ref> = commit."""
    import hashlib

    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    for f in sorted(src.rglob("*")):
        if f.is_file():
            blob = root / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
            shutil.copyfile(f, blob)
            link = snap / f.relative_to(src)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture(scope="module")
def base(tok):
    return make_tiny(tok, seed=5)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, base, tok):
    return save_model(base, tok, tmp_path_factory.mktemp("base") / "tiny")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    c = tmp_path / "hf" / "hub"
    c.mkdir(parents=True)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(c))
    return c


def make_adapter(base_model, out, base_ref: str):
    """A LoRA on q/v with random A and B (peft's default B = 0 would make the adapter a no-op and the test
    vacuous), saved by peft, its base pointed at `base_ref`."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(11)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    pm = get_peft_model(copy.deepcopy(base_model), cfg)
    pm.save_pretrained(out)
    ac = json.loads((out / "adapter_config.json").read_text())
    ac["base_model_name_or_path"] = base_ref
    (out / "adapter_config.json").write_text(json.dumps(ac))
    return out


def peft_reference_logits(base_dir, adapter_dir, tok):
    """base + adapter computed by peft itself, unmerged: what the merged load must equal."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    b = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    return _logits(PeftModel.from_pretrained(b, str(adapter_dir)).eval(), tok)


# ---------- folders and GGUF files: as before ----------

def test_folder_and_gguf_resolve_and_load_as_before(tmp_path, base, base_dir, tok):
    ref = resolve_model(base_dir)
    assert (ref.kind, ref.path, ref.base) == ("dir", base_dir, None)
    m, t = load_model(base_dir, device="cpu")
    assert torch.equal(_logits(m, t), _logits(base, tok))

    pytest.importorskip("gguf")
    from amnesiac.attacks.quant.gguf_io import write_gguf

    g = write_gguf(base, tok, tmp_path / "tiny.gguf", ftype="f32")
    ref = resolve_model(g)
    assert (ref.kind, ref.path) == ("gguf", g) and check_model_dir(g) == g
    m, t = load_model(g, device="cpu")
    assert torch.equal(_logits(m, t), _logits(base, tok))


def test_missing_plain_path_keeps_its_message(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model directory or file"):
        load_model(tmp_path / "nothere")
    with pytest.raises(ModelLoadError, match="expected a model directory"):
        (tmp_path / "data.jsonl").write_text("{}\n")
        resolve_model(tmp_path / "data.jsonl")


# ---------- hub ids, offline from the cache ----------

def test_hub_id_loads_from_the_cache(cache, base, base_dir, tok):
    snap = put_in_cache(cache, "acme/tiny", base_dir)
    ref = resolve_model("acme/tiny")
    assert (ref.kind, ref.path, ref.revision) == ("hub", snap, COMMIT)
    assert "acme/tiny" in ref.description and ref.to_json()["revision"] == COMMIT
    assert check_model_dir("acme/tiny") == snap
    m, t = load_model("acme/tiny", device="cpu")
    assert torch.equal(_logits(m, t), _logits(base, tok))
    assert load_tokenizer("acme/tiny")(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    # a pinned commit, and the @main branch spelled out, find the same snapshot
    assert resolve_model(f"acme/tiny@{COMMIT}").path == snap == resolve_model("acme/tiny@main").path


def test_hub_id_through_hf_home(tmp_path, monkeypatch, base_dir):
    """HF_HOME alone (no HF_HUB_CACHE): the cache is $HF_HOME/hub, read when called, not at import."""
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    snap = put_in_cache(tmp_path / "home" / "hub", "acme/tiny", base_dir)
    assert resolve_model("acme/tiny").path == snap


def test_missing_hub_id_is_one_line_with_the_download_command(cache, base_dir):
    with pytest.raises(ModelLoadError) as e:
        load_model("acme/absent", device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and "no such model directory or file" in msg and str(cache) in msg
    assert "hf download acme/absent" in msg and "snapshot_download" in msg and "HF_HUB_CACHE" in msg
    # a revision the cache does not hold: the error says which ones it does
    put_in_cache(cache, "acme/tiny", base_dir)
    with pytest.raises(ModelLoadError, match=r"acme/tiny@v2 is not in the local .* holds acme/tiny at main"):
        resolve_model("acme/tiny@v2")


def test_gguf_only_repo_names_the_file_to_pass(cache, tmp_path, base, tok):
    pytest.importorskip("gguf")
    from amnesiac.attacks.quant.gguf_io import write_gguf

    src = tmp_path / "ggrepo"
    src.mkdir()
    write_gguf(base, tok, src / "tiny.Q8_0.gguf", ftype="q8_0")
    snap = put_in_cache(cache, "acme/tiny-gguf", src)
    with pytest.raises(ModelLoadError, match=f"pass one file: {snap / 'tiny.Q8_0.gguf'}"):
        resolve_model("acme/tiny-gguf")
    assert resolve_model(snap / "tiny.Q8_0.gguf").kind == "gguf"


# ---------- safety: safetensors only, no repository code unless asked ----------

def _pickle_only(d):
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "pytorch_model.bin").write_bytes(b"never unpickled")
    return d


def test_pickle_only_folder_and_snapshot_are_refused(tmp_path, cache):
    d = _pickle_only(tmp_path / "pkl")
    for spec in (d, "acme/pickled"):
        if spec == "acme/pickled":
            put_in_cache(cache, "acme/pickled", d)
        with pytest.raises(ModelLoadError, match=r"only pickle checkpoints \(pytorch_model.bin\).*safe_serialization=True"):
            load_model(spec, device="cpu")


def test_auto_map_needs_trust_remote_code(tmp_path, base_dir):
    d = tmp_path / "custom"
    shutil.copytree(base_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"auto_map: AutoModelForCausalLM.*trust_remote_code=True.*'llama'") as e:
        load_model(d, device="cpu")
    assert "\n" not in str(e.value)
    assert check_model_dir(d) == d  # validation alone does not know the flag: load_model decides


def test_interrupted_sharded_download_is_named(tmp_path, base_dir):
    d = tmp_path / "sharded"
    shutil.copytree(base_dir, d)
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ModelLoadError, match="2 of 2 safetensors shards are missing"):
        resolve_model(d)


# ---------- PEFT adapters ----------

@pytest.mark.parametrize("where", ["folder", "hub"])
def test_adapter_loads_merged_equal_to_peft(tmp_path, cache, base, base_dir, tok, where):
    base_ref = str(base_dir) if where == "folder" else "acme/tiny"
    if where == "hub":
        put_in_cache(cache, "acme/tiny", base_dir)
    ad = make_adapter(base, tmp_path / "lora", base_ref)
    ref = resolve_model(ad)
    assert ref.kind == "adapter" and ref.base.kind == ("dir" if where == "folder" else "hub")
    assert ref.to_json()["base"]["source"] == base_ref and "LORA, r=4" in ref.description
    assert check_model_dir(ad) == ad

    want = peft_reference_logits(base_dir, ad, tok)
    assert not torch.allclose(want, _logits(base, tok), atol=1e-3)  # the adapter changes the model
    m, t = load_model(ad, device="cpu")
    assert type(m).__name__ == "LlamaForCausalLM" and not any("lora" in k for k in m.state_dict())
    torch.testing.assert_close(_logits(m, t), want, atol=1e-5, rtol=1e-5)


def test_adapter_unmerged_for_training(tmp_path, base, base_dir, tok):
    from peft import PeftModel

    ad = make_adapter(base, tmp_path / "lora", str(base_dir))
    m, t = load_adapter(ad, merge=False, device="cpu")
    assert isinstance(m, PeftModel)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    torch.testing.assert_close(_logits(m, t), peft_reference_logits(base_dir, ad, tok), atol=1e-6, rtol=1e-6)


def test_adapter_in_the_hub_cache_on_a_cached_base(tmp_path, cache, base, base_dir, tok):
    put_in_cache(cache, "acme/tiny", base_dir)
    ad = make_adapter(base, tmp_path / "lora", "acme/tiny")
    snap = put_in_cache(cache, "acme/tiny-lora", ad, commit="f" * 40)
    ref = resolve_model("acme/tiny-lora")
    assert (ref.kind, ref.path, ref.revision, ref.base.kind) == ("adapter", snap, "f" * 40, "hub")
    m, t = load_model("acme/tiny-lora", device="cpu")
    torch.testing.assert_close(_logits(m, t), peft_reference_logits(base_dir, ad, tok), atol=1e-5, rtol=1e-5)


def test_adapter_shipping_its_tokenizer_uses_it(tmp_path, base, base_dir, tok):
    ad = make_adapter(base, tmp_path / "lora", str(base_dir))
    assert resolve_model(ad).tokenizer_path == base_dir  # none shipped: the base's
    tok.save_pretrained(ad)
    assert resolve_model(ad).tokenizer_path == ad
    assert load_tokenizer(ad)(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    m, t = load_model(ad, device="cpu")
    torch.testing.assert_close(_logits(m, t), peft_reference_logits(base_dir, ad, tok), atol=1e-5, rtol=1e-5)


def test_adapter_with_missing_base_names_it_and_the_fix(tmp_path, cache, base):
    ad = make_adapter(base, tmp_path / "lora", "acme/nobase")
    with pytest.raises(ModelLoadError) as e:
        load_model(ad, device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and "'acme/nobase'" in msg and "hf download acme/nobase" in msg
    assert f"edit base_model_name_or_path in {ad / 'adapter_config.json'}" in msg


def test_adapter_pickle_weights_refused(tmp_path, base, base_dir):
    ad = make_adapter(base, tmp_path / "lora", str(base_dir))
    (ad / "adapter_model.safetensors").rename(ad / "adapter_model.bin")
    with pytest.raises(ModelLoadError, match=r"adapter's weights are a pickle \(adapter_model.bin\).*safe_serialization=True"):
        load_model(ad, device="cpu")


# ---------- what callers record and key on ----------

def test_content_key_and_weights_dir(tmp_path, cache, base, base_dir, tok):
    from amnesiac.io import content_key
    from amnesiac.models import model_content_key, weights_dir

    snap = put_in_cache(cache, "acme/tiny", base_dir)
    assert model_content_key("acme/tiny") == content_key(base_dir) == model_content_key(base_dir)
    assert weights_dir("acme/tiny") == snap and weights_dir(base_dir) == base_dir
    ad = make_adapter(base, tmp_path / "lora", "acme/tiny")
    k = model_content_key(ad)
    assert weights_dir(ad) is None  # merged weights exist only in memory
    # the same adapter files on another base are another model
    other = save_model(make_tiny(tok, seed=9), tok, tmp_path / "other")
    ac = json.loads((ad / "adapter_config.json").read_text())
    (ad / "adapter_config.json").write_text(json.dumps({**ac, "base_model_name_or_path": str(other)}))
    assert model_content_key(ad) not in (k, content_key(ad))


def test_verbs_take_hub_ids_and_adapters(tmp_path, cache, monkeypatch, base, base_dir, tok, qa_people):
    """Through the CLI: `eval` and `attack quantize` on a cached hub id and on an adapter over it give the
    numbers of the same model given as a folder."""
    from typer.testing import CliRunner

    from amnesiac.cli import app

    put_in_cache(cache, "acme/tiny", base_dir)
    make_adapter(base, tmp_path / "lora", "acme/tiny")
    merged, _ = load_model(tmp_path / "lora", device="cpu")
    save_model(merged, tok, tmp_path / "merged")
    (tmp_path / "f.jsonl").write_text("".join(json.dumps(it.to_json()) + "\n" for it in qa_people["forget"][:4]))
    monkeypatch.chdir(tmp_path)
    out = {}
    runs = {"hub": "acme/tiny", "dir": str(base_dir), "adapter": "lora", "merged": "merged"}
    for i, m in runs.items():
        for verb, args in (("eval", ["eval", "--model", m, "--data", "f.jsonl", "--out", f"ev{i}", "--retain", "none",
                                     "--device", "cpu", "--no-progress"]),
                           ("quantize", ["attack", "quantize", "--model", m, "--out", f"q{i}", "--device", "cpu"])):
            res = CliRunner().invoke(app, args)
            assert res.exit_code == 0, (m, verb, res.output)
        out[i] = load_model(tmp_path / f"q{i}", device="cpu")[0]
    for a, b in (("hub", "dir"), ("adapter", "merged")):
        na, nb = (_numbers(json.loads((tmp_path / f"ev{i}" / "summary.json").read_text())) for i in (a, b))
        assert len(na) > 5 and na.keys() == nb.keys() and na == pytest.approx(nb, abs=1e-6), (a, b)
        torch.testing.assert_close(_logits(out[a], tok), _logits(out[b], tok), atol=1e-5, rtol=1e-5)


def _numbers(d, prefix=""):
    """Every float in a JSON tree, by path (timings and paths left out)."""
    if isinstance(d, dict):
        return {k: v for key, val in d.items() if not any(s in key for s in ("time", "wall", "_s", "path", "model"))
                for k, v in _numbers(val, f"{prefix}/{key}").items()}
    if isinstance(d, list):
        return {k: v for i, val in enumerate(d) for k, v in _numbers(val, f"{prefix}/{i}").items()}
    return {prefix: float(d)} if isinstance(d, (int, float)) and not isinstance(d, bool) else {}


def test_unlearn_and_audit_take_hub_ids_and_adapters(tmp_path, cache, base, base_dir, tok, qa_people):
    """unlearn on an adapter reports the real weight change (it once read the adapter's own tensors: 0), and
    the audit keys a hub id by its cached snapshot's content."""
    from amnesiac.audit import Audit, AuditConfig
    from amnesiac.models.resolve import model_content_key
    from amnesiac.unlearn import unlearn

    ad = make_adapter(base, tmp_path / "adapter", str(base_dir))
    r = unlearn(str(ad), qa_people["forget"], qa_people["retain"][:8], out=tmp_path / "u", method="ga", lr=1e-2,
                max_steps=2, batch_size=4, progress=False, device="cpu")
    assert r.info["drift"]["mean_abs_dw"] > 0
    put_in_cache(cache, "acme/tiny", base_dir)
    assert model_content_key("acme/tiny") == model_content_key(base_dir)
    s = Audit("acme/tiny", str(tmp_path / "u"), qa_people["forget"], qa_people["retain"][:8], tmp_path / "a",
              config=AuditConfig(attacks=["fp"], n_boot=200)).run()
    assert s["model_keys"]["target"] == model_content_key(base_dir)
