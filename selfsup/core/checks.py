"""Range and choice checks of configuration fields, in one place.

A config dataclass declares what each field allows in its annotation, and inherits
:class:`Checked`, whose ``__post_init__`` checks every field, so a dataclass built from YAML,
from ``--set`` or directly in Python is checked the same way::

    @dataclass
    class MoCoConfig(Checked):
        section: ClassVar[str] = "mocov1"
        temperature: Positive = 0.07          # > 0
        momentum: UnitInterval = 0.999        # in [0, 1]
        loss: Literal["infonce", "dcl"] = "infonce"

A bad value raises :class:`~selfsup.core.errors.ConfigError` with one line naming the field,
the value and what is allowed: ``mocov1.temperature must be > 0, got -1.0``. Checks that
involve several fields stay in the dataclass's own ``__post_init__`` (after ``super()``'s).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from selfsup.core.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Allowed numbers: ``gt`` / ``ge`` lower bound (exclusive / inclusive), ``lt`` / ``le`` upper."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def contains(self, value: float) -> bool:
        return not (
            (self.gt is not None and not value > self.gt)
            or (self.ge is not None and not value >= self.ge)
            or (self.lt is not None and not value < self.lt)
            or (self.le is not None and not value <= self.le)
        )

    def describe(self) -> str:
        """``> 0``, ``>= 1``, ``in [0, 1]``, ``in (0, 1]``, ``< 3`` ..."""
        low = f"{self.gt:g}" if self.gt is not None else None if self.ge is None else f"{self.ge:g}"
        high = f"{self.lt:g}" if self.lt is not None else None if self.le is None else f"{self.le:g}"
        if low is not None and high is not None:
            return f"in {'(' if self.gt is not None else '['}{low}, {high}{')' if self.lt is not None else ']'}"
        if low is not None:
            return f"{'>' if self.gt is not None else '>='} {low}"
        return f"{'<' if self.lt is not None else '<='} {high}"


Positive = Annotated[float, Range(gt=0)]
NonNegative = Annotated[float, Range(ge=0)]
UnitInterval = Annotated[float, Range(ge=0, le=1)]
Fraction = Annotated[float, Range(gt=0, le=1)]
PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]


def check_range(where: str, value: Any, allowed: Range) -> None:
    """Raise a one-line ConfigError unless ``value`` (a number, or every number of a list) is allowed."""
    values = value if isinstance(value, list | tuple) else [value]
    if any(isinstance(v, int | float) and not isinstance(v, bool) and not allowed.contains(v) for v in values):
        shown = list(value) if isinstance(value, tuple) else value
        raise ConfigError(f"{where} must be {allowed.describe()}, got {shown}")


def check_choice(where: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise a one-line ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")


def _unwrap_optional(tp: Any) -> Any:
    """``X | None`` -> ``X``; other annotations unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def choices_of(tp: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal[...]`` annotation (also inside Annotated / Optional), else None."""
    tp = _unwrap_optional(tp)
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    return None


def ranges_of(tp: Any) -> list[Range]:
    """The Range constraints of an ``Annotated[...]`` annotation, also inside Optional or as the
    element type of a tuple (``tuple[Positive, Positive]``); empty for others."""
    tp = _unwrap_optional(tp)
    if typing.get_origin(tp) is tuple:
        return [r for arg in typing.get_args(tp) if arg is not Ellipsis for r in ranges_of(arg)][:1]
    if typing.get_origin(tp) is Annotated:
        return [m for m in tp.__metadata__ if isinstance(m, Range)]
    return []


def field_hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass's fields, ``Annotated`` metadata kept."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


class Checked:
    """Mixin of config dataclasses: every field's ``Literal`` choices and ``Range`` are checked
    on construction; error messages name the field as ``<section>.<field>``."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, tp in field_hints(type(self)).items():
            value = getattr(self, name)
            where = f"{self.section}.{name}" if self.section else name
            if value is None:
                continue
            choices = choices_of(tp)
            if choices is not None:
                check_choice(where, value, choices)
            for allowed in ranges_of(tp):
                check_range(where, value, allowed)
