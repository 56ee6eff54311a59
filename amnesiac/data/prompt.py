"""Prompt formats: how a question becomes the text a model sees and how its answer follows it.

One `PromptFormat` is chosen per run and used for every prompt of it: the unlearning loss, the early-stop
monitor, every measurement, every attack (relearning data, in-context and paraphrase prompts, probes).

- plain (the default): `template.format(question=q)`, default "Question: {question}\\nAnswer:"; the answer
  follows after one space (" Paris").
- chat: the tokenizer's own chat template around one user message (`template` shapes that message,
  default the bare question), after an optional system message, with the generation prompt. It is rendered
  once per tokenizer with a sentinel in place of the message and turned into a format string
  (`BoundFormat.template`), so every path that builds prompts from a template keeps working. The answer
  follows with whatever the chat template itself writes between the generation prompt and an assistant
  message (measured by rendering one: "" for ChatML and Llama-3, " " for Llama-2's [INST]).

A leading BOS that a chat template writes as text is dropped when the tokenizer adds one itself
(core.logprobs.special_prefix), so the model sees exactly one. Completion facts (data.schema.is_completion)
are prompted verbatim whatever the format.
"""
from __future__ import annotations

import string
from dataclasses import dataclass, field

from ..errors import UserError

QA_TEMPLATE = "Question: {question}\nAnswer:"
CHAT_USER_TEMPLATE = "{question}"  # the user message inside a chat template: the bare question
_SENTINEL = "AMNESIAC7QUESTION7SENTINEL"  # no braces, no spaces: survives |trim and is escaped by nothing
_ANSWER_SENTINEL = "AMNESIAC7ANSWER7SENTINEL"


def _check_template(template: str) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise UserError(f"--template {template!r}: {e}", "write {{ and }} for literal braces") from None
    unknown = sorted({f for f in fields if f != "question"})
    if unknown:
        raise UserError(f"--template {template!r} has unknown field(s) {', '.join('{' + f + '}' for f in unknown)}",
                        "available: {question}")
    if "question" not in fields:
        raise UserError(f"--template {template!r} has no {{question}} placeholder", "add {question} where the question goes")


def _is_completion(item) -> bool:
    return item.extra.get("format") == "completion"


@dataclass(frozen=True)
class PromptFormat:
    """What a run prompts with; `bind(tok)` renders it for one tokenizer. None template: the default of the mode."""
    template: str | None = None
    chat_template: bool = False
    system_prompt: str | None = None

    def __post_init__(self):
        if self.template is not None:
            _check_template(self.template)
        if self.system_prompt is not None and not self.chat_template:
            raise UserError("--system-prompt needs --chat-template (a system message exists only in a chat template)",
                            "add --chat-template, or put the instruction into --template")

    @classmethod
    def of(cls, template: str | None = None, chat_template: bool = False,
           system_prompt: str | None = None) -> "PromptFormat":
        """From command-line values: a typed backslash-n ("\\n" in a shell string) is a newline."""
        def unescape(s):
            return None if s is None else s.replace("\\n", "\n")
        return cls(unescape(template), bool(chat_template), unescape(system_prompt))

    @classmethod
    def from_record(cls, rec: dict | None) -> "PromptFormat":
        """The format a JSON output recorded (record()); None or {} → the default format."""
        rec = rec or {}
        return cls(rec.get("template"), bool(rec.get("chat_template", False)), rec.get("system_prompt"))

    @property
    def user_template(self) -> str:
        return self.template if self.template is not None else (CHAT_USER_TEMPLATE if self.chat_template else QA_TEMPLATE)

    @property
    def is_default(self) -> bool:
        return self.record() == PromptFormat().record()

    def record(self) -> dict:
        """The format as written into every JSON output (`prompt_format`), explicit defaults included."""
        return {"template": self.user_template, "chat_template": self.chat_template, "system_prompt": self.system_prompt}

    def same_as(self, other: "PromptFormat") -> bool:
        return self.record() == other.record()

    def describe(self) -> str:
        if not self.chat_template:
            return f"--template {self.user_template!r}"
        return "--chat-template" + (f" --template {self.template!r}" if self.template is not None else "") + \
            (f" --system-prompt {self.system_prompt!r}" if self.system_prompt is not None else "")

    def bind(self, tok) -> "BoundFormat":
        """This format rendered for tokenizer `tok` (a chat template is applied once, here)."""
        if not self.chat_template:
            return BoundFormat(self, self.user_template, " ", tok)
        template, sep = _render_chat(self, tok)
        return BoundFormat(self, template, sep, tok)

    def render(self, question: str, tok) -> str:
        return self.bind(tok).prompt(question)


DEFAULT_FORMAT = PromptFormat()


def as_format(fmt) -> PromptFormat:
    """None → the default, a str → a plain template, a PromptFormat as is (the measuring layer's argument)."""
    if fmt is None:
        return DEFAULT_FORMAT
    if isinstance(fmt, str):
        return PromptFormat(fmt)
    if isinstance(fmt, (PromptFormat, BoundFormat)):
        return fmt if isinstance(fmt, PromptFormat) else fmt.fmt
    raise TypeError(f"expected a PromptFormat or a template string, got {type(fmt).__name__}")


def bind(fmt, tok) -> "BoundFormat":
    """`fmt` (PromptFormat, template str, BoundFormat or None) bound to `tok`."""
    if isinstance(fmt, BoundFormat) and fmt.tok is tok:
        return fmt
    return as_format(fmt).bind(tok)


def _model_name(tok) -> str:
    return getattr(tok, "name_or_path", "") or type(tok).__name__


def _apply(fmt: PromptFormat, tok, messages: list[dict], generation: bool) -> str:
    msgs = ([{"role": "system", "content": fmt.system_prompt}] if fmt.system_prompt is not None else []) + messages
    try:
        text = tok.apply_chat_template(msgs, add_generation_prompt=generation, tokenize=False)
    except Exception as e:  # jinja raises on roles a template refuses (many refuse "system")
        if fmt.system_prompt is not None:
            raise UserError(f"the chat template of {_model_name(tok)} fails with a system message: {' '.join(str(e).split())}",
                            "drop --system-prompt (or put the instruction into --template)") from None
        raise UserError(f"the chat template of {_model_name(tok)} fails: {' '.join(str(e).split())}",
                        "use --template instead of --chat-template") from None
    if not isinstance(text, str):
        raise UserError(f"the chat template of {_model_name(tok)} did not render text (got {type(text).__name__})")
    return _drop_text_bos(text, tok)


def _drop_text_bos(text: str, tok) -> str:
    """A BOS written as text by the chat template, dropped when the tokenizer adds its own (one BOS, not two)."""
    from ..core.logprobs import special_prefix

    bos = getattr(tok, "bos_token", None)
    if bos and text.startswith(bos) and getattr(tok, "bos_token_id", None) in special_prefix(tok):
        return text[len(bos):]
    return text


def _render_chat(fmt: PromptFormat, tok) -> tuple[str, str]:
    if not getattr(tok, "chat_template", None):
        raise UserError(f"the tokenizer of {_model_name(tok)} has no chat template",
                        "use --template (e.g. --template 'User: {question}\\nAssistant:') instead of --chat-template")
    gen = _apply(fmt, tok, [{"role": "user", "content": _SENTINEL}], generation=True)
    if gen.count(_SENTINEL) != 1:
        raise UserError(f"the chat template of {_model_name(tok)} does not show the user message verbatim once",
                        "use --template instead of --chat-template")
    head, tail = gen.split(_SENTINEL)
    esc = lambda s: s.replace("{", "{{").replace("}", "}}")  # noqa: E731
    template = esc(head) + fmt.user_template + esc(tail)
    # the separator: what the template writes between the generation prompt and the assistant's text
    full = _apply(fmt, tok, [{"role": "user", "content": _SENTINEL},
                             {"role": "assistant", "content": _ANSWER_SENTINEL}], generation=False)
    sep = ""
    if full.startswith(gen) and _ANSWER_SENTINEL in full:
        between = full[len(gen): full.index(_ANSWER_SENTINEL)]
        sep = between if not between.strip() else ""  # whitespace only; a template's own tags are not answer text
    return template, sep


@dataclass(frozen=True, eq=False)
class BoundFormat:
    """A format rendered for one tokenizer: `template` holds {question} (and nothing else to fill)."""
    fmt: PromptFormat
    template: str
    sep: str  # between the prompt and the answer text
    tok: object = field(repr=False, default=None)

    def prompt(self, question: str) -> str:
        return self.template.format(question=question)

    def answer(self, text: str) -> str:
        """An answer as scored and trained: a continuation of the prompt."""
        return self.sep + text.strip()

    def item_prompt(self, item) -> str:
        """Completion facts verbatim, QA items through the format."""
        return item.question if _is_completion(item) else self.prompt(item.question)

    def item_answer(self, item, text: str) -> str:
        return " " + text.strip() if _is_completion(item) else self.answer(text)

    def few_shot(self, shots: list[tuple[str, str]], question: str) -> str:
        """In-context examples then the question: plain formats concatenate "prompt answer\\n\\n" blocks (MUSE
        KnowMem's layout); chat formats render them as earlier user/assistant turns."""
        if not self.fmt.chat_template:
            return "".join(f"{self.prompt(q)}{self.answer(a)}\n\n" for q, a in shots) + self.prompt(question)
        user = self.fmt.user_template
        msgs = [m for q, a in shots for m in ({"role": "user", "content": user.format(question=q)},
                                             {"role": "assistant", "content": a.strip()})]
        return _apply(self.fmt, self.tok, msgs + [{"role": "user", "content": user.format(question=question)}], True)

    def record(self) -> dict:
        """record() of the format plus what it renders to for this tokenizer."""
        return {**self.fmt.record(), "rendered": self.template, "answer_prefix": self.sep}


def recorded_format(model) -> tuple[PromptFormat | None, str | None]:
    """The format recorded in an unlearned model's unlearn.json (amnesiac unlearn writes it), and that file."""
    import json
    from pathlib import Path

    if not isinstance(model, (str, Path)):
        return None, None
    rec = Path(model) / "unlearn.json"
    if not rec.is_file():
        return None, None
    try:
        fmt = json.loads(rec.read_text(encoding="utf-8")).get("prompt_format")
    except (OSError, ValueError, AttributeError):
        return None, None
    return (PromptFormat.from_record(fmt), str(rec)) if isinstance(fmt, dict) else (None, None)


def resolve_format(asked: PromptFormat, explicit: bool, model) -> PromptFormat:
    """The format to measure `model` in: the one its unlearn.json records unless options were given (`explicit`);
    given options that differ from the recorded format are refused (a model measured off the format it was
    unlearned in looks like it forgot)."""
    trained, where = recorded_format(model)
    if trained is None:
        return asked
    if not explicit:
        return trained
    if not asked.same_as(trained):
        raise UserError(f"{model} was unlearned with prompt format {trained.describe()} ({where}) but "
                        f"{asked.describe()} was asked for",
                        "drop --template/--chat-template/--system-prompt to use the recorded format")
    return asked


@dataclass
class PromptOptions:
    """The prompt-format fields every config that builds prompts carries (one option set on every verb)."""
    template: str | None = field(default=None, metadata={"help": "QA prompt template with a {question} placeholder "
                                 "(default 'Question: {question}\\nAnswer:'; with --chat-template: the user message, "
                                 "default the bare question)"})
    chat_template: bool = field(default=False, metadata={"help": "wrap each question in the tokenizer's chat template "
                                "(user message + generation prompt)"})
    system_prompt: str | None = field(default=None, metadata={"help": "system message before the question "
                                      "(needs --chat-template)"})

    def prompt_format(self) -> PromptFormat:
        return PromptFormat.of(self.template, self.chat_template, self.system_prompt)

    def prompt_explicit(self) -> bool:
        """Whether any prompt option was given (else a recorded format may be used)."""
        return self.template is not None or bool(self.chat_template) or self.system_prompt is not None
