import torch
import pytest

from amnesiac.models import ModelLoadError, load_model, save_model
from amnesiac.models.train import lm_loss, train_lm, weight_stats


def test_save_and_load_roundtrip(tiny_model, tok, tmp_path):
    out = save_model(tiny_model, tok, tmp_path / "m")
    assert list(out.glob("*.safetensors"))
    m2, t2 = load_model(out, device="cpu")
    x = torch.tensor([[tok.bos_token_id, 5, 6, 7]])
    assert torch.equal(m2(x).logits, tiny_model(x).logits)
    assert t2("hello")["input_ids"] == tok("hello")["input_ids"]


def test_loader_refuses_pickle_and_missing(tmp_path, tiny_model, tok):
    with pytest.raises(ModelLoadError, match="no such model"):
        load_model(tmp_path / "nothing")
    d = tmp_path / "pk"
    d.mkdir()
    (d / "config.json").write_text(tiny_model.config.to_json_string())
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_model(d)
    e = tmp_path / "nocfg"
    e.mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(e)


def test_tiny_model_trains_and_loss_falls(tok, qa_people):
    from conftest import make_tiny

    from amnesiac.core.logprobs import collate, encode_pairs
    from amnesiac.data import qa_answer, qa_prompt

    model = make_tiny(tok, seed=3)
    items = qa_people["retain"][:30]
    ex = encode_pairs(tok, [qa_prompt(i.question) for i in items], [qa_answer(i.answer) for i in items])
    batch = collate(ex, tok.pad_token_id)
    before = lm_loss(model, batch).item()
    log = train_lm(model, ex, tok.pad_token_id, epochs=20, lr=5e-3, batch_size=10, warmup=2, seed=0, schedule="constant")
    after = lm_loss(model, batch).item()
    assert after < 0.6 * before
    assert log[0]["step"] == 0 and "loss" in log[-1]
    ws = weight_stats(model)
    assert ws and all(1.0 < v < 10 for v in ws.values())
