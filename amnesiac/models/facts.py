"""Which real-world facts a model knows, and the forget / retain / utility split of the known ones
(`amnesiac models facts`; the facts and their scoring are amnesiac/data/facts)."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

from ..data.facts import FactsConfig, category_counts, known_facts, load_facts, split_facts, write_splits


def probe_facts(model: str | Path, facts: str | Path | None = None, config: FactsConfig | None = None,
                out: str | Path | None = None, device: str = "auto", overwrite: bool = False) -> dict:
    """Greedy answers of `model` to every fact (the built-in set, or a facts JSONL), the known ones split per
    `config`, written to `out` (a folder amnesiac claims: never the model, never a foreign folder) when given.

    Returns {"categories": [(category, known, total), …, ("all", …)], "splits": {split: items}, "known": items,
    "wall_s": generation seconds}."""
    from ..io import claim_output
    from .load import check_device, check_model_dir, load_model

    cfg = config or FactsConfig()
    check_device(device), check_model_dir(model)
    items = load_facts(facts)
    claim = (claim_output(Path(out), [x for x in (model, facts) if x is not None], overwrite=overwrite, kind="facts")
             if out else contextlib.nullcontext())
    with claim:
        m, tok = load_model(model, device=device)
        t0 = time.time()
        known, outs, ok = known_facts(m, tok, items, batch_size=cfg.batch_size)
        wall = time.time() - t0
        splits = split_facts(known, forget=cfg.forget, utility=cfg.utility, seed=cfg.seed)
        if out:
            write_splits(claim.begin(), known, splits, items, outs)  # a temp sibling of out, swapped in at the end
    return {"categories": category_counts(items, ok), "splits": splits, "known": known, "wall_s": wall}
