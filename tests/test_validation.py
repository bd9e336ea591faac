"""The one validator module: each kind of value, and settings checked where they are made."""

import argparse
import dataclasses
import math
from dataclasses import dataclass

import pytest

from ebm.models import AutoencoderConfig, EnergyConfig
from ebm.training import TrainConfig
from ebm.validation import Settings, Spec, argparse_type, check_choice, check_float, check_int, setting, spec


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
class Example(Settings):
    steps: int = setting(10, low=1, high=100, label="number of steps", help="how many")
    rate: float = setting(0.1, low=0.0, low_open=True)
    size: int | None = setting(None, low=1, optional=True)


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


def test_a_forms_range_defaults_to_the_settings_and_must_lie_inside_it():
    assert spec(Example, "steps").form_range == (1, 100)
    s = Spec("int", low=1, high=100, ui_low=2, ui_high=50)
    assert s.form_range == (2, 50)
    for low, high in ((0, 50), (2, 101), (60, 50)):
        with pytest.raises(ValueError, match="a form's range"):
            Spec("int", low=1, high=100, ui_low=low, ui_high=high)


def test_a_flag_is_parsed_and_checked_by_its_settings_spec():
    steps = argparse_type(spec(Example, "steps"), "steps")
    assert steps("7") == 7
    for text, words in (("0", r"number of steps \(steps\) must be an integer in \[1, 100\]"),
                        ("1.5", "number of steps must be an integer, got '1.5'"), ("x", "must be an integer")):
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            steps(text)
    assert argparse_type(spec(Example, "size"), "size")("None") is None  # optional: None is a value
    assert argparse_type(spec(Example, "rate"), "rate")("1e-3") == 1e-3
    with pytest.raises(argparse.ArgumentTypeError, match="rate must be a finite number"):
        argparse_type(spec(Example, "rate"), "rate")("inf")


def test_train_config_declares_every_field_once_and_is_checked_when_made():
    for f in dataclasses.fields(TrainConfig):
        s = spec(TrainConfig, f.name)
        assert s.label, f.name  # the Train page and --help name it
        default = getattr(TrainConfig(), f.name)
        if s.kind != "choice" and default is not None:  # the form can show the default
            low, high = s.form_range
            assert low <= default <= high, f.name
    with pytest.raises(ValueError, match=r"Learning rate \(ae_lr\) must be a finite number in \(0"):
        TrainConfig(ae_lr=0.0)
    with pytest.raises(ValueError, match=r"reinit_prob\) must be a finite number in \[0, 1\]"):
        TrainConfig(reinit_prob=1.5)
    with pytest.raises(dataclasses.FrozenInstanceError):  # checked once: it cannot change afterwards
        TrainConfig().ae_lr = -1.0
    assert TrainConfig(latent_dim=4.0).latent_dim == 4 and type(TrainConfig(latent_dim=4.0).latent_dim) is int


def test_model_configs_refuse_what_a_file_cannot_be_allowed_to_allocate():
    with pytest.raises(ValueError, match=r"hidden_dim must be an integer in \[1, 4096\]"):
        AutoencoderConfig(hidden_dim=10**6)
    with pytest.raises(ValueError, match=r"num_layers must be an integer in \[1, 16\]"):
        EnergyConfig(num_layers=17)
    with pytest.raises(ValueError, match="tilt_sigma must be a finite number"):
        EnergyConfig(tilt_sigma=0.0)
