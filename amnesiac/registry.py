"""Plain-dict registries filled by a tiny decorator; `amnesiac ls` prints them."""
from __future__ import annotations

from typing import Any, Callable

REGISTRIES: dict[str, dict[str, Any]] = {}


def registry(kind: str) -> dict[str, Any]:
    return REGISTRIES.setdefault(kind, {})


def register(kind: str, name: str | None = None) -> Callable[[Any], Any]:
    """`@register("metrics")` adds the decorated object under its (or the given) name."""

    def deco(obj: Any) -> Any:
        key = (name or getattr(obj, "name", None) or obj.__name__).lower()
        table = registry(kind)
        if key in table and table[key] is not obj:
            raise ValueError(f"{kind!r} already has an entry named {key!r}")
        table[key] = obj
        return obj

    return deco


def lookup(kind: str, name: str) -> Any:
    table = registry(kind)
    key = name.lower()
    if key not in table:
        raise KeyError(f"unknown {kind[:-1] if kind.endswith('s') else kind} {name!r}; available: {', '.join(sorted(table)) or '(none)'}")
    return table[key]

