"""Class-conditional sampling: the settings' checks, the composed energy's gradient, the latent
classifier's file (round trip, refusal for another model), λ = 0 as the prior bit for bit, the CLI flags."""

import json

import pytest
import torch

from ebm.checkpoint import WeightsError, load_model
from ebm.cli import main
from ebm.conditioning import (
    ClassSettings,
    class_energy,
    latent_classifier_path,
    load_latent_classifier,
    model_fingerprint,
    parse_digits,
    sample_classes,
    save_latent_classifier,
    train_latent_classifier,
)
from ebm.generate import SampleSettings, sample_chains


@pytest.fixture(scope="module")
def shipped():
    """The shipped model and its shipped latent classifier."""
    model, _ = load_model()
    return model, load_latent_classifier(latent_classifier_path("weights/mnist_d4.safetensors"), model)[0]


def test_digits_parse_and_bad_ones_are_refused():
    assert parse_digits("digits", "3,8") == (3, 8) and parse_digits("digits", " 8, 3 ") == (3, 8)
    assert parse_digits("digits", "") == () and parse_digits("digits", [7]) == (7,)
    for bad, match in [("11", "0-9"), ("a", "0-9"), ("3,3", "twice"), ("3,", "0-9"), ("-1", "0-9"), (5, "0-9"),
                       ([True], "0-9")]:
        with pytest.raises(ValueError, match=match):
            parse_digits("digits", bad)


def test_class_settings_allow_or_and_not():
    assert ClassSettings("3,8").allowed == (3, 8)
    assert ClassSettings(exclude="0,1").allowed == (2, 3, 4, 5, 6, 7, 8, 9)
    assert ClassSettings("3,8", "8").allowed == (3,)
    assert not ClassSettings().conditional and not ClassSettings("7", class_weight=0.0).conditional
    assert not ClassSettings("0,1,2,3,4,5,6,7,8,9").conditional
    with pytest.raises(ValueError, match="no digit is left"):
        ClassSettings("3", "3")
    with pytest.raises(ValueError, match="no digit is left"):
        ClassSettings(exclude="0,1,2,3,4,5,6,7,8,9")
    with pytest.raises(ValueError, match="class weight"):
        ClassSettings("3", class_weight=-1.0)


def test_class_energy_gradient_matches_autograd(shipped):
    model, classifier = shipped
    settings = ClassSettings("3,8", class_weight=2.5)
    z = torch.randn(16, model.latent_dim, generator=torch.Generator().manual_seed(0))
    energy, grad = class_energy(model, classifier, settings)(z)
    zz = z.clone().requires_grad_(True)
    with torch.enable_grad():
        expected = model.energy(zz) - 2.5 * torch.logsumexp(torch.log_softmax(classifier(zz), -1)[:, [3, 8]], -1)
        (expected_grad,) = torch.autograd.grad(expected.sum(), zz)
    torch.testing.assert_close(energy, expected.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-3, atol=1e-3)


def test_conditioning_on_nothing_is_the_prior_sampler_bit_for_bit(shipped):
    model, classifier = shipped
    settings = SampleSettings(num_steps=30, num_chains=16, seed=3)
    prior = sample_chains(model, settings)
    assert torch.equal(sample_chains(model, settings, energy=model.sampling_energy()).state.position,
                       prior.state.position)
    for classes in (ClassSettings("7", class_weight=0.0), ClassSettings()):
        result, eps = sample_classes(model, classifier, classes, settings)
        assert torch.equal(result.state.position, prior.state.position) and eps == settings.step_size


def test_conditional_samples_repeat_per_seed(shipped):
    model, classifier = shipped
    settings = SampleSettings(num_steps=20, num_chains=8, seed=1)
    (one, _), (two, _) = (sample_classes(model, classifier, ClassSettings("3"), settings, pool_size=512)
                          for _ in range(2))
    assert torch.equal(one.state.position, two.state.position)


def test_latent_classifier_round_trip_and_refusal_for_another_model(shipped, tmp_path):
    model, _ = shipped
    gen = torch.Generator().manual_seed(0)
    images, labels = (torch.rand(300, 784, generator=gen) < 0.2).float(), torch.randint(10, (300,), generator=gen)
    classifier = train_latent_classifier(model, images, labels, epochs=1, seed=2)
    again = train_latent_classifier(model, images, labels, epochs=1, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(classifier.state_dict().values(), again.state_dict().values()))
    path = save_latent_classifier(classifier, model, tmp_path / "m.classes.safetensors", {"note": "test"})
    loaded, extra = load_latent_classifier(path, model)
    assert extra == {"note": "test"}
    assert all(torch.equal(a, b) for a, b in zip(classifier.state_dict().values(), loaded.state_dict().values()))
    other, _ = load_model()
    with torch.no_grad():
        other.energy.out.bias.add_(1e-3)
    assert model_fingerprint(other) != model_fingerprint(model)
    with pytest.raises(WeightsError, match="another model"):
        load_latent_classifier(path, other)
    with pytest.raises(WeightsError, match="train-latent-classifier"):
        load_latent_classifier(tmp_path / "missing.safetensors", model)
    with pytest.raises(WeightsError, match="not a latent classifier"):
        load_latent_classifier("weights/classifier_mnist.safetensors", model)


def test_latent_classifier_is_found_beside_its_weights():
    assert latent_classifier_path("weights/mnist_d4.safetensors").name == "mnist_d4.classes.safetensors"
    assert latent_classifier_path("runs/x/model.safetensors").as_posix() == "runs/x/model.classes.safetensors"


@pytest.mark.parametrize("flags, match", [(["--digit", "11"], "0-9"), (["--digit", "a"], "0-9"),
                                          (["--digit", "3,3"], "twice"), (["--digit", "3", "--exclude", "3"],
                                                                          "no digit is left"),
                                          (["--digit", "3", "--class-weight", "-2"], "class weight")])
def test_cli_refuses_bad_digits(flags, match, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--steps", "2", "--num-images", "2", "--out-dir", str(tmp_path), *flags])
    assert match in f"{exit_.value.code} {capsys.readouterr().err}"  # run_sample's message, or argparse's


def test_cli_digit_reports_the_image_classifiers_shares(tmp_path, capsys):
    main(["sample", "--digit", "3,8", "--steps", "5", "--num-images", "6", "--out-dir", str(tmp_path)])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    classes = report["classes"]
    assert classes["allowed"] == [3, 8] and sum(classes["histogram"].values()) == 6
    assert 0.0 <= classes["share_in_allowed"] <= 1.0 and (tmp_path / "grid.png").exists()
