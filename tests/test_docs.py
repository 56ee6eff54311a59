"""The documentation holds together: a short README with the two commands, every `docs/science.md §N`
citation lands on a heading, every relative link and figure in the Markdown points at a real file."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCIENCE = ROOT / "docs" / "science.md"
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".sh", ".cfg", ".yaml", ".yml", ""}

# `docs/science.md §5`, `§1–2` (a range), `§3, §4` (a list), optionally followed by a quoted subsection
# name: `docs/science.md §5 "Recovery"`
CITATION = re.compile(r'docs/science\.md §(\d+[a-z]?)((?:\s*[–-]\s*\d+[a-z]?)?(?:,\s*§\d+[a-z]?)*)(?: "([^"]+)")?')
SECTION_ID = re.compile(r"§?(\d+[a-z]?)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
LINK = re.compile(r"(!?)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _repo_files() -> list[Path]:
    """Tracked files plus new files not ignored (so a doc is checked before its first commit)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode != 0:  # not a git checkout (an sdist): walk the tree
        return [p for p in ROOT.rglob("*") if p.is_file() and not {".venv", ".git"} & set(p.parts)]
    return sorted({ROOT / f for f in out.stdout.splitlines() if (ROOT / f).is_file()})


def _markdown_files() -> list[Path]:
    """README.md, docs/**/*.md and every other Markdown file of the repository."""
    found = {ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(p for p in _repo_files() if p.suffix == ".md")}
    return sorted(found)


def _headings(md: Path) -> list[tuple[int, str]]:
    """(level, text) of every ATX heading outside fenced code blocks."""
    out, fenced = [], False
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = HEADING.match(line)
        if m and not fenced:
            out.append((len(m.group(1)), m.group(2)))
    return out


def _science_sections() -> dict[str, list[str]]:
    """Section id ("1", "1b", "5", …) → the headings below it up to the next section id."""
    sections: dict[str, list[str]] = {}
    current = None
    for _, text in _headings(SCIENCE):
        m = re.match(r"§(\d+[a-z]?)\.\s", text)
        if m:
            current = m.group(1)
            assert current not in sections, f"section §{current} has two headings"
            sections[current] = [text]
        elif current is not None:
            sections[current].append(text)
    return sections


def _slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", text.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_readme_is_short_and_has_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = readme.splitlines()
    assert len(lines) <= 120, f"README.md has {len(lines)} lines (limit 120)"
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no `{target}` target"
        assert any(line.startswith(f"make {target}") for line in lines), f"README does not show `make {target}`"


def test_science_has_every_section_the_code_numbers():
    sections = _science_sections()
    assert {"1", "1b", "2", "2b", "3", "4", "5", "6", "7"} <= set(sections)
    refs = SCIENCE.read_text(encoding="utf-8").split("## References", 1)
    assert len(refs) == 2, "docs/science.md has no References section"
    assert "arXiv:2410.16454" in refs[1]  # the seed paper
    assert len(re.findall(r"arXiv:\d{4}\.\d{4,5}", refs[1])) >= 20


def test_every_science_citation_resolves():
    sections = _science_sections()
    seen, bad = 0, []
    for p in _repo_files():
        if p.suffix not in TEXT_SUFFIXES or p == Path(__file__).resolve():
            continue
        text = p.read_text(encoding="utf-8", errors="replace")
        for i, line in enumerate(text.splitlines(), 1):
            for m in CITATION.finditer(line):
                seen += 1
                ids = [m.group(1)] + SECTION_ID.findall(m.group(2))
                where = f"{p.relative_to(ROOT)}:{i}: {m.group(0)}"
                missing = [s for s in ids if s not in sections]
                if missing:
                    bad.append(f"{where} (no heading for §{', §'.join(missing)})")
                elif m.group(3) and not any(m.group(3).lower() in h.lower() for h in sections[ids[0]]):
                    bad.append(f"{where} (no heading {m.group(3)!r} under §{ids[0]})")
    assert seen >= 50, f"only {seen} citations found: is the pattern still right?"
    assert not bad, "citations that do not resolve:\n" + "\n".join(bad)


@pytest.mark.parametrize("md", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_figures_exist(md):
    text = md.read_text(encoding="utf-8")
    bad = []
    for m in LINK.finditer(text):
        is_image, target = m.group(1) == "!", m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            assert not is_image or target.startswith("https://"), f"{md.name}: image {target}"
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            bad.append(f"{target} (no such file)")
            continue
        if ROOT not in dest.parents and dest != ROOT:
            bad.append(f"{target} (outside the repository)")
        if is_image and dest.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
            bad.append(f"{target} (not a PNG)")
        if anchor and dest.suffix == ".md" and anchor not in {_slug(h) for _, h in _headings(dest)}:
            bad.append(f"{target} (no heading with anchor #{anchor})")
    assert not bad, f"{md.relative_to(ROOT)}: broken links:\n" + "\n".join(bad)


def test_every_figure_in_docs_is_referenced():
    figures = sorted((ROOT / "docs").rglob("*.png"))
    assert figures, "no figures under docs/"
    referenced = set()
    for md in _markdown_files():
        for m in LINK.finditer(md.read_text(encoding="utf-8")):
            if m.group(1) == "!":
                referenced.add((md.parent / m.group(2)).resolve())
    orphans = [str(f.relative_to(ROOT)) for f in figures if f.resolve() not in referenced]
    assert not orphans, f"figures no document shows: {orphans}"
