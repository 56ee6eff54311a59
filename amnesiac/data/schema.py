"""One record type for QA data (TOFU field schema) and loaders with errors that name file, line and field."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

from .prompt import QA_TEMPLATE  # the default prompt format (data.prompt: templates and chat formats)


def qa_prompt(question: str, template: str = QA_TEMPLATE) -> str:
    return template.format(question=question)


def is_completion(item) -> bool:
    """Completion facts ("The capital of France is" → "Paris") are prompted verbatim, not as Q/A."""
    return item.extra.get("format") == "completion"


def item_prompt(item, template: str = QA_TEMPLATE) -> str:
    """The prompt a model sees for an item: completion facts verbatim, QA items through the template."""
    return item.question if is_completion(item) else qa_prompt(item.question, template)


def qa_answer(answer: str) -> str:
    """Answers are scored as continuations of the prompt, so they carry their leading space."""
    return " " + answer.strip()


@dataclass
class QAItem:
    question: str
    answer: str
    paraphrased_questions: list[str] = field(default_factory=list)
    paraphrased_answer: str | None = None
    perturbed_answers: list[str] = field(default_factory=list)
    person: str | None = None
    attribute: str | None = None
    options: list[str] = field(default_factory=list)  # multiple-choice sets (real authors, world facts)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """TOFU field names: `paraphrased_question` (str, or list when several), `perturbed_answer` (list)."""
        d: dict[str, Any] = {"question": self.question, "answer": self.answer}
        if self.paraphrased_questions:
            d["paraphrased_question"] = self.paraphrased_questions
        if self.paraphrased_answer is not None:
            d["paraphrased_answer"] = self.paraphrased_answer
        if self.perturbed_answers:
            d["perturbed_answer"] = self.perturbed_answers
        if self.person is not None:
            d["person"] = self.person
        if self.attribute is not None:
            d["attribute"] = self.attribute
        for i, o in enumerate(self.options, 1):
            d[f"option{i}"] = o
        d.update(self.extra)
        return d


class DataError(UserError):  # amnesiac.errors: one family, exit 2 in the CLI
    """Bad input data; the message names the file, the line and the field."""


def _where(path: Path, line: int | None) -> str:
    return f"{path}:{line}" if line is not None else str(path)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a .jsonl file")
    rows: list[dict[str, Any]] = []
    if path.suffix == ".gz":  # the shipped TOFU copy is gzip-compressed JSONL
        import gzip

        with gzip.open(path, "rt", encoding="utf-8") as fh:
            text = fh.read()
    else:
        text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array file is accepted too (many repos ship those)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        for i, r in enumerate(data, 1):
            if not isinstance(r, dict):
                raise DataError(f"{path}: element {i} is {type(r).__name__}, expected an object")
        rows = data
    else:
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(r, dict):
                raise DataError(f"{path}:{i}: expected a JSON object, got {type(r).__name__}")
            r["__line__"] = i
            rows.append(r)
    if not rows:
        raise DataError(f"{path}: empty file (no records)")
    return rows


def _str_field(r: dict, name: str, path: Path, required: bool = True) -> str | None:
    line = r.get("__line__")
    if name not in r or r[name] is None:
        if required:
            raise DataError(f"{_where(path, line)}: missing field {name!r} (has: {', '.join(k for k in r if k != '__line__')})")
        return None
    v = r[name]
    if not isinstance(v, str):
        raise DataError(f"{_where(path, line)}: field {name!r} must be a string, got {type(v).__name__}")
    return v


def _str_list(r: dict, name: str, path: Path) -> list[str]:
    line = r.get("__line__")
    v = r.get(name)
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise DataError(f"{_where(path, line)}: field {name!r} must be a string or a list of strings")
    return list(v)


_KNOWN = {"question", "answer", "paraphrased_question", "paraphrased_answer", "perturbed_answer",
          "person", "attribute", "__line__", "option1", "option2", "option3", "option4", "option5"}


def parse_qa(r: dict[str, Any], path: Path) -> QAItem:
    item = QAItem(
        question=_str_field(r, "question", path),
        answer=_str_field(r, "answer", path),
        paraphrased_questions=_str_list(r, "paraphrased_question", path),
        paraphrased_answer=_str_field(r, "paraphrased_answer", path, required=False),
        perturbed_answers=_str_list(r, "perturbed_answer", path),
        person=_str_field(r, "person", path, required=False),
        attribute=_str_field(r, "attribute", path, required=False),
        options=[r[f"option{i}"] for i in range(1, 6) if isinstance(r.get(f"option{i}"), str)],
        extra={k: v for k, v in r.items() if k not in _KNOWN},
    )
    if not item.answer.strip():
        raise DataError(f"{_where(path, r.get('__line__'))}: field 'answer' is empty")
    return item


def load_qa_jsonl(path: str | Path) -> list[QAItem]:
    """Generic QA JSONL (`question`/`answer` + optional TOFU fields). TOFU and bios use it as is."""
    path = Path(path)
    return [parse_qa(r, path) for r in read_jsonl(path)]


def load_text_jsonl(path: str | Path, field_name: str = "text") -> list[str]:
    """Raw text JSONL (`text`), e.g. MUSE privleak splits or pretraining corpora."""
    path = Path(path)
    return [_str_field(r, field_name, path) for r in read_jsonl(path)]


@dataclass
class VerbItem:
    prompt: str
    gt: str


def load_verbmem_jsonl(path: str | Path) -> list[VerbItem]:
    """MUSE verbmem layout: `prompt` / `gt`."""
    path = Path(path)
    return [VerbItem(_str_field(r, "prompt", path), _str_field(r, "gt", path)) for r in read_jsonl(path)]
