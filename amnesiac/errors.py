"""One exception family for everything amnesiac refuses or fails at, and the CLI's error boundary.

    AmnesiacError                 base; `exit_code` 1 (a run that could not finish, e.g. diverged)
    ├── UserError (ValueError)    bad input: options, paths, data, models — `exit_code` 2
    │   ├── DataError             (amnesiac.data.schema)  malformed data: file, line, field
    │   ├── ModelLoadError        (amnesiac.models.load)  no/bad/pickle model
    │   ├── BackendMissing        (amnesiac.attacks.quant.backends)  optional library not installed
    │   ├── UnlearnError          (amnesiac.unlearn.common)
    │   └── OutputError           --out refused: overlaps an input, not amnesiac's, locked, unwritable
    └── UnlearnDiverged           (amnesiac.unlearn.trainer)  non-finite loss, gradient or weights

Messages are one line, `<what> — <how to fix>`: the Python API raises them as they are and the CLI prints
them as `error: <message>` (exit 2 for a UserError, 1 otherwise). Anything outside the family is a bug:
the CLI prints one line and exits 1, with the traceback only under `--debug` (or AMNESIAC_DEBUG=1).
"""
from __future__ import annotations

import math
import numbers
import os
import sys
import traceback
import warnings


class AmnesiacError(Exception):
    """Base of every error amnesiac raises on purpose. `hint` (how to fix) is appended after ' — '."""
    exit_code = 1

    def __init__(self, what: str, hint: str | None = None):
        super().__init__(f"{what} — {hint}" if hint else what)


class UserError(AmnesiacError, ValueError):
    """Bad input (an option, a path, a data file, a model): the message says what to change."""
    exit_code = 2


class OutputError(UserError):
    """The output path is refused (overlaps an input, holds someone else's files, is locked or unwritable)."""


class AmnesiacWarning(UserWarning):
    """Something the user should know that does not stop the run (truncation, unchanged weights)."""


def warn(msg: str) -> None:
    warnings.warn(msg, AmnesiacWarning, stacklevel=2)


def one_line(msg: object) -> str:
    return " ".join(str(msg).split())


# ----- option checks (one vocabulary for every verb; raise UserError naming the option) -----

def check_number(name: str, value, *, gt=None, ge=None, lt=None, le=None, integer: bool = False,
                 optional: bool = False) -> None:
    """Raise UserError unless `value` is a finite number within the given bounds (None passes if optional)."""
    if value is None:
        if optional:
            return
        raise UserError(f"{name} is required")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or (integer and not isinstance(value, numbers.Integral)):
        raise UserError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value}", _range_hint(name, gt, ge, lt, le))
    bad = ((gt is not None and not value > gt) or (ge is not None and not value >= ge)
           or (lt is not None and not value < lt) or (le is not None and not value <= le))
    if bad:
        raise UserError(f"{name} = {value} is out of range", _range_hint(name, gt, ge, lt, le))


def _range_hint(name, gt, ge, lt, le) -> str:
    lo = f"> {gt}" if gt is not None else (f"≥ {ge}" if ge is not None else "")
    hi = f"< {lt}" if lt is not None else (f"≤ {le}" if le is not None else "")
    return f"use a value {' and '.join(x for x in (lo, hi) if x) or 'that is finite'}"


def check_choice(name: str, value, choices, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value not in choices:
        raise UserError(f"unknown {name} {value!r}", f"available: {', '.join(map(str, choices))}")


# ----- the CLI boundary -----

_debug = False


def set_debug(on: bool) -> None:
    global _debug
    _debug = bool(on)


def debug() -> bool:
    return _debug or os.environ.get("AMNESIAC_DEBUG", "") not in ("", "0")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    # CLI: an amnesiac warning is one `warning:` line; anything else keeps Python's format
    if issubclass(category, AmnesiacWarning):
        print(f"warning: {one_line(message)}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_cli(call) -> int:
    """Run `call()` (click's main with standalone_mode=False) and map what escapes to an exit code with
    one `error:` line on stderr. Returns the exit code."""
    import typer

    try:  # typer ≥ 0.2x vendors its own click: its exceptions are not click's
        from typer import _click as click
    except ImportError:  # pragma: no cover
        import click

    with warnings.catch_warnings():  # restores filters and showwarning afterwards
        warnings.simplefilter("always", AmnesiacWarning)  # every run says it, not only the first in a process
        warnings.showwarning = _show_warning
        return _run(call, click, typer)


def _run(call, click, typer) -> int:
    try:
        rv = call()
        return rv if isinstance(rv, int) else 0
    except click.exceptions.NoArgsIsHelpError:  # `amnesiac` / `amnesiac attack` alone: typer printed the help
        return 2
    except click.exceptions.UsageError as e:  # bad/missing option, BadParameter from a callback
        names, c = [], e.ctx
        while c is not None and c.parent is not None:  # the verb path, without how the program was started
            names.append(c.info_name)
            c = c.parent
        where = " ".join(["amnesiac", *reversed(names)])
        return _fail(f"{one_line(e.format_message())} — see `{where} --help`", 2)
    except typer.Abort:
        return _fail("aborted", 1)
    except click.exceptions.ClickException as e:
        return _fail(one_line(e.format_message()), e.exit_code)
    except AmnesiacError as e:
        if debug():
            traceback.print_exc()
        return _fail(one_line(e), e.exit_code)
    except (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError) as e:
        if debug():
            traceback.print_exc()
        return _fail(f"{one_line(e)} — check the path", 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as e:  # a bug: one line, the traceback behind --debug
        if debug():
            traceback.print_exc()
            return _fail(f"internal error: {type(e).__name__}: {one_line(e)}", 1)
        return _fail(f"internal error: {type(e).__name__}: {one_line(e)} — this is a bug; rerun with --debug "
                     "(or AMNESIAC_DEBUG=1) for the traceback and report it", 1)


def _fail(msg: str, code: int) -> int:
    print(f"error: {msg}", file=sys.stderr)
    sys.stderr.flush()
    return code
