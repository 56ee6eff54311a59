"""A corpus of hostile inputs, as a new user would type them, over every verb and the Python API.

Each case asserts the exit code (2 = bad input), ONE `error:` line that names the problem, no traceback,
and that no pre-existing file changed (sha256 of every file under the shared folder, before and after).
Covered among others: `attack quantize --out` = `--model` / an unrelated folder (relearn --save-model shares
it), `unlearn --overwrite` with `--out` = `--model` / a typo in `--robust-to`, `--lr inf`,
`audit --margin 2|nan`, `--resume` with another model / data, a 1 MB JSONL line.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import make_tiny

_EXTRA = object()  # marks a case whose expected message is checked by a callable


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _qa(items) -> str:
    return "".join(json.dumps(it.to_json()) + "\n" for it in items)


class Kill(Exception):
    pass


@pytest.fixture(scope="module")
def w(tmp_path_factory, tok, qa_people):
    """The user's folder: two models, data files, their own folder, a finished run, a killed run, a quantized copy."""
    from amnesiac.models import save_model
    from amnesiac.unlearn import unlearn

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("user")
    save_model(make_tiny(tok), tok, root / "model")
    save_model(make_tiny(tok, seed=7), tok, root / "model2")
    f, r = qa_people["forget"], qa_people["retain"][:12]
    (root / "forget.jsonl").write_text(_qa(f))
    (root / "forget2.jsonl").write_text(_qa(f[:-1]))
    (root / "retain.jsonl").write_text(_qa(r))
    (root / "overlap.jsonl").write_text(_qa(r + f[:1]))
    (root / "bad.jsonl").write_text(_qa(f[:2]) + "{not json\n")
    (root / "empty.jsonl").write_text("")
    (root / "one.jsonl").write_text(_qa(f[:1]))
    (root / "notes.json").write_text('{"mine": true}\n')
    (root / "broken.json").write_text("{broken")
    (root / "mine").mkdir()
    (root / "mine" / "thesis.txt").write_text("years of work\n")
    kw = dict(method="npo", lr=1e-3, max_steps=3, batch_size=4, progress=False)
    unlearn(str(root / "model"), str(root / "forget.jsonl"), str(root / "retain.jsonl"), out=root / "prev",
            **{**kw, "max_steps": 1})

    def killer(rec):
        if rec["step"] == 2:
            raise Kill

    with pytest.raises(Kill):
        unlearn(str(root / "model"), str(root / "forget.jsonl"), str(root / "retain.jsonl"), out=root / "ckpt",
                checkpoint_every=1, callbacks=[killer], **kw)
    assert (root / "ckpt" / "checkpoint" / "state.json").exists()
    from typer.testing import CliRunner

    from amnesiac.cli import app

    res = CliRunner().invoke(app, ["attack", "quantize", "--model", str(root / "model"), "--out", str(root / "prevq"),
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return root


# the unlearn options the killed run `ckpt` was made with (resume must repeat them)
CK = ["--method", "npo", "--lr", "1e-3", "--max-steps", "3", "--batch-size", "4", "--no-progress"]


def U(*extra, model="model", forget="forget.jsonl", retain="retain.jsonl", out="new"):
    a = ["unlearn", "--model", f"@{model}", "--forget", f"@{forget}", "--out", f"@{out}", "--no-progress",
         "--max-steps", "1", "--batch-size", "4"]
    if retain:
        a += ["--retain", f"@{retain}"]
    return a + list(extra)


def Q(*extra, model="model", out="q"):
    return ["attack", "quantize", "--model", f"@{model}", "--out", f"@{out}", "--device", "cpu", *extra]


def R(*extra, model="model", forget="forget.jsonl"):
    return ["attack", "relearn", "--model", f"@{model}", "--forget", f"@{forget}", "--device", "cpu", *extra]


def E(*extra, model="model", data="forget.jsonl", out="ev"):
    return ["eval", "--model", f"@{model}", "--data", f"@{data}", "--out", f"@{out}", "--retain", "none",
            "--device", "cpu", "--no-progress", *extra]


def A(*extra):
    return ["audit", "--target", "@model", "--unlearned", "@model2", "--forget", "@forget.jsonl",
            "--retain", "@retain.jsonl", "--out", "@au", *extra]


CASES = [
    # ---- attack quantize --out never replaces what amnesiac did not write ----
    ("D1 quantize --out = --model", Q(out="model"), 2, "is the input"),
    ("D1 quantize --out = unrelated folder", Q(out="mine"), 2, "not written by amnesiac"),
    ("D1 quantize --out inside the model", Q(out="model/sub"), 2, "is inside the input"),
    ("D1 quantize --out contains the model", Q(out="."), 2, "contains the input"),
    ("D1 relearn --save-model --out = unrelated folder", R("--save-model", "--out", "@mine"), 2, "not written by amnesiac"),
    ("D1 relearn --out = --model", R("--save-model", "--out", "@model"), 2, "is the input"),
    ("quantize --out an earlier run without --overwrite", Q(out="prevq"), 2, "pass --overwrite"),
    ("quantize --out an unlearn run (another kind)", Q("--overwrite", out="prev"), 2, "'unlearn' output"),
    ("quantize --bits 1", Q("--bits", "1"), 2, "bits"),
    ("quantize --bits 9", Q("--bits", "9"), 2, "2–8 bits"),
    ("quantize --bits x", Q("--bits", "x"), 2, "--bits"),
    ("quantize --group 0", Q("--group", "0"), 2, "--group"),
    ("quantize --scheme foo", Q("--scheme", "foo"), 2, "scheme"),
    ("quantize --backend foo", Q("--backend", "foo"), 2, "unknown quantization backend"),
    ("quantize --backend gguf --kind q9", Q("--backend", "gguf", "--kind", "q9"), 2, "q9"),
    ("quantize --dtype fp8", Q("--dtype", "fp8"), 2, "unknown dtype"),
    ("quantize --device tpu", Q("--device", "tpu"), 2, "unknown device"),
    ("quantize --model missing", Q(model="nothere"), 2, "no such model"),
    ("quantize --model a data file", Q(model="forget.jsonl"), 2, "expected a model directory"),
    ("quantize --out under a file", Q(out="notes.json/x"), 2, "is a file"),
    # ---- unlearn --overwrite replaces only an earlier run, and only after everything is checked ----
    ("D2 unlearn --overwrite --out = --model", U("--overwrite", out="model"), 2, "is the input"),
    ("D2 unlearn --overwrite + --robust-to typo", U("--overwrite", "--robust-to", "q4_x", out="prev"), 2, "unknown quantizer 'q4_x'"),
    ("unlearn --overwrite --out = unrelated folder", U("--overwrite", out="mine"), 2, "not written by amnesiac"),
    ("unlearn --out an earlier run", U(out="prev"), 2, "pass --overwrite"),
    ("unlearn --out = --forget file", U(out="forget.jsonl"), 2, "is the input"),
    ("unlearn --out contains --forget", U(out="."), 2, "contains the input"),
    ("unlearn --overwrite + unknown method", U("--overwrite", "--method", "nope", out="prev"), 2, "unknown unlearning method"),
    ("unlearn --overwrite + missing --forget", U("--overwrite", forget="nothere.jsonl", out="prev"), 2, "no such file"),
    ("unlearn --overwrite + --max-length > context", U("--overwrite", "--max-length", "4096", out="prev"), 2,
     "exceeds the model's context"),
    ("unlearn --overwrite + overlap", U("--overwrite", retain="overlap.jsonl", out="prev"), 2, "in both"),
    # ---- numbers out of range, refused before any work ----
    ("D4 unlearn --lr inf", U("--lr", "inf"), 2, "lr must be a finite number"),
    ("unlearn --lr nan", U("--lr", "nan"), 2, "lr must be a finite number"),
    ("unlearn --lr 0", U("--lr", "0"), 2, "lr = 0.0 is out of range"),
    ("unlearn --lr -1", U("--lr", "-1"), 2, "lr = -1.0 is out of range"),
    ("unlearn --max-steps 0", U("--max-steps", "0"), 2, "max_steps"),
    ("unlearn --epochs 0", U("--epochs", "0"), 2, "epochs"),
    ("unlearn --batch-size 0", U("--batch-size", "0"), 2, "batch_size"),
    ("unlearn --grad-accum 0", U("--grad-accum", "0"), 2, "grad_accum"),
    ("unlearn --sure-percentile 100", U("--sure-percentile", "100"), 2, "sure_percentile"),
    ("unlearn --sure-percentile 0", U("--sure-percentile", "0"), 2, "sure_percentile"),
    ("unlearn --warmup-steps -1", U("--warmup-steps", "-1"), 2, "warmup_steps"),
    ("unlearn --weight-decay -0.1", U("--weight-decay", "-0.1"), 2, "weight_decay"),
    ("unlearn --lora-rank 0", U("--lora-rank", "0"), 2, "lora_rank"),
    ("unlearn --early-stop-recall 2", U("--early-stop-recall", "2"), 2, "early_stop_recall"),
    ("unlearn --robust-noise 2", U("--robust-noise", "2"), 2, "robust_noise"),
    ("unlearn --max-length 1", U("--max-length", "1"), 2, "max_length"),
    ("unlearn --max-length > context", U("--max-length", "100000"), 2, "exceeds the model's context of 512"),
    ("unlearn --schedule bogus", U("--schedule", "bogus"), 2, "unknown schedule"),
    ("unlearn --precision fp8", U("--precision", "fp8"), 2, "unknown precision"),
    ("unlearn --optimizer sgd", U("--optimizer", "sgd"), 2, "unknown optimizer"),
    ("unlearn --reference bogus", U("--reference", "bogus"), 2, "unknown reference"),
    ("unlearn --device tpu", U("--device", "tpu"), 2, "unknown device"),
    ("unlearn --method ga_gdr without --retain", U("--method", "ga_gdr", retain=None), 2, "needs a retain set"),
    ("unlearn unknown option", U("--lrr", "1"), 2, "no such option"),
    ("unlearn missing --forget", ["unlearn", "--model", "@model", "--out", "@new"], 2, "missing option '--forget'"),
    # ---- inputs ----
    ("unlearn --model missing", U(model="nothere"), 2, "no such model"),
    ("unlearn --forget missing", U(forget="nothere.jsonl"), 2, "no such file"),
    ("unlearn --forget malformed JSONL", U(forget="bad.jsonl"), 2, "bad.jsonl:3"),
    ("unlearn --forget empty", U(forget="empty.jsonl"), 2, "empty.jsonl"),
    ("unlearn --forget unknown source", U(forget="nosuch:forget10"), 2, "unknown data source"),
    ("unlearn forget/retain overlap", U(retain="overlap.jsonl"), 2, "in both the forget and the retain set"),
    # ---- resume knows what it holds ----
    ("D6 --resume with another --model", U(*CK, "--resume", model="model2", out="ckpt"), 2, "another --model"),
    ("D6 --resume with another --forget", U(*CK, "--resume", forget="forget2.jsonl", out="ckpt"), 2, "another --forget"),
    ("--resume with another --lr", U(*CK, "--resume", "--lr", "1e-2", out="ckpt"), 2, "different training config"),
    ("--resume a finished run", U(*CK, "--resume", out="prev"), 2, "already finished"),
    ("unlearn --out a checkpoint without --resume", U(*CK, out="ckpt"), 2, "pass resume"),
    # ---- attack relearn / prompts / probe / collapse ----
    ("relearn --fraction 0", R("--fraction", "0"), 2, "fraction"),
    ("relearn --fraction 1", R("--fraction", "1"), 2, "fraction"),
    ("relearn --fraction 1.5", R("--fraction", "1.5"), 2, "fraction"),
    ("relearn --steps 0", R("--steps", "0"), 2, "steps"),
    ("relearn --lr inf", R("--lr", "inf"), 2, "lr must be a finite number"),
    ("relearn --batch-size 0", R("--batch-size", "0"), 2, "batch_size"),
    ("relearn --by foo", R("--by", "foo"), 2, "unknown by 'foo'"),
    ("relearn --control foo", R("--control", "foo"), 2, "unknown control"),
    ("relearn --save-model without --out", R("--save-model"), 2, "--save-model needs --out"),
    ("relearn --forget missing", R(forget="nothere.jsonl"), 2, "no such file"),
    ("relearn one forget item", R(forget="one.jsonl"), 2, "at least 2 forget items"),
    ("prompts --transforms bogus", ["attack", "prompts", "--model", "@model", "--forget", "@forget.jsonl",
                                    "--transforms", "bogus"], 2, "unknown prompt transform"),
    ("prompts --k -1", ["attack", "prompts", "--model", "@model", "--forget", "@forget.jsonl", "--k", "-1"], 2, "--k"),
    ("prompts --out = --model", ["attack", "prompts", "--model", "@model", "--forget", "@forget.jsonl",
                                 "--out", "@model"], 2, "is the input"),
    ("probe --model missing", ["attack", "probe", "--model", "@nothere", "--forget", "@forget.jsonl"], 2, "no such model"),
    ("probe --out = unrelated folder", ["attack", "probe", "--model", "@model", "--forget", "@forget.jsonl",
                                        "--out", "@mine"], 2, "not written by amnesiac"),
    ("collapse --bits 0", ["attack", "collapse", "--target", "@model", "--unlearned", "@model2", "--bits", "0"], 2, "bits"),
    ("collapse --out an existing JSON file", ["attack", "collapse", "--target", "@model", "--unlearned", "@model2",
                                              "--out", "@notes.json"], 2, "already exists"),
    # ---- eval ----
    ("eval --out = --model", E(out="model"), 2, "is the input"),
    ("eval --out = unrelated folder", E(out="mine"), 2, "not written by amnesiac"),
    ("eval --batch-size 0", E("--batch-size", "0"), 2, "--batch-size"),
    ("eval --template without {question}", E("--template", "Q:"), 2, "{question}"),
    ("eval --privleak-ref-auc 2", E("--privleak-ref-auc", "2"), 2, "--privleak-ref-auc"),
    ("eval --max-length 0", E("--max-length", "0"), 2, "--max-length"),
    ("eval --dtype bogus", E("--dtype", "bogus"), 2, "unknown dtype"),
    ("eval --data missing", E(data="nothere.jsonl"), 2, "nothere.jsonl"),
    ("eval --model missing", E(model="nothere"), 2, "no such model"),
    ("eval --retrained broken JSON", E("--retrained", "@broken.json"), 2, "not valid JSON"),
    # ---- audit --margin, and audit/sweep/demo/prepare/ls/models at validation time ----
    ("D5 audit --margin 2", A("--margin", "2"), 2, "0 ≤ margin < 1"),
    ("D5 audit --margin nan", A("--margin", "nan"), 2, "0 ≤ margin < 1"),
    ("audit --margin -0.1", A("--margin", "-0.1"), 2, "0 ≤ margin < 1"),
    ("audit --suite bogus", A("--suite", "bogus"), 2, "unknown suite"),
    ("audit --forget missing", ["audit", "--target", "@model", "--unlearned", "@model2", "--forget", "@nothere.jsonl",
                                "--retain", "@retain.jsonl", "--out", "@au"], 2, "no such file"),
    ("sweep --lr abc", ["sweep", "--target", "@model", "--lr", "abc", "--out", "@sw"], 2, "comma-separated numbers"),
    ("sweep --lr -1", ["sweep", "--target", "@model", "--lr", "-1", "--out", "@sw"], 2, "learning rates must be positive"),
    ("sweep --bits 5", ["sweep", "--target", "@model", "--bits", "5", "--out", "@sw"], 2, "unsupported bit widths"),
    ("sweep --precision bf16", ["sweep", "--target", "@model", "--precision", "bf16", "--out", "@sw"], 2,
     "available: float32, bfloat16, bf16-mixed"),
    ("demo --seed abc", ["demo", "--seed", "abc", "--out", "@dm"], 2, "--seed"),
    ("prepare --size huge", ["prepare", "--size", "huge"], 2, "unknown --size 'huge'"),
    ("ls bogus", ["ls", "bogus"], 2, "unknown kind 'bogus'"),
    ("global --threads 0", ["--threads", "0", "ls"], 2, "--threads"),
    ("models facts --model missing", ["models", "facts", "--model", "@nothere"], 2, "no such model"),
    ("models fetch --dest unrelated folder", ["models", "fetch", "smollm2", "--from-gguf", "@notes.json", "--dest",
                                              "@mine", "--force"], 2, "not written by amnesiac"),
    ("models facts --batch-size 0", ["models", "facts", "--model", "@model", "--batch-size", "0"], 2, "--batch-size"),
]
if not torch.cuda.is_available():  # a CUDA device that is not there: refused before any model loads
    CASES += [("unlearn --device cuda (none here)", U("--device", "cuda"), 2, "CUDA is not available"),
              ("quantize --device cuda:3 (none here)", Q("--device", "cuda:3"), 2, "CUDA is not available")]


def _args(args: list[str], root: Path) -> list[str]:
    return [str(root / a[1:]) if a.startswith("@") else a for a in args]


def _one_error_line(res, needle: str) -> str:
    assert "Traceback" not in res.output, res.output
    # warnings and progress bars (transformers' "Loading weights … it/s]") are not error lines
    lines = [ln for ln in res.stderr.splitlines()
             if ln.strip() and not ln.startswith("warning:") and not re.search(r"\d+%\|", ln)]
    assert len(lines) == 1, f"expected one error line, got {lines!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


@pytest.mark.parametrize("name,args,code,needle", CASES, ids=[c[0] for c in CASES])
def test_cli_bad_input(w, name, args, code, needle):
    from typer.testing import CliRunner

    from amnesiac.cli import app

    before = _tree(w)
    t0 = time.time()
    res = CliRunner().invoke(app, _args(args, w))
    assert res.exit_code == code, (res.exit_code, res.output)
    _one_error_line(res, needle)
    assert _tree(w) == before, "a pre-existing file changed (or a new one appeared)"
    assert time.time() - t0 < 60, "refused, but only after work"


# ---- the Python API raises the same family with the same one-line messages ----

def _api_cases(w, tok):
    from amnesiac.attacks.relearn import relearn_attack, split_forget
    from amnesiac.data import load_dataset
    from amnesiac.io import claim_output
    from amnesiac.models import load_model
    from amnesiac.unlearn import UnlearnConfig, unlearn

    m, f, r = str(w / "model"), str(w / "forget.jsonl"), str(w / "retain.jsonl")
    items = load_dataset(f)
    return [
        ("api unlearn out=model (D2)", lambda: unlearn(m, f, r, out=w / "model", overwrite=True), "is the input"),
        ("api unlearn lr=inf (D4)", lambda: unlearn(m, f, r, lr=float("inf")), "lr must be a finite number"),
        ("api UnlearnConfig epochs=0", lambda: UnlearnConfig(epochs=0), "epochs"),
        ("api UnlearnConfig batch_size=4.5", lambda: UnlearnConfig(batch_size=4.5), "batch_size must be an integer"),
        ("api unlearn overlap", lambda: unlearn(m, f, str(w / "overlap.jsonl")), "in both"),
        ("api unlearn resume other model (D6)", lambda: unlearn(str(w / "model2"), f, r, out=w / "ckpt", resume=True,
                                                                method="npo", lr=1e-3, max_steps=3, batch_size=4),
         "another --model"),
        ("api relearn fraction=1", lambda: relearn_attack(None, tok, forget=items, fraction=1.0), "fraction"),
        ("api split_forget by=x", lambda: split_forget(items, 0.5, "x"), "unknown by"),
        ("api claim_output foreign folder", lambda: claim_output(w / "mine", [], kind="eval"), "not written by amnesiac"),
        ("api load_model missing", lambda: load_model(w / "nothere"), "no such model"),
        ("api load_dataset missing", lambda: load_dataset(str(w / "nothere.jsonl")), "no such file"),
    ]


def test_api_bad_input(w, tok):
    from amnesiac.errors import UserError

    before = _tree(w)
    cases = _api_cases(w, tok)
    for name, call, needle in cases:
        with pytest.raises(UserError) as ei:
            call()
        msg = str(ei.value)
        assert "\n" not in msg and needle.lower() in msg.lower(), (name, msg)
    assert _tree(w) == before
    assert len(cases) + len(CASES) >= 60


# ---- a 1 MB JSONL line is truncated to the model's context with a warning, in seconds ----

@pytest.mark.parametrize("line", ["words", "one long token"])
def test_one_megabyte_line_is_truncated_quickly(w, tmp_path, line):
    from typer.testing import CliRunner

    from amnesiac.cli import app

    words = ("Alice Mora was born in Lisbon and works as a baker " * 21000 if line == "words"
             else "Lisbon" + "q" * (1 << 20))[: 1 << 20]
    (tmp_path / "big.jsonl").write_text(json.dumps({"text": words}) + "\n" + json.dumps({"text": "short one"}) + "\n")
    t0 = time.time()
    res = CliRunner().invoke(app, ["unlearn", "--model", str(w / "model"), "--forget", str(tmp_path / "big.jsonl"),
                                   "--method", "ga", "--max-steps", "1", "--out", str(tmp_path / "o"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert time.time() - t0 < 60
    assert "warning: 1 of 2 forget items were longer than 512 tokens" in res.stderr
    info = json.loads((tmp_path / "o" / "unlearn.json").read_text())
    assert info["data"]["n_truncated"]["forget"] == 1 and info["warnings"]


# ---- non-finite weights stop the run; weights that never move are reported ----

def test_nonfinite_weights_fail_the_run(w, tmp_path):
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from typer.testing import CliRunner

    from amnesiac.cli import app

    # An optimizer step that leaves a non-finite weight while that step's loss and gradient were finite (what
    # `--lr inf` did before it was refused: saved an all-NaN model, status complete, exit 0). A global
    # post-step hook plays the overflowing optimizer; only the weight check can see it.
    def poison(opt, args, kwargs):
        with torch.no_grad():
            opt.param_groups[0]["params"][0].view(-1)[0] = float("nan")

    handle = register_optimizer_step_post_hook(poison)
    try:
        res = CliRunner().invoke(app, ["unlearn", "--model", str(w / "model"), "--forget", str(w / "forget.jsonl"),
                                       "--method", "ga", "--max-steps", "1", "--out", str(tmp_path / "o"),
                                       "--no-progress"])
    finally:
        handle.remove()
    assert res.exit_code == 1, res.output
    line = _one_error_line(res, "non-finite weights at step 1")
    assert "lower the learning rate" in line
    info = json.loads((tmp_path / "o" / "unlearn.json").read_text())
    assert info["status"] == "failed" and not list((tmp_path / "o").glob("*.safetensors"))


def test_unchanged_weights_are_reported(w, tmp_path):
    from typer.testing import CliRunner

    from amnesiac.cli import app

    res = CliRunner().invoke(app, ["unlearn", "--model", str(w / "model"), "--forget", str(w / "forget.jsonl"),
                                   "--method", "ga", "--lr", "1e-30", "--max-steps", "1", "--weight-decay", "0",
                                   "--out", str(tmp_path / "o"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "warning: the weights never changed" in res.stderr
    info = json.loads((tmp_path / "o" / "unlearn.json").read_text())
    assert info["weights_unchanged"] and any("never changed" in x for x in info["warnings"])


# ---- ownership, overwrite, lock ----

def test_overwrite_replaces_only_our_output_atomically(w, tmp_path):
    from typer.testing import CliRunner

    from amnesiac.cli import app
    from amnesiac.io import OUTPUT_MARKER, read_marker

    q = tmp_path / "q"
    args = ["attack", "quantize", "--model", str(w / "model"), "--out", str(q), "--device", "cpu"]
    assert CliRunner().invoke(app, args).exit_code == 0
    first = read_marker(q)
    assert first["kind"] == "attack-quantize" and (q / "attack.json").exists()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "pass --overwrite" in res.stderr and read_marker(q) == first
    res = CliRunner().invoke(app, [*args, "--bits", "8", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert read_marker(q)["run_id"] != first["run_id"]
    assert json.loads((q / "attack.json").read_text())["config"]["bits"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # no temp, old or lock file left beside it
    assert (q / OUTPUT_MARKER).exists()


def test_second_writer_is_refused(w, tmp_path):
    from typer.testing import CliRunner

    from amnesiac.cli import app
    from amnesiac.io import claim_output

    out = tmp_path / "o"
    with claim_output(out, [], kind="unlearn"):  # holds the lock, as a running process would
        res = CliRunner().invoke(app, ["unlearn", "--model", str(w / "model"), "--forget", str(w / "forget.jsonl"),
                                       "--method", "ga", "--max-steps", "1", "--out", str(out), "--no-progress"])
        assert res.exit_code == 2, res.output
        _one_error_line(res, "another amnesiac process is writing it")
        assert not out.exists()
    assert not list(tmp_path.iterdir())


def test_claim_failure_leaves_out_as_it_was(tmp_path):
    from amnesiac.io import claim_output, read_marker

    out = tmp_path / "o"
    with claim_output(out, [], kind="eval") as c:
        (c.begin() / "summary.json").write_text("1")
    first = read_marker(out)
    with pytest.raises(RuntimeError):
        with claim_output(out, [], kind="eval", overwrite=True) as c:
            (c.begin() / "summary.json").write_text("2")
            raise RuntimeError("crash while writing")
    assert (out / "summary.json").read_text() == "1" and read_marker(out) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    # a killed run's temp output is cleaned by the next writer; a user's look-alike file is not
    (tmp_path / ".o.0123456789ab.tmp").mkdir()
    (tmp_path / ".o.backup.tmp").write_text("mine")
    with claim_output(out, [], kind="eval", overwrite=True) as c:
        (c.begin() / "summary.json").write_text("3")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".o.backup.tmp", "o"]
    assert (out / "summary.json").read_text() == "3"


def test_debug_shows_the_traceback_of_an_internal_error(monkeypatch):
    from typer.testing import CliRunner

    from amnesiac import cli

    def boom(kind=None):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("amnesiac.cli.ls.load_all", boom)
    res = CliRunner().invoke(cli.app, ["ls"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    _one_error_line(res, "internal error: ZeroDivisionError: boom")
    res = CliRunner().invoke(cli.app, ["--debug", "ls"])
    assert res.exit_code == 1 and "Traceback" in res.stderr


def test_unlearn_overwrite_replaces_only_after_inputs_load(w, tmp_path):
    from typer.testing import CliRunner

    from amnesiac.cli import app
    from amnesiac.io import read_marker
    from amnesiac.unlearn import unlearn

    out = tmp_path / "run"
    unlearn(str(w / "model"), str(w / "forget.jsonl"), out=out, method="ga", max_steps=1, progress=False)
    before, first = _tree(out), read_marker(out)
    base = ["unlearn", "--model", str(w / "model"), "--out", str(out), "--method", "ga", "--max-steps", "1",
            "--no-progress", "--overwrite"]
    res = CliRunner().invoke(app, [*base, "--forget", str(w / "nothere.jsonl")])
    assert res.exit_code == 2 and _tree(out) == before  # the finished run survives a failed --overwrite
    res = CliRunner().invoke(app, [*base, "--forget", str(w / "forget.jsonl"), "--lr", "1e-3"])
    assert res.exit_code == 0, res.output
    assert read_marker(out)["run_id"] != first["run_id"]
    assert json.loads((out / "unlearn.json").read_text())["config"]["lr"] == 1e-3


def test_allow_overlap_trains_with_a_warning(w):
    from amnesiac.errors import AmnesiacWarning
    from amnesiac.unlearn import unlearn

    with pytest.warns(AmnesiacWarning, match="in both the forget and the retain set"):
        res = unlearn(str(w / "model"), str(w / "forget.jsonl"), str(w / "overlap.jsonl"), method="ga_gdr",
                      max_steps=1, progress=False, allow_overlap=True)
    assert res.info["steps"] == 1


def test_audit_and_eval_refuse_items_longer_than_the_context_before_loading(tmp_path, tok):
    """Sequences that cannot fit max_position_embeddings are refused with a count, before any model loads."""
    import json

    from typer.testing import CliRunner

    from amnesiac.cli import app
    from amnesiac.models import save_model
    from conftest import make_tiny

    m = make_tiny(tok)
    m.config.max_position_embeddings = 64
    save_model(m, tok, tmp_path / "m")
    long = {"question": "Who? " * 80, "answer": "x"}
    short = {"question": "Who?", "answer": "y"}
    (tmp_path / "f.jsonl").write_text(json.dumps(long) + "\n" + json.dumps(short) + "\n")
    (tmp_path / "r.jsonl").write_text(json.dumps(short) + "\n")
    for args in (["audit", "--target", str(tmp_path / "m"), "--unlearned", str(tmp_path / "m"),
                  "--forget", str(tmp_path / "f.jsonl"), "--retain", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "a")],
                 ["eval", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "f.jsonl"), "--out", str(tmp_path / "e")]):
        res = CliRunner().invoke(app, args)
        lines = [x for x in res.output.splitlines() if x.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and "1 of" in lines[0] and "context is 64" in lines[0], res.output
        assert not (tmp_path / "a").exists() and not (tmp_path / "e").exists()
