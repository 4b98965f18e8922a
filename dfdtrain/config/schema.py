"""The config schema: how a config dataclass checks its values when it is built.

A ``Section`` is a dataclass whose fields are checked against their annotations as an instance is built
(``check_value``: types, ``Literal`` choices with the closest suggested, ``Range`` limits in ``Annotated`` types,
finite floats unless ``AllowInfinite()``), then against its own cross-field ``check``; ``build_section`` makes one
from a (partial) dict, refusing unknown keys with the close names. Every failure is a ``ConfigError``: one line
naming the key. ``one_of`` words the "must be one of" problem for a ``Literal`` and for a registry's names alike.
"""

import dataclasses
import difflib
import functools
import math
import types
import typing
from typing import Annotated, Literal, Optional

from dfdtrain.core.errors import DfdError

class ConfigError(DfdError, ValueError):
    """A config value that cannot work: ``path`` is the key (``data.batch_size``), the message says why."""

    def __init__(self, path, problem):
        self.path, self.problem = path, problem
        super().__init__(f"config key {path!r} {problem}" if path else f"config {problem}")


# ---------------------------------------------------------------------------------------------- value checks
@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed numeric range of a field, as ``Annotated[int, Range(1)]``; ``None`` leaves a side open."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_exclusive: bool = False

    def check(self, value, path):
        below = self.low is not None and (value <= self.low if self.low_exclusive else value < self.low)
        above = self.high is not None and value > self.high
        if below or above:
            raise ConfigError(path, f"must be {self.describe()}, not {value!r}")

    def describe(self):
        if self.low is not None and self.high is not None:
            return f"between {self.low:g} and {self.high:g}"
        return f"{'>' if self.low_exclusive else '>='} {self.low:g}" if self.low is not None else f"<= {self.high:g}"


@dataclasses.dataclass(frozen=True)
class AllowInfinite:
    """Marks a float field that may be +-infinity (``Annotated[float, AllowInfinite()]``), e.g. a limit where
    ``.inf`` means "none". Every other float field refuses infinity, and every float field refuses NaN."""


Count = Annotated[int, Range(1)]  # at least one
NonNegativeInt = Annotated[int, Range(0)]
NonNegative = Annotated[float, Range(0)]
Positive = Annotated[float, Range(0, low_exclusive=True)]
Fraction = Annotated[float, Range(0, 1)]


def _close_hint(value, choices):
    close = difflib.get_close_matches(str(value), [str(choice) for choice in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def one_of(value, names):
    """The problem of a ``value`` that is none of ``names`` (a ``Literal``'s values, or the entries of a registry a
    key names, in their order): "must be one of a, b, not 'x'", with the closest name suggested."""
    listed = ", ".join(str(name) for name in names)
    return f"must be one of {listed}, not {value!r}{_close_hint(value, names)}"


def check_value(value, hint, path, allow_infinite=False):
    """``value`` as the annotation ``hint`` wants it (ints become floats where floats are wanted, lists become
    tuples), or a ConfigError naming ``path``. A float is finite unless ``allow_infinite`` (the field's
    ``AllowInfinite()``); NaN never passes."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *constraints = typing.get_args(hint)
        infinite = allow_infinite or any(isinstance(constraint, AllowInfinite) for constraint in constraints)
        value = check_value(value, base, path, infinite)
        for constraint in constraints:
            if isinstance(constraint, Range):
                constraint.check(value, path)
        return value
    if origin is Literal:
        choices = typing.get_args(hint)
        if not isinstance(value, bool) and value in choices:
            return value
        raise ConfigError(path, one_of(value, choices))
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        return check_value(value, options[0], path, allow_infinite)
    if origin is tuple:
        kinds = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(kinds):
            raise ConfigError(path, f"must be a list of {len(kinds)} values, not {value!r}")
        return tuple(check_value(item, kind, f"{path}[{position}]")
                     for position, (item, kind) in enumerate(zip(value, kinds)))
    if hint is float:
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise ConfigError(path, f"must be a finite number, not an integer of {len(str(value))} digits") \
                    from None
        if not isinstance(value, float):
            raise ConfigError(path, f"must be a number, not {value!r}")
        if math.isnan(value) or (math.isinf(value) and not allow_infinite):
            raise ConfigError(path, f"must be a finite number, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"must be an integer, not {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"must be true or false, not {value!r}")
        return value
    if hint in (str, dict, list) and not isinstance(value, hint):
        raise ConfigError(path, f"must be a {hint.__name__}, not {value!r}")
    return value


@functools.cache
def _hints(cls):
    return typing.get_type_hints(cls, include_extras=True)


def choices(cls, name):
    """The allowed values of a ``Literal`` field, e.g. ``choices(ClipSpec, "crop")`` (for CLI flags)."""
    return typing.get_args(_hints(cls)[name])


class Section:
    """Base of every config dataclass: each field is checked against its annotation when an instance is built,
    then the section's own ``check`` runs (rules between its fields). ``SECTION`` is its key path, for messages."""

    SECTION = ""

    def key(self, name):
        return f"{self.SECTION}.{name}" if self.SECTION else name

    def __post_init__(self):
        hints = _hints(type(self))
        for field in dataclasses.fields(self):
            hint, value = hints[field.name], getattr(self, field.name)
            if dataclasses.is_dataclass(hint):
                if isinstance(value, dict):
                    value = build_section(hint, value, self.key(field.name))
                elif not isinstance(value, hint):
                    raise ConfigError(self.key(field.name), f"must be a mapping, not {value!r}")
            else:
                value = check_value(value, hint, self.key(field.name))
            setattr(self, field.name, value)
        self.check()

    def check(self):
        """Rules between this section's fields; raise ConfigError(self.key(name), problem)."""


def build_section(cls, values, path=None):
    """A Section from a (partial) dict, nested sections included; unknown keys are errors naming the key."""
    path = cls.SECTION if path is None else path
    if not isinstance(values, dict):
        raise ConfigError(path, f"must be a mapping, not {values!r}")
    names = [field.name for field in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise DfdError(f"unknown config key {where!r}{_close_hint(key, names)} (known: {', '.join(names)})")
    kwargs = {}
    for key, value in values.items():
        hint = _hints(cls)[key]
        if dataclasses.is_dataclass(hint):
            value = build_section(hint, value, f"{path}.{key}" if path else key)
        kwargs[key] = value
    return cls(**kwargs)
