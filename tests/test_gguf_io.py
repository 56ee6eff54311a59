"""GGUF in and out: a tiny Llama written with the gguf package, loaded back through load_model(.gguf)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("gguf", reason="the gguf package is needed for GGUF files: pip install gguf")

from amnesiac.attacks.quant.gguf_backend import GGUFQuantizer  # noqa: E402
from amnesiac.attacks.quant.gguf_io import gguf_name, write_gguf  # noqa: E402
from amnesiac.models.load import check_model_dir, load_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llama(tok):
    """SmolLM2's shape in miniature: grouped-query attention (4 heads / 2 KV heads, so the q/k head
    permutation is exercised for both) and tied embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0)
    return LlamaForCausalLM(cfg).eval()


def _logits(m, tok, text="Question: What is the name of the person?"):
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        return m(input_ids=ids).logits


def test_f32_gguf_round_trip_is_exact(tmp_path, tiny_llama, tok):
    p = write_gguf(tiny_llama, tok, tmp_path / "tiny.gguf", ftype="f32")
    assert check_model_dir(p) == p
    m2, tok2 = load_model(p, device="cpu")
    assert getattr(m2, "hf_quantizer", None) is None and all(x.requires_grad for x in m2.parameters())
    sd = m2.state_dict()
    for k, v in tiny_llama.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert torch.equal(_logits(tiny_llama, tok), _logits(m2, tok2))
    text = "Question: Where was Alice born?\nAnswer: Paris"
    assert tok2(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert (tok2.bos_token, tok2.eos_token) == (tok.bos_token, tok.eos_token)


def test_q4_1_gguf_holds_the_simulated_requantization(tmp_path, tok):
    """What a user shipping a Q4_1 GGUF gets == GGUFQuantizer('q4_1') on every Linear (Q8_0 embeddings).
    Untied LM head here (the conftest tiny Llama), so `output.weight` is written and read too."""
    from tests.conftest import make_tiny

    tiny_llama = make_tiny(tok, seed=4, hidden=64, layers=2, heads=2, inter=96)
    p = write_gguf(tiny_llama, tok, tmp_path / "tiny-q4_1.gguf", ftype="q4_1")
    m2, _ = load_model(p, device="cpu")
    sd = m2.state_dict()
    for k, v in tiny_llama.state_dict().items():
        if v.dim() == 1:
            ref = v
        elif "embed" in k or "lm_head" in k:
            ref = GGUFQuantizer("q8_0")(v)
        else:
            ref = GGUFQuantizer("q4_1")(v)
        assert torch.equal(ref, sd[k]), k
    # reading it back and writing it again reproduces the same tensors (re-quantizing on-grid weights)
    p2 = write_gguf(m2, load_model(p, device="cpu")[1], tmp_path / "again.gguf", ftype="q4_1")
    m3, _ = load_model(p2, device="cpu")
    for k, v in sd.items():
        assert torch.equal(v, m3.state_dict()[k]), k


def test_names_and_refusals(tmp_path, tok):
    assert gguf_name("model.layers.7.mlp.down_proj.weight") == "blk.7.ffn_down.weight"
    assert gguf_name("model.embed_tokens.weight") == "token_embd.weight"
    with pytest.raises(ValueError, match="no GGUF name"):
        gguf_name("model.layers.0.self_attn.q_proj.bias")
    with pytest.raises(ValueError, match="unknown GGUF file type"):
        write_gguf(None, tok, tmp_path / "x.gguf", ftype="q3_k")


def test_cli_quantize_a_gguf_model_to_q4_1(tmp_path, tiny_llama, tok):
    """GGUF in (any --model), GGUF format out as an attack; the result is a safetensors HF directory."""
    from typer.testing import CliRunner

    from amnesiac.cli import app

    src = write_gguf(tiny_llama, tok, tmp_path / "in.gguf", ftype="f32")
    out = tmp_path / "q"
    r = CliRunner().invoke(app, ["attack", "quantize", "--model", str(src), "--out", str(out),
                                 "--backend", "gguf", "--kind", "q4_1", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert any(out.glob("*.safetensors"))
    m, _ = load_model(out, device="cpu")
    w = tiny_llama.model.layers[0].mlp.up_proj.weight
    assert torch.equal(m.model.layers[0].mlp.up_proj.weight, GGUFQuantizer("q4_1")(w))


def test_chat_template_survives_the_gguf_round_trip(tmp_path, tiny_llama, tok):
    """transformers' GGUF tokenizer loader drops `tokenizer.chat_template`; load_tokenizer reads it back, so
    --chat-template works on a .gguf model as on its folder."""
    import copy

    from amnesiac.models.load import load_tokenizer

    t = copy.deepcopy(tok)
    t.chat_template = "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}<bot>"
    p = write_gguf(tiny_llama, t, tmp_path / "chat.gguf", ftype="f32")
    assert load_tokenizer(p).chat_template == t.chat_template
    assert load_tokenizer(write_gguf(tiny_llama, tok, tmp_path / "plain.gguf", ftype="f32")).chat_template is None
