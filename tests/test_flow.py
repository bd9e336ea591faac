"""Tests for ebm.flow: the normalizing-flow baseline learns a known density, is reproducible, refuses bad input.

Small flows and few epochs on a 2-D Gaussian keep each test to seconds; the recipe's defaults are
exercised on the shipped model by `python -m ebm evaluate`.
"""

import math

import pytest
import torch

from ebm.flow import FlowSettings, build_flow, fit_flow, flow_nll, sample_flow

SMALL = FlowSettings(transforms=3, hidden_width=64, bins=8, epochs=15, learning_rate=3e-3, batch_size=256)
COV = torch.tensor([[1.0, 0.8], [0.8, 1.0]])


@pytest.fixture(scope="module")
def gaussian():
    """A correlated 2-D Gaussian, 4000 train and 4000 test draws, and a flow fitted to the train ones."""
    truth = torch.distributions.MultivariateNormal(torch.tensor([0.5, -1.0]), COV)
    noise = torch.randn(8000, 2, generator=torch.Generator().manual_seed(0))
    draws = truth.mean + noise @ truth.scale_tril.T
    train, test = draws[:4000], draws[4000:]
    return truth, train, test, fit_flow(train, SMALL, seed=0)


def test_fitted_flow_reaches_the_true_nll_and_an_untrained_one_does_not(gaussian):
    truth, _, test, flow = gaussian
    true_nll = -truth.log_prob(test).mean().item()  # the same test points: no sampling noise in the comparison
    assert true_nll == pytest.approx(truth.entropy().item(), abs=0.05)
    assert flow_nll(flow, test) == pytest.approx(true_nll, abs=0.04)
    torch.manual_seed(0)
    assert flow_nll(build_flow(2, SMALL), test) > true_nll + 0.3
    # a density that misses the correlation: the tolerance above tells it apart too
    independent = torch.distributions.Normal(truth.mean, COV.diagonal().sqrt())
    assert -independent.log_prob(test).sum(1).mean().item() > true_nll + 0.3


def test_flow_samples_have_the_true_moments(gaussian):
    truth, _, _, flow = gaussian
    samples = sample_flow(flow, 4000, seed=1)
    assert samples.shape == (4000, 2)
    torch.testing.assert_close(samples.mean(0), truth.mean, atol=0.08, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), COV, atol=0.1, rtol=0)  # off-diagonal 0.8: not independent
    # the samples' mean NLL under the truth is the cross-entropy, close to the entropy when they follow it
    assert -truth.log_prob(samples).mean().item() == pytest.approx(truth.entropy().item(), abs=0.08)


def test_same_seed_same_flow_and_samples_bit_for_bit(gaussian):
    _, train, test, _ = gaussian
    settings = FlowSettings(transforms=1, hidden_width=8, bins=4, epochs=2, batch_size=200)
    rng_state, threads = torch.get_rng_state(), torch.get_num_threads()
    first, second = fit_flow(train[:1000], settings, seed=3), fit_flow(train[:1000], settings, seed=3)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    assert flow_nll(first, test) == flow_nll(second, test)
    assert torch.equal(sample_flow(first, 500, seed=5), sample_flow(second, 500, seed=5))
    assert not torch.equal(sample_flow(first, 500, seed=5), sample_flow(first, 500, seed=6))
    other = fit_flow(train[:1000], settings, seed=4)
    assert flow_nll(other, test) != flow_nll(first, test)
    # the caller's random numbers and thread count are left as they were
    assert torch.equal(torch.get_rng_state(), rng_state) and torch.get_num_threads() == threads


def test_log_reports_each_epoch(gaussian):
    _, train, _, _ = gaussian
    messages = []
    fit_flow(train[:300], FlowSettings(transforms=1, hidden_width=8, bins=4, epochs=3), log=messages.append)
    assert len(messages) == 3 and messages[-1].startswith("flow epoch 3/3: train NLL ")


@pytest.mark.parametrize("field, value", [("transforms", 0), ("hidden_width", 0), ("hidden_layers", 0), ("bins", 1),
                                          ("epochs", 0), ("epochs", 2.5), ("learning_rate", 0.0),
                                          ("learning_rate", math.nan), ("batch_size", 0), ("batch_size", True)])
def test_bad_settings_are_refused_when_made(field, value):
    with pytest.raises(ValueError, match=field):
        FlowSettings(**{field: value})


def test_bad_codes_seeds_and_counts_give_clear_errors(gaussian):
    _, train, _, flow = gaussian
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        fit_flow(train[:, 0], SMALL)
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        fit_flow(train[:1], SMALL)
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        fit_flow(train.numpy(), SMALL)
    with pytest.raises(ValueError, match="NaN"):
        fit_flow(torch.cat([train[:10], torch.full((1, 2), math.nan)]), SMALL)
    with pytest.raises(ValueError, match="seed"):
        fit_flow(train[:10], SMALL, seed=-1)
    with pytest.raises(ValueError, match="2 dimensions; the flow has"):
        flow_nll(build_flow(3, SMALL), train)
    with pytest.raises(ValueError, match="infinite"):
        flow_nll(flow, torch.full((4, 2), math.inf))
    with pytest.raises(ValueError, match="num_samples"):
        sample_flow(flow, 0)
    with pytest.raises(ValueError, match="seed"):
        sample_flow(flow, 10, seed=1.5)
