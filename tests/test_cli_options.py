"""CLI options come from the config dataclasses: every field is an option with the field's default, and the
values typed on the command line reach the config (lists as comma-separated strings)."""
import dataclasses
import re

import pytest
import typer
from typer.testing import CliRunner

from amnesiac.audit import AuditConfig
from amnesiac.cli import app
from amnesiac.cli_options import build_config, config_params, field_help
from amnesiac.demo import DemoConfig


def _help(verb: list[str]) -> str:
    r = CliRunner().invoke(app, [*verb, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert r.exit_code == 0, r.output
    return re.sub(r"\s+", " ", r.output.replace("│", " "))  # rich's box edges cut wrapped help lines


def _verbs(t=app, path=()):
    """(words, callback) of every verb of the `amnesiac` app, sub-groups included."""
    for c in t.registered_commands:
        yield [*path, c.name or c.callback.__name__], c.callback
    for g in t.registered_groups:
        yield from _verbs(g.typer_instance, [*path, g.name])


# verbs that take only names and paths (nothing to configure): no config dataclass
NO_CONFIG = {"ls", "models fetch", "models ls"}


def _shown(d) -> str:
    if isinstance(d, (list, tuple)):
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in d)
    return re.sub(r"\s+", " ", f"{d:g}" if isinstance(d, float) else str(d))


def missing_options(text: str, configs: dict, excluded: dict) -> list[str]:
    """Every field of every config class that `--help` text does not list with its default."""
    bad = []
    for cls in configs.values():
        for f in dataclasses.fields(cls):
            if f.name.startswith("_") or f.name in excluded.get(cls.__name__, ()):
                continue
            flag = "--" + f.name.replace("_", "-")
            if not re.search(re.escape(flag) + r"(?![\w-])", text):
                bad.append(f"{cls.__name__}.{f.name}: no {flag}")
                continue
            d = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if d is None or isinstance(d, bool):
                continue
            if f"[default: {_shown(d)}]" not in text and f"default: {_shown(d)}" not in text:
                bad.append(f"{cls.__name__}.{f.name}: {flag} does not show the default {_shown(d)}")
    return bad


def test_every_verb_is_covered():
    words = {" ".join(w) for w, _ in _verbs()}
    assert {"unlearn", "eval", "audit", "demo", "sweep", "prepare", "attack quantize", "attack collapse",
            "attack relearn", "attack prompts", "attack probe", "models facts", "reproduce tofu",
            "reproduce smollm2"} <= words
    assert NO_CONFIG <= words


@pytest.mark.parametrize("verb, callback", list(_verbs()), ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_help_lists_every_field_with_its_default(verb, callback):
    text = _help(verb)
    configs = getattr(callback, "configs", None)
    if configs is None:
        assert " ".join(verb) in NO_CONFIG, f"amnesiac {' '.join(verb)}: options not generated from a config dataclass"
        return
    assert configs, verb
    assert not missing_options(text, configs, callback.excluded)


def test_a_config_field_missing_from_help_fails_the_check():
    @dataclasses.dataclass
    class Toy:
        alpha: int = 1  # shown
        beta: str = "x"  # not an option of the hand-written verb below

    toy = typer.Typer()

    @toy.command("a")
    def a(alpha: int = typer.Option(1)):
        """hand-written options: beta is missing"""

    @toy.command("b")
    def b(alpha: int = typer.Option(2), beta: str = typer.Option("x")):
        """hand-written options: alpha has another default"""

    def help_of(name):
        return re.sub(r"\s+", " ", CliRunner().invoke(toy, [name, "--help"], env={"COLUMNS": "250"}).output)

    assert missing_options(help_of("a"), {"config": Toy}, {}) == ["Toy.beta: no --beta"]
    assert missing_options(help_of("b"), {"config": Toy}, {}) == ["Toy.alpha: --alpha does not show the default 1"]
    assert missing_options(help_of("a"), {"config": Toy}, {"Toy": ("beta",)}) == []


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
    (["--unlearn-precisions", "float32,fp8"], "fp8"),
])
def test_demo_options_refused_before_work(args, needle, tmp_path):
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), *args])
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.output
    assert not (tmp_path / "d").exists()


def test_python_dash_m_amnesiac_runs_the_cli():
    """`python -m amnesiac` (`python -m amnesiac.cli`, what torchrun launches, is run by tests/test_distributed.py)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "amnesiac", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "unlearn" in r.stdout and "attack" in r.stdout, r.stderr
