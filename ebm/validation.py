"""One validator per kind of value, and settings that carry their own bounds.

A setting is declared once, as a dataclass field made by `setting(...)`: its default, its
range or choices, a label and a help text. The dataclass derives from `Settings`, whose
`__post_init__` calls `validate_fields(self)`, so a value is checked where it is made; the CLI's flags, the app's URL
parameters and its forms read the same bounds and labels (`spec(cls, name)`), so they
cannot drift from what the core accepts.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


def check_int(name: str, value: Any, low: float = -math.inf, high: float = math.inf) -> int:
    """`value` as an int in [low, high]; ValueError naming the setting otherwise (bools, fractions, inf, NaN too)."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or value != int(value) or not low <= value <= high):
        raise ValueError(f"{name} must be an integer in [{_bound(low)}, {_bound(high)}], got {value!r}")
    return int(value)


def check_float(name: str, value: Any, low: float = -math.inf, high: float = math.inf,
                low_open: bool = False, high_open: bool = False) -> float:
    """`value` as a finite float in the range (an open end excludes its bound); ValueError otherwise."""
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
          and (low < value if low_open else low <= value) and (value < high if high_open else value <= high))
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be a finite number in {left}{_bound(low)}, {_bound(high)}{right}, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence) -> Any:
    """`value` if it is one of `choices`; ValueError naming them otherwise."""
    if not any(value == c and type(value) is type(c) for c in choices):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _bound(x: float) -> str:
    return "∞" if x == math.inf else "-∞" if x == -math.inf else f"{x:g}"


@dataclass(frozen=True)
class Spec:
    """What values a setting takes, and how a form or a flag names it."""

    kind: str  # "int", "float" or "choice"
    low: float = -math.inf  # numbers: the range
    high: float = math.inf
    low_open: bool = False  # floats: the bound itself is excluded
    high_open: bool = False
    choices: tuple = ()  # "choice": the valid values
    optional: bool = False  # None is also valid (e.g. "all of them")
    label: str = ""  # what a form calls it
    help: str = ""  # one sentence for a tooltip or --help
    ui_low: float | None = None  # a form's narrower range (inside low..high), where the full one is no use there
    ui_high: float | None = None
    step: float | None = None  # a form's step, where the default one is not it

    def __post_init__(self):
        if not self.low <= (self.low if self.ui_low is None else self.ui_low) <= (
                self.high if self.ui_high is None else self.ui_high) <= self.high:
            raise ValueError(f"a form's range [{self.ui_low}, {self.ui_high}] must lie in [{self.low}, {self.high}]")

    @property
    def form_range(self) -> tuple[float, float]:
        """(lowest, highest) value a form offers: the ui_ bounds where given, else the setting's own."""
        return (self.low if self.ui_low is None else self.ui_low, self.high if self.ui_high is None else self.ui_high)

    def check(self, name: str, value: Any) -> Any:
        """The value, validated (ints and floats converted); ValueError naming `name` otherwise."""
        if value is None and self.optional:
            return None
        name = f"{self.label} ({name})" if self.label else name
        if self.kind == "choice":
            return check_choice(name, value, self.choices)
        if self.kind == "int":
            return check_int(name, value, self.low, self.high)
        return check_float(name, value, self.low, self.high, self.low_open, self.high_open)


    def parse(self, name: str, text: str) -> Any:
        """A command-line word as this setting's value; ValueError naming `name` otherwise."""
        if self.optional and text.lower() == "none":
            return None
        try:
            value = text if self.kind == "choice" else int(text) if self.kind == "int" else float(text)
        except ValueError:
            raise ValueError(f"{self.label or name} must be {'an integer' if self.kind == 'int' else 'a number'}, "
                             f"got {text!r}") from None
        return self.check(name, value)


def argparse_type(spec_: Spec, name: str) -> Callable[[str], Any]:
    """An argparse `type=` for a setting: the flag is checked against the same Spec as the value it makes."""
    def parse(text: str) -> Any:
        try:
            return spec_.parse(name, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = name  # argparse names the type in some messages
    return parse


def setting(default: Any, *, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
            high_open: bool = False, choices: Sequence = (), kind: str | None = None, optional: bool = False,
            label: str = "", help: str = "", ui_low: float | None = None, ui_high: float | None = None,
            step: float | None = None) -> Any:
    """A dataclass field whose metadata holds its `Spec`; the kind follows the default unless given."""
    if kind is None:
        kind = "choice" if choices else "int" if isinstance(default, int) and not isinstance(default, bool) else "float"
    spec_ = Spec(kind, low, high, low_open, high_open, tuple(choices), optional, label, help, ui_low, ui_high, step)
    return dataclasses.field(default=default, metadata={"spec": spec_})


def spec(cls_or_obj: Any, name: str) -> Spec:
    """The `Spec` of field `name` of a settings dataclass."""
    for f in dataclasses.fields(cls_or_obj):
        if f.name == name and "spec" in f.metadata:
            return f.metadata["spec"]
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


def validate_fields(obj: Any) -> None:
    """Check every `setting` field of a dataclass instance, storing the converted values (frozen ones too)."""
    for f in dataclasses.fields(obj):
        if "spec" in f.metadata:
            object.__setattr__(obj, f.name, f.metadata["spec"].check(f.name, getattr(obj, f.name)))


class Settings:
    """Base of settings dataclasses: their `setting` fields are checked (and converted) when an instance is made.

    Settings come from forms, URLs, the command line and file metadata; a check when made means a value
    that exists is valid, and nothing downstream checks it again (nor allocates an absurd model for it).
    """

    def __post_init__(self):
        validate_fields(self)
