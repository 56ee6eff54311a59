"""The repository stands alone: TOFU ships inside the package, and nothing points outside the checkout."""
from __future__ import annotations

import gzip
import hashlib
import re
import subprocess
from pathlib import Path

import pytest

from amnesiac.data.sources import TOFU_PACKAGED, load_dataset, tofu_dir

ROOT = Path(__file__).resolve().parents[1]

# rows and sha256 (first 16 hex) of each split's JSONL text, as converted from the sources named in
# amnesiac/data/tofu/README.md; a changed row changes the hash
TOFU_SPLITS = {
    "forget01.jsonl": (40, "6c837c881bcbb3ad"),
    "forget01_perturbed.jsonl": (40, "d1acf73cb590cb4e"),
    "forget05.jsonl": (200, "c215a23f4180a196"),
    "forget05_perturbed.jsonl": (200, "2a13e48ad8060858"),
    "forget10.jsonl": (400, "b0e7e229cb73f131"),
    "forget10_perturbed.jsonl": (400, "f36c5bb61f1682af"),
    "full.jsonl": (4000, "a27c22aa039e4b4a"),
    "holdout01.jsonl": (40, "ef77bad4822f4d44"),
    "holdout05.jsonl": (200, "8efd71039d6342ca"),
    "holdout10.jsonl": (400, "68b82f01c94f1fbd"),
    "idontknow.txt": (99, "eb9a1e32a6f41120"),
    "real_authors.jsonl": (100, "cbf5797948326cb3"),
    "real_authors_perturbed.jsonl": (100, "2f1d2b4541b57302"),
    "retain90.jsonl": (3600, "39ffab62c4bbb500"),
    "retain95.jsonl": (3800, "c90191a30ccba386"),
    "retain99.jsonl": (3960, "2bb1a3b571f9c4ff"),
    "retain_perturbed.jsonl": (400, "b240b2fea871bb0e"),
    "world_facts.jsonl": (117, "9e7f5a824ef86656"),
    "world_facts_perturbed.jsonl": (117, "98a179327a70a499"),
}


@pytest.mark.parametrize("name", sorted(TOFU_SPLITS))
def test_packaged_tofu_rows_and_hash(name):
    data = gzip.decompress((TOFU_PACKAGED / f"{name}.gz").read_bytes())
    rows, digest = TOFU_SPLITS[name]
    assert data.count(b"\n") == rows
    assert hashlib.sha256(data).hexdigest()[:16] == digest


def test_packaged_tofu_is_the_default_and_env_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("AMNESIAC_TOFU_DIR", raising=False)
    assert tofu_dir() == TOFU_PACKAGED
    assert (TOFU_PACKAGED / "LICENSE").read_text().startswith("MIT")
    assert len(load_dataset("tofu:retain90")) == 3600
    (tmp_path / "forget01.jsonl").write_text('{"question": "q?", "answer": "a."}\n')
    monkeypatch.setenv("AMNESIAC_TOFU_DIR", str(tmp_path))
    items = load_dataset("tofu:forget01")
    assert [(i.question, i.answer) for i in items] == [("q?", "a.")]


def test_missing_override_folder_is_a_clear_error(tmp_path, monkeypatch):
    from amnesiac.data.schema import DataError

    monkeypatch.setenv("AMNESIAC_TOFU_DIR", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="no such folder"):
        load_dataset("tofu:forget01")


def _tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:  # not a git checkout (an sdist): walk the tree
        return [p for p in ROOT.rglob("*") if p.is_file() and ".venv" not in p.parts and ".git" not in p.parts]
    return [ROOT / f for f in out.stdout.splitlines()]


def test_nothing_refers_to_a_folder_outside_the_repository():
    # a path into `shared/` (the developers' side folder, absent for users) or its SCIENCE.md
    pat = re.compile(r"shared/|SCIENCE\.md")
    bad = []
    for p in _tracked_files():
        if p.suffix not in {".py", ".md", ".toml", ".txt", ".sh", ".cfg", ".yaml", ".yml", ""} or not p.exists():
            continue
        if p.name == "test_standalone.py":
            continue
        for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if pat.search(line):
                bad.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not bad, "references outside the repository:\n" + "\n".join(bad)
