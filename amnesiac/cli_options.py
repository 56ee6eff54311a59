"""CLI options generated from the config dataclasses: one source of truth for names, defaults, types and help.

A verb declares its own arguments (paths, data specs, flags that are not configuration) and lists the
config class(es) it runs; `config_command` turns every field of each class into a `--field-name` option
whose default is the field's default and whose help is the field's trailing comment (or
`field(metadata={"help": ...})`), then calls the verb with the built configs. So `amnesiac audit --help`
always shows exactly what `AuditConfig` accepts, and a new config field is a new option without editing
the CLI. Types: bool → --x/--no-x, int/float/str and their Optional forms as they are, list / tuple fields
as one comma-separated string (`--lrs 1e-4,3e-4`), parsed back to the field's element type.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from typing import Any, Callable, Optional

import typer


@functools.lru_cache(maxsize=None)
def field_help(cls) -> dict[str, str]:
    """Help text per field: metadata["help"], else the comment that ends the field's line in the source."""
    out: dict[str, str] = {}
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (frozen app): metadata only
        src = ""
    lines = src.splitlines()
    if src:
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                line = lines[node.lineno - 1]
                if "#" in line:
                    out[node.target.id] = line.split("#", 1)[1].strip()
    for f in dataclasses.fields(cls):
        if f.metadata.get("help"):
            out[f.name] = f.metadata["help"]
    return out


def _unwrap_optional(tp) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)) \
            and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else str), True
    return tp, False


def _is_sequence(tp) -> bool:
    return typing.get_origin(tp) in (list, tuple) or tp in (list, tuple)


def _element(tp):
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    return args[0] if args else str


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return ...


def _fmt(v) -> str:
    return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)


def config_params(cls, *, exclude: tuple[str, ...] = (), prefix: str = "") -> list[inspect.Parameter]:
    """One keyword parameter (a typer.Option) per public field of dataclass `cls`: the class's own fields first,
    then inherited ones (option groups shared by several configs, such as data.prompt.PromptOptions)."""
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    params = []
    own = set(inspect.get_annotations(cls))
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name not in own):
        if f.name.startswith("_") or f.name in exclude or not f.init:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        default = _default(f)
        help_ = helps.get(f.name, "")
        if _is_sequence(tp):  # a comma-separated string on the command line
            ann = Optional[str] if optional or default is None else str
            default = None if default is None else _fmt(default)
            help_ = (help_ + " " if help_ else "") + "(comma-separated)"
        elif tp is bool:
            ann = bool
        elif tp in (int, float, str):
            ann = Optional[tp] if optional else tp
        else:
            ann = Optional[str] if optional else str
            default = None if default is None else str(default)
        name = prefix + f.name
        opt = typer.Option(default, f"--{name.replace('_', '-')}" + (f"/--no-{name.replace('_', '-')}" if tp is bool else ""),
                           help=help_, show_default=True)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann))
    return params


def build_config(cls, values: dict[str, Any], prefix: str = "", **fixed):
    """cls(**fields) from parsed option values (comma strings back to lists/tuples of the element type)."""
    from .errors import UserError

    hints = typing.get_type_hints(cls)
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if key not in values:
            continue
        v = values[key]
        tp, _ = _unwrap_optional(hints[f.name])
        if _is_sequence(tp) and isinstance(v, str):
            el = _element(tp)
            try:
                items = [el(x.strip()) for x in v.split(",") if x.strip()]
            except ValueError:
                what = "numbers" if el in (int, float) else f"{el.__name__} values"
                raise UserError(f"--{key.replace('_', '-')}: expected comma-separated {what}, got {v!r}") from None
            v = tuple(items) if typing.get_origin(tp) is tuple or tp is tuple else items
        kw[f.name] = v
    kw.update(fixed)
    try:
        return cls(**kw)
    except TypeError as e:  # a wrong type that the option parser let through
        raise UserError(f"{cls.__name__}: {e}") from None


def config_command(app: typer.Typer, name: str, configs: dict[str, type], own: Callable, *,
                   exclude: dict[str, tuple[str, ...]] | None = None, fixed: dict[str, dict] | None = None):
    """Register verb `name`: its own parameters (from `own`'s signature) + every field of each config class.

    configs: {argument name passed to `own`: config class}; `own` receives its own parameters plus one built
    config per entry. exclude: fields left out of the options (set by the verb through `fixed` or derived
    from its own parameters, which it then passes itself)."""
    exclude = exclude or {}
    fixed = fixed or {}
    sig = inspect.signature(own)

    def resolved(ann):  # string annotations (from __future__ import annotations) in the verb module's names
        return eval(ann, own.__globals__) if isinstance(ann, str) else ann  # noqa: S307 (our own source)

    own_params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=resolved(p.annotation))
                  for p in sig.parameters.values() if p.name not in configs]
    generated: list[inspect.Parameter] = []
    seen = {p.name for p in own_params}
    for cls in configs.values():
        for p in config_params(cls, exclude=exclude.get(cls.__name__, ())):
            if p.name not in seen:  # a field shared by two configs (e.g. seed) is one option
                generated.append(p)
                seen.add(p.name)

    @functools.wraps(own)
    def command(**kwargs):
        built = {arg: build_config(cls, kwargs, **fixed.get(arg, {})) for arg, cls in configs.items()}
        return own(**{k: v for k, v in kwargs.items() if k in sig.parameters}, **built)

    command.configs, command.excluded = dict(configs), dict(exclude)  # type: ignore[attr-defined]  (tests/test_cli_options.py)
    command.__signature__ = inspect.Signature(own_params + generated)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in own_params + generated}
    return app.command(name)(command)
