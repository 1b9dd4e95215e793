"""Checks of option values, shared by the config dataclasses (``ModelConfig``, ``TrainOptions``).

The dataclasses are the one source of every option's default and of its validation: the
CLI passes on only the options a user set, and a bad value fails in ``__post_init__`` with
one line naming the option as the command line spells it, from Python as from the shell.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable
from typing import Any

from smcli.errors import UsageError


def option_name(field: str) -> str:
    """The command-line spelling of a config field: ``inst_dim`` -> ``--inst-dim``."""
    return "--" + field.replace("_", "-")


def fail(field: str, value: Any, problem: str) -> None:
    raise UsageError(f"{option_name(field)} {value}: {problem}")


def check_types(obj: Any) -> None:
    """Every field holds a value of its annotated type (int for float is fine; bool is not int)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        ok = False
        for t in allowed:
            if t is type(None):
                ok |= value is None
            elif t is bool:
                ok |= isinstance(value, bool)
            elif t is int:
                ok |= isinstance(value, int) and not isinstance(value, bool)
            elif t is float:  # NaN and inf are never a setting (a NaN must never rank)
                ok |= isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            else:
                ok |= isinstance(value, t)
        if not ok:
            names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
            fail(f.name, repr(value), f"must be {names}" + (" (finite)" if float in allowed else ""))


def choice(obj: Any, field: str, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if getattr(obj, field) not in choices:
        fail(field, getattr(obj, field), f"choose one of {', '.join(map(str, choices))}")


def at_least(obj: Any, lowest: float, *fields: str) -> None:
    for field in fields:
        if getattr(obj, field) < lowest:
            fail(field, getattr(obj, field), f"must be at least {lowest:g}")


def fraction(obj: Any, *fields: str) -> None:
    """A dropout probability: 0 <= p < 1."""
    for field in fields:
        if not 0.0 <= getattr(obj, field) < 1.0:
            fail(field, getattr(obj, field), "must be in [0, 1)")


def defaults(cls) -> dict[str, Any]:
    """field -> default of a config dataclass (what ``--help`` shows)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def given(**values: Any) -> dict[str, Any]:
    """The options a user set: those that are not None (timm's ``create_model`` rule: an
    unset flag never overrides a default)."""
    return {k: v for k, v in values.items() if v is not None}
