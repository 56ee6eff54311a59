"""CLI options come from the config dataclasses: every field is an option with the field's default, and the
values typed on the command line reach the config (lists as comma-separated strings)."""
import dataclasses
import re

import pytest
from typer.testing import CliRunner

from amnesiac.audit import AuditConfig
from amnesiac.cli import app
from amnesiac.cli_options import build_config, config_params, field_help
from amnesiac.demo import DemoConfig


def _help(verb: list[str]) -> str:
    r = CliRunner().invoke(app, [*verb, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert r.exit_code == 0, r.output
    return re.sub(r"\s+", " ", r.output)


def _cases():
    from amnesiac.reproduce.smollm2 import SmolConfig
    from amnesiac.reproduce.tofu import TofuConfig

    from amnesiac.evaluate import EvalConfig
    from amnesiac.unlearn.config import UnlearnConfig

    return [(["eval"], EvalConfig, {"template"}), (["audit"], AuditConfig, {"mia"}), (["demo"], DemoConfig, set()), (["unlearn"], UnlearnConfig, set()),
            (["reproduce", "tofu"], TofuConfig, {"arch"}), (["reproduce", "smollm2"], SmolConfig, set())]


@pytest.mark.parametrize("verb, cls, skip", _cases(), ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_help_lists_every_field_with_its_default(verb, cls, skip):
    text = _help(verb)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name.startswith("_"):
            continue
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
        d = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if d is None or isinstance(d, bool):
            continue
        shown = ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in d) if isinstance(d, (list, tuple)) else (
            f"{d:g}" if isinstance(d, float) else str(d))
        assert f"[default: {shown}]" in text or f"default: {shown}" in text, (flag, shown)


def test_field_comments_become_help():
    h = field_help(AuditConfig)
    assert "Holm" in h["alpha"] and "resamples" in h["n_boot"]
    names = [p.name for p in config_params(AuditConfig)]
    assert names[:3] == ["suite", "attacks", "seed"] and "mia" in names


def test_comma_lists_parse_back_to_the_field_type():
    cfg = build_config(DemoConfig, {"lrs": "1e-4, 3e-4", "methods": "npo_klr", "scenarios": "trained"})
    assert cfg.lrs == (1e-4, 3e-4) and cfg.methods == ["npo_klr"] and cfg.scenarios == ("trained",)
    cfg = build_config(AuditConfig, {"attacks": "fp,rtn8", "margin": 0.1})
    assert cfg.attacks == ["fp", "rtn8"] and cfg.margin == 0.1


@pytest.mark.parametrize("args, needle", [
    (["--lrs", "1e-4,abc"], "--lrs"),
    (["--methods", "nosuch"], "nosuch"),
    (["--early-stop", "2"], "early_stop"),
    (["--scenarios", "trained,bogus"], "bogus"),
    (["--robust-to", "q9_9"], "q9_9"),
    (["--size", "huge"], "huge"),
])
def test_demo_options_refused_before_work(args, needle, tmp_path):
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), *args])
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.output
    assert not (tmp_path / "d").exists()
