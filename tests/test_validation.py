"""The one validator module: each kind of value, and settings checked where they are made."""

import math
from dataclasses import dataclass

import pytest

from ebm.validation import check_choice, check_float, check_int, setting, spec, validate_fields


@pytest.mark.parametrize("value", [True, 1.5, math.inf, math.nan, "3", None, 0, 11])
def test_check_int_refuses_what_is_not_an_integer_in_range(value):
    with pytest.raises(ValueError, match="count must be an integer in \\[1, 10\\]"):
        check_int("count", value, 1, 10)


def test_check_int_converts_whole_floats():
    assert check_int("count", 3.0, 1, 10) == 3 and type(check_int("count", 3.0, 1, 10)) is int


@pytest.mark.parametrize("value,ok", [(0.0, False), (1e-9, True), (1.0, False), (0.5, True), (math.nan, False),
                                      (math.inf, False), (True, False), ("0.5", False)])
def test_check_float_open_ends_exclude_their_bound(value, ok):
    if ok:
        assert check_float("p", value, 0.0, 1.0, low_open=True, high_open=True) == value
    else:
        with pytest.raises(ValueError, match=r"p must be a finite number in \(0, 1\)"):
            check_float("p", value, 0.0, 1.0, low_open=True, high_open=True)


def test_check_choice_is_exact():
    assert check_choice("start", "noise", ("noise", "data")) == "noise"
    for bad in ("Noise", "moon", 1):
        with pytest.raises(ValueError, match="start must be one of 'noise', 'data'"):
            check_choice("start", bad, ("noise", "data"))


@dataclass(frozen=True)
class Example:
    steps: int = setting(10, low=1, high=100, label="number of steps", help="how many")
    rate: float = setting(0.1, low=0.0, low_open=True)
    size: int | None = setting(None, low=1, optional=True)

    def __post_init__(self):
        validate_fields(self)


def test_settings_are_checked_when_made_and_name_their_label_and_field():
    assert Example(steps=5.0).steps == 5 and Example(size=3).size == 3
    with pytest.raises(ValueError, match=r"number of steps \(steps\) must be an integer in \[1, 100\]"):
        Example(steps=0)
    with pytest.raises(ValueError, match="rate must be a finite number"):
        Example(rate=0.0)


def test_spec_gives_forms_the_same_bounds_and_labels():
    s = spec(Example, "steps")
    assert (s.kind, s.low, s.high, s.label, s.help) == ("int", 1, 100, "number of steps", "how many")
    assert spec(Example(), "rate").low_open
    with pytest.raises(KeyError):
        spec(Example, "nothing")
