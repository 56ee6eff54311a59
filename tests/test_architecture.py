"""The layer rule of docs/architecture.md, enforced: every import in amnesiac/ (module-level and inside
functions) points to the same layer or a lower one, and experiments do not import each other."""
from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "amnesiac"

# (layer, glob of module paths relative to amnesiac/); the first match wins, so specific patterns come first
LAYERS = [
    (5, "cli/*"), (5, "cli_options.py"), (5, "__init__.py"),
    (5, "__main__.py"),
    (4, "audit.py"), (4, "audit_config.py"), (4, "audit_results.py"), (4, "demo.py"), (4, "sweep.py"), (4, "sweep_offset.py"), (4, "reproduce/*"),
    (4, "report/audit_report.py"), (4, "report/demo_report.py"),
    (3, "measure.py"), (3, "runs.py"), (3, "scenarios.py"), (3, "evaluate.py"), (3, "eval_run.py"),
    (3, "metrics/recovery.py"),
    (2, "metrics/*"), (2, "attacks/*"), (2, "unlearn/*"),
    (1, "data/*"), (1, "models/*"),
    (0, "core/*"), (0, "io.py"), (0, "registry.py"), (0, "errors.py"), (0, "report/render.py"), (0, "report/plots.py"),
    (0, "report/__init__.py"),
]
# experiments sit side by side: each with its own report module(s); none imports another's
EXPERIMENTS = {
    "audit": ["audit.py", "audit_config.py", "audit_results.py", "report/audit_report.py"],
    "demo": ["demo.py", "report/demo_report.py"],
    "sweep": ["sweep.py", "sweep_offset.py"],
    "tofu": ["reproduce/tofu.py", "reproduce/tofu_models.py", "reproduce/tofu_report.py"],
    "smollm2": ["reproduce/smollm2.py", "reproduce/smollm2_measure.py", "reproduce/smollm2_sweep.py",
                "reproduce/smollm2_report.py", "reproduce/smollm2_demo.py"],
}
# sideways inside layer 2: metrics <- attacks <- unlearn
SUBLAYER2 = {"metrics": 0, "attacks": 1, "unlearn": 2}
# package __init__ files that only re-export their own package are part of that package's layer
OWN_INIT = ("core/__init__.py", "data/__init__.py", "models/__init__.py", "metrics/__init__.py",
            "attacks/__init__.py", "attacks/quant/__init__.py", "unlearn/__init__.py", "reproduce/__init__.py",
            "data/facts/__init__.py")


def layer_of(rel: str) -> int:
    if rel in OWN_INIT:
        return layer_of(rel.replace("__init__.py", "x.py"))
    for layer, pat in LAYERS:
        if fnmatch.fnmatch(rel, pat):
            return layer
    raise AssertionError(f"amnesiac/{rel} is in no layer of docs/architecture.md: add it to LAYERS")


def _module_file(name: str) -> str | None:
    """amnesiac.x.y -> 'x/y.py' or 'x/y/__init__.py' (None outside the package)."""
    if name != "amnesiac" and not name.startswith("amnesiac."):
        return None
    parts = name.split(".")[1:]
    if not parts:
        return "__init__.py"
    base = PKG.joinpath(*parts)
    if base.with_suffix(".py").exists():
        return "/".join(parts) + ".py"
    if (base / "__init__.py").exists():
        return "/".join(parts) + "/__init__.py"
    return None


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, target module file) of every amnesiac import in a file, relative ones resolved."""
    rel = path.relative_to(PKG)
    pkg = ["amnesiac", *rel.parent.parts] if rel.parts else ["amnesiac"]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            subs = [f"{mod}.{a.name}" for a in node.names]
            # `from .. import attacks` names a subpackage, not the parent's __init__
            names = subs if node.module is None else [mod] + [x for x in subs if _module_file(x)]
        for n in names:
            f = _module_file(n)
            if f is not None and f != str(rel):
                out.append((node.lineno, f))
    return out


def _group(rel: str) -> str | None:
    return next((g for g, files in EXPERIMENTS.items() if rel in files), None)


def test_imports_point_down_and_experiments_stand_side_by_side():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = str(path.relative_to(PKG))
        src = layer_of(rel)
        for line, tgt in imports(path):
            dst = layer_of(tgt)
            where = f"amnesiac/{rel}:{line} -> amnesiac/{tgt}"
            if dst > src:
                bad.append(f"{where} (layer {src} imports layer {dst})")
            elif dst == src == 2:
                a, b = SUBLAYER2[rel.split("/")[0]], SUBLAYER2[tgt.split("/")[0]]
                if b > a:
                    bad.append(f"{where} (inside layer 2 the order is metrics <- attacks <- unlearn)")
            elif dst == src == 4 and _group(rel) != _group(tgt):
                bad.append(f"{where} (experiments do not import each other)")
    assert not bad, "imports against docs/architecture.md:\n" + "\n".join(bad)


def test_every_module_has_a_layer_and_the_doc_names_the_rule():
    for path in PKG.rglob("*.py"):
        layer_of(str(path.relative_to(PKG)))
    doc = (PKG.parent / "docs" / "architecture.md").read_text()
    assert "imports point down" in doc.lower()
