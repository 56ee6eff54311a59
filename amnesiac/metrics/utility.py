"""General utility of any in-memory model (target, unlearned, or an attacked copy) through lm-evaluation-harness.

Unlearning trades recall of the forget set against general ability; the forget/retain metrics do not say what a
method costs on tasks it was never tuned for (the seed paper reports MMLU / TruthfulQA / TriviaQA;
open-unlearning runs lm-evaluation-harness). `utility(model, tok, ["mmlu", "triviaqa"])` runs the harness on the
model object itself (`HFLM(pretrained=model)`), so a quantized or relearned copy is measured exactly as the
attack left it, with no save/reload.

Offline: the harness's datasets must already be in the local caches (`HF_DATASETS_OFFLINE` / `HF_HUB_OFFLINE`
are set while it runs); local tasks (a YAML over a JSON file) are passed with `task_dirs`. lm-eval is an
optional extra: `pip install 'amnesiac[utility]'`.
"""
from __future__ import annotations

import contextlib
import difflib
import os
import random
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from .base import MetricResult

INSTALL_HINT = "pip install 'amnesiac[utility]' (or pip install lm-eval)"


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise UserError(f"general utility runs lm-evaluation-harness, which is not installed ({e})", INSTALL_HINT) from None
    return lm_eval, HFLM, TaskManager


def _task_names(tasks) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise UserError("no utility task given", "name lm-evaluation-harness tasks, e.g. mmlu,triviaqa")
    return list(dict.fromkeys(names))


def task_manager(tasks: Sequence[str], task_dirs=None):
    """A TaskManager that knows every name in `tasks`, or a UserError naming the unknown ones with the
    available ones. Indexing lm-eval's ~15 000 built-in task YAMLs takes ~10 s, so tasks that all live in
    `task_dirs` are served from an index of those folders alone."""
    _, _, TaskManager = _lm_eval()
    dirs = [Path(d).expanduser() for d in ([task_dirs] if isinstance(task_dirs, (str, os.PathLike)) else task_dirs or [])]
    for d in dirs:
        if not d.exists():
            raise UserError(f"utility task folder {d} does not exist", "pass a folder (or file) of lm-eval task YAMLs")
    dirs = [str(d) for d in dirs]
    if dirs:
        local = TaskManager(include_path=dirs, include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    tm = TaskManager(include_path=dirs or None)
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        mine = sorted(TaskManager(include_path=dirs, include_defaults=False).all_tasks) if dirs else []
        close = sorted({c for t in unknown for c in difflib.get_close_matches(t, tm.all_tasks, n=3, cutoff=0.75)})
        avail = (f"available in {', '.join(dirs)}: {', '.join(mine[:20]) or 'none'}; " if dirs else "available: ")
        raise UserError(f"unknown lm-evaluation-harness task(s): {', '.join(unknown)}",
                        f"{avail}{'close: ' + ', '.join(close) + '; ' if close else ''}all {len(tm.all_tasks)} "
                        "built-in names: `lm-eval ls tasks` (e.g. mmlu, triviaqa, truthfulqa_mc2, hellaswag, arc_easy)")
    return tm


@contextlib.contextmanager
def _offline():
    """No network while the harness runs: datasets and huggingface_hub read their offline flags once at import,
    so the module attributes are set along with the environment, and everything is restored afterwards."""
    import importlib

    env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    flags = []
    for mod in ("huggingface_hub.constants", "datasets.config"):
        with contextlib.suppress(ImportError):
            m = importlib.import_module(mod)
            if hasattr(m, "HF_HUB_OFFLINE"):
                flags.append((m, m.HF_HUB_OFFLINE))
    try:
        os.environ.update({k: "1" for k in env})
        for m, _ in flags:
            m.HF_HUB_OFFLINE = True
        yield
    finally:
        for k, v in env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        for m, v in flags:
            m.HF_HUB_OFFLINE = v


@contextlib.contextmanager
def _caller_state(model):
    """simple_evaluate reseeds random / numpy / torch: give the caller its generators (and its model's
    train/eval mode) back, so a utility column does not change what the next attack draws."""
    import numpy as np
    import torch

    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])
        model.train(was_training)


def utility(model, tokenizer, tasks: Sequence[str] | str, limit: float | None = None, batch_size: int | str = 8,
            task_dirs=None, num_fewshot: int | None = None, bootstrap_iters: int = 1000,
            offline: bool = True) -> dict[str, MetricResult]:
    """{task: MetricResult} for each lm-evaluation-harness task (or group, e.g. mmlu) run on `model`.

    value: the task's first metric (its metric_list order; acc for multiple choice), per_example: that metric
    per document (doc_id order; a group's subtasks one after another), meta: every metric with its stderr,
    the sample count, few-shot count, task version and lm-eval version. limit: documents per task (an int,
    or a fraction), for a quick look; report it with the numbers. bootstrap_iters: resamples for the
    stderr of non-mean metrics (lm-eval's 100 000 costs minutes per task and only feeds meta)."""
    from ..errors import check_number

    lm_eval, HFLM, _ = _lm_eval()
    names = _task_names(tasks)
    check_number("limit", limit, gt=0, optional=True)
    check_number("num_fewshot", num_fewshot, ge=0, integer=True, optional=True)
    if batch_size != "auto":
        check_number("batch_size", batch_size, ge=1, integer=True)
    tm = task_manager(names, task_dirs)
    with _caller_state(model), (_offline() if offline else contextlib.nullcontext()):
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        try:
            out = lm_eval.simple_evaluate(model=lm, tasks=names, limit=limit, num_fewshot=num_fewshot,
                                          task_manager=tm, log_samples=True, bootstrap_iters=bootstrap_iters)
        except (ConnectionError, OSError, FileNotFoundError) as e:
            # the usual offline failure: a built-in task whose dataset was never downloaded here
            raise UserError(f"utility tasks {', '.join(names)}: a dataset is not available offline "
                            f"({' '.join(str(e).split())[:300]})",
                            "on a machine with internet run the task once (lm-eval run --tasks NAME …) or "
                            "datasets.load_dataset(<its dataset_path>), then copy ~/.cache/huggingface (HF_HOME) "
                            "here") from None
    return {t: _result(t, out, limit, lm_eval.__version__) for t in names}


def _leaves(task: str, out: dict) -> list[str]:
    """A group's leaf tasks (depth-first), or the task itself."""
    subs = out.get("group_subtasks", {}).get(task)
    if not subs:
        return [task]
    return [leaf for s in subs for leaf in _leaves(s, out)]


def _result(task: str, out: dict, limit, version: str) -> MetricResult:
    res = out["results"].get(task) or out.get("groups", {}).get(task) or {}
    metrics = {k: float(v) for k, v in res.items()
               if "," in k and "_stderr" not in k and isinstance(v, (int, float))}
    if not metrics:
        raise UserError(f"utility task {task!r}: lm-eval returned no metric", "check the task's metric_list")
    stderr = {k.replace("_stderr", ""): (float(v) if isinstance(v, (int, float)) else None)
              for k, v in res.items() if "_stderr," in k}
    primary = next(iter(metrics))  # groups: their first aggregate; tasks: first in metric_list (below)
    cfg = out.get("configs", {}).get(task) or {}
    if cfg.get("metric_list"):
        first = cfg["metric_list"][0]["metric"]
        primary = next((k for k in metrics if k.split(",")[0] == first), primary)
    metric = primary.split(",")[0]
    leaves = _leaves(task, out)
    per = [s.get(metric) for leaf in leaves
           for s in sorted(out.get("samples", {}).get(leaf, []), key=lambda s: s.get("doc_id", 0))]
    hib = (out.get("higher_is_better", {}).get(task) or {}).get(metric, True)
    n = out.get("n-samples", {})
    meta = {"task": task, "metric": primary, "metrics": metrics, "stderr": stderr,
            "n": sum(n.get(leaf, {}).get("effective", 0) for leaf in leaves),
            "limit": limit, "num_fewshot": out.get("n-shot", {}).get(task),
            "task_version": out.get("versions", {}).get(task), "lm_eval_version": version}
    if len(leaves) > 1:
        meta["subtasks"] = {leaf: out["results"].get(leaf, {}).get(primary) for leaf in leaves}
    return MetricResult(f"utility/{task}", metrics[primary], per, bool(hib if hib is not None else True), meta)
