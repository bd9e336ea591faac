"""Two-stage training: the autoencoder, then the latent energy net by contrastive divergence.

Each stage is a generator of `Progress` events, so the CLI's progress bars and the app's
live charts come from the same loop. The models are trained in place and keep what they learned
when the loop ends early: not asking for the next event (or `close()`) stops between events,
and a `should_stop` callback stops within one autoencoder batch or one block of Langevin steps,
dropping the half-done iteration (a last event without losses says where it stopped).
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .data import DATASETS, DEFAULT_THRESHOLD
from .generate import MAX_SEED
from .models import (
    ARCHITECTURES,
    MAX_CHANNELS,
    MAX_LAYERS,
    MAX_WIDTH,
    Autoencoder,
    AutoencoderConfig,
    EnergyConfig,
    EnergyNet,
    LatentEBM,
)
from .samplers import DEFAULT_TARGET_ACCEPTANCE, SAMPLERS, ReplayBuffer, adapted_step_size, build_sampler, run_chains
from .threads import T, run_shards
from .validation import Settings, setting, validate_fields


@dataclass(frozen=True)
class TrainConfig(Settings):
    """Everything that defines a training run; stored in the weights' metadata. Checked when made.

    Each field declares its bounds, label and help once (`setting`): the CLI's flags and the
    Train page's fields read them (`ebm.validation.spec`); `ui_low`/`ui_high` are the page's
    narrower ranges, where the full one is no use in a form.
    """

    dataset: str = setting("mnist", choices=DATASETS, label="Dataset")
    threshold: float = setting(DEFAULT_THRESHOLD, low=0.0, high=1.0, low_open=True, high_open=True,
                               label="Binarization threshold", help="A pixel is 1 where intensity/255 >= this")
    seed: int = setting(0, low=0, high=MAX_SEED, ui_high=2**31 - 1, label="Seed")  # browsers keep ints exact to 2**53
    device: str = setting("cpu", choices=("cpu", "cuda"), label="Device")
    # stage 1: autoencoder
    ae_architecture: str = setting("conv", choices=ARCHITECTURES, label="Autoencoder",
                                   help="mlp: fully connected; conv: two stride-2 convolutions each way")
    ae_hidden_dim: int = setting(256, low=1, high=MAX_WIDTH, ui_low=8, ui_high=2048, step=8, label="Hidden width",
                                 help="Width of the fully-connected layers of the encoder and decoder")
    ae_conv_channels: int = setting(16, low=1, high=MAX_CHANNELS, ui_high=128, step=8, label="Conv channels",
                                    help="Channels of the first convolution (the second has twice as many); conv only")
    latent_dim: int = setting(4, low=1, high=MAX_WIDTH, ui_low=2, ui_high=6, label="Latent dimensions",
                              help="4 keeps the log Z quadrature and the explorer fast")
    ae_epochs: int = setting(10, low=0, ui_high=200, label="Epochs",
                             help="Passes over the training set (0 skips stage 1: the decoder stays untrained)")
    ae_batch_size: int = setting(128, low=1, ui_low=8, ui_high=4096, step=8, label="Batch size")
    ae_lr: float = setting(2e-3, low=0.0, low_open=True, ui_low=1e-5, ui_high=1.0, label="Learning rate",
                           help="Peak rate of the one-cycle schedule")
    ae_latent_noise: float = setting(0.1, low=0.0, ui_high=2.0, label="Code noise",
                                     help="Std of noise added to codes before decoding")
    # with the code noise, the code penalty makes stage 1 a fixed-variance VAE
    ae_code_penalty: float = setting(1.0, low=0.0, ui_high=100.0, label="Code penalty",
                                     help="Weight of |z|²/2: keeps codes near the origin")
    # stage 2: energy net
    ebm_hidden_dim: int = setting(96, low=1, high=MAX_WIDTH, ui_low=4, ui_high=1024, step=4, label="Hidden width")
    ebm_layers: int = setting(3, low=1, high=MAX_LAYERS, ui_high=8, label="Hidden layers")
    ebm_tilt_sigma: float = setting(3.0, low=0.0, low_open=True, ui_low=0.1, ui_high=100.0, label="Tilt σ",
                                    help="E gets |z|²/2σ² added, so that e^−E is integrable")
    ebm_iterations: int = setting(19000, low=1, ui_low=10, ui_high=100_000, step=10, label="Iterations",
                                  help="Contrastive-divergence updates of the energy net")
    ebm_batch_size: int = setting(512, low=1, ui_low=8, ui_high=4096, step=8, label="Batch size",
                                  help="Data codes and negatives per update")
    negatives_per_datapoint: int = setting(1, low=1, label="Negatives per data code",
                                           help="Persistent chains advanced per data code each iteration")
    ebm_lr: float = setting(1e-3, low=0.0, low_open=True, ui_low=1e-5, ui_high=1.0, label="Learning rate")
    ebm_weight_ema: float = setting(0.0, low=0.0, high=1.0, high_open=True, ui_high=0.9999, label="Weight EMA decay",
                                    help="The saved energy net is this exponential moving average of its weights "
                                         "over the updates (0: the last weights)")
    ebm_train_images: int | None = setting(None, low=1, kind="int", optional=True, label="Stage-2 training images",
                                           help="Use only the first N training images in stage 2 (default: all)")
    ebm_code_noise: float = setting(0.03, low=0.0, label="Data-code noise",
                                    help="Std of noise added to the data codes (standardized units) in stage 2's "
                                         "chain iterations")
    ebm_likelihood_iterations: int = setting(3000, low=0, ui_high=100_000, step=10, label="Likelihood iterations",
                                             help="The last N iterations (all, if fewer) take the negatives from "
                                                  "importance sampling instead of Langevin chains: the exact "
                                                  "likelihood gradient, which a 4-D latent allows")
    likelihood_proposals: int = setting(4096, low=1, ui_low=64, ui_high=65_536, step=64,
                                        label="Proposals per likelihood iteration",
                                        help="Importance-weighted draws that stand for the model in each of them")
    likelihood_lr: float = setting(2e-4, low=0.0, low_open=True, ui_low=1e-6, ui_high=1.0,
                                   label="Likelihood learning rate",
                                   help="Peak rate of the likelihood iterations (a fresh Adam, cosine to 0)")
    sampler: str = setting("mala", choices=tuple(SAMPLERS), label="Negatives sampler")
    mcmc_steps: int = setting(15, low=1, ui_high=500, label="Langevin steps per update", help="K for the negatives")
    mcmc_step_size: float = setting(0.2, low=0.0, low_open=True, ui_low=1e-3, ui_high=5.0, label="Initial step size ε",
                                    help="A Metropolis-adjusted sampler adapts it toward the target acceptance")
    target_acceptance: float = setting(DEFAULT_TARGET_ACCEPTANCE, low=0.0, high=1.0, low_open=True, high_open=True,
                                       ui_low=0.05, ui_high=0.95, label="Target acceptance")
    buffer_size: int = setting(10_000, low=1, ui_low=16, ui_high=1_000_000, step=16, label="Replay buffer",
                               help="Persistent chains the negatives continue from")
    reinit_prob: float = setting(0.05, low=0.0, high=1.0, label="Restart probability",
                                 help="Chance that a negative restarts from noise")
    energy_reg: float = setting(0.01, low=0.0, ui_high=10.0, label="Energy regularization",
                                help="α in α(E₊² + E₋²): keeps energies near zero")
    grad_clip: float = setting(1.0, low=0.0, low_open=True, ui_low=1e-3, ui_high=1e3, label="Gradient clip")
    max_energy_gap: float = setting(1.0, low=0.0, low_open=True, label="Lost-chains energy gap",
                                    help="Negatives this far (nats, running mean) above the data: chains lost, "
                                         "restart them")
    negatives_every: int = setting(0, low=0, ui_high=10_000, step=10, label="Show negatives every",
                                   help="Decode a few negatives every N iterations (0: never)")


    def autoencoder_config(self) -> AutoencoderConfig:
        """The autoencoder's shape in these settings."""
        return AutoencoderConfig(self.ae_hidden_dim, self.latent_dim, self.ae_architecture, self.ae_conv_channels)

    def energy_config(self) -> EnergyConfig:
        """The energy net's shape in these settings."""
        return EnergyConfig(self.latent_dim, self.ebm_hidden_dim, self.ebm_layers, self.ebm_tilt_sigma)

    def validate(self) -> TrainConfig:
        """This config; it was checked when made (kept for callers that check a config they are handed)."""
        validate_fields(self)
        return self


@dataclass
class Progress:
    """One training event: where we are, the losses, and optionally decoded negatives."""

    stage: str  # "autoencoder" or "energy"
    step: int
    total_steps: int
    epoch: int
    elapsed: float
    losses: dict[str, float] = field(default_factory=dict)
    negatives: torch.Tensor | None = None  # (n, 784) decoded negative samples
    message: str = ""


class DivergenceError(RuntimeError):
    """Training produced NaN or exploding energies repeatedly, even after rollback."""


StopCheck = Callable[[], bool]
"""Asked inside the training loops; True ends the training where it is (see the module docstring)."""


def never_stop() -> bool:
    """The default: train to the end (the command line stops with Ctrl-C instead)."""
    return False


GRADIENT_SHARDS = 2  # a batch's gradient is the sum of this many row shards', each on its own core when there are two


def in_shards(work: Callable[..., T], *tensors: torch.Tensor) -> list[T]:
    """work(*rows) on each of GRADIENT_SHARDS row shards of the tensors, in order (`run_shards`). The
    shards, and so the floats, are the same on any number of cores (torch's own threads would change
    a conv's sums with their number)."""
    parts = zip(*(t.tensor_split(GRADIENT_SHARDS) for t in tensors))  # shard i: the i-th split of each tensor
    return run_shards([functools.partial(work, *rows) for rows in parts if any(len(r) for r in rows)])


def summed(gradients: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    """The shards' gradients added parameter by parameter, in shard order."""
    return [torch.stack(parts).sum(0) if len(parts) > 1 else parts[0] for parts in zip(*gradients)]


def fused_adam(params, **kwargs) -> torch.optim.Adam:
    """Adam in one fused kernel per parameter: on the CPU a step of the autoencoder's takes 0.5-0.7 ms instead
    of 2.6-3.6 (`python -m benchmarks.steps`), the same update up to rounding."""
    return torch.optim.Adam(params, fused=True, **kwargs)


def autoencoder_loss(model: Autoencoder, images: torch.Tensor, cfg: TrainConfig, code_noise: torch.Tensor | None = None,
                     batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary cross-entropy (nats) plus the code penalty, summed over `images` and divided by `batch_size`
    (default: their number), so that a batch's shards add up to its loss; returns (total, bce).
    `code_noise`: standard normal draws shaped like the codes, added times `cfg.ae_latent_noise`."""
    codes = model.encode(images)
    noisy = codes if code_noise is None else codes + cfg.ae_latent_noise * code_noise.to(codes.device)
    logits = model.decode_logits(noisy)
    n = batch_size or len(images)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, images, reduction="sum") / n
    penalty = cfg.ae_code_penalty * 0.5 * codes.square().sum() / n
    return bce + penalty, bce


def autoencoder_gradients(model: Autoencoder, batch: torch.Tensor, code_noise: torch.Tensor,
                          cfg: TrainConfig) -> tuple[list[torch.Tensor], float]:
    """The batch's loss gradient and BCE, summed over its shards (`in_shards`)."""
    params = list(model.parameters())

    def shard(images: torch.Tensor, noise: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], float]:
        loss, bce = autoencoder_loss(model, images, cfg, noise, len(batch))
        return torch.autograd.grad(loss, params), bce.item()

    results = in_shards(shard, batch, code_noise)
    return summed([g for g, _ in results]), sum(bce for _, bce in results)


AE_WARMUP = 0.1  # stage 1's one-cycle schedule: the share of its steps over which the learning rate rises


def one_cycle(opt: torch.optim.Optimizer, max_lr: float, total_steps: int,
              warmup: float) -> torch.optim.lr_scheduler.OneCycleLR:
    """torch's one-cycle schedule rising over a `warmup` share of the steps, or over two where that share is
    exactly one step: OneCycleLR divides by zero on a one-step rise (stage 1 at 10 steps, e.g. `--ae-batch-size
    6000 --ae-epochs 1`; the image classifier, rising over a fifth, at 5)."""
    total_steps = max(total_steps, 1)
    warmup = 2 / total_steps if warmup * total_steps == 1 else warmup
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total_steps, pct_start=warmup)


def train_autoencoder(model: Autoencoder, train_images: torch.Tensor, test_images: torch.Tensor, cfg: TrainConfig,
                      should_stop: StopCheck = never_stop) -> Iterator[Progress]:
    """Stage 1: Adam on binary cross-entropy with noisy codes, one event every few batches;
    `should_stop` is asked before each batch."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = fused_adam(model.parameters(), lr=cfg.ae_lr)
    batches_per_epoch = math.ceil(len(train_images) / cfg.ae_batch_size)
    total = cfg.ae_epochs * batches_per_epoch
    sched = one_cycle(opt, cfg.ae_lr, total, AE_WARMUP)
    start, step = time.perf_counter(), 0
    report_every = max(1, batches_per_epoch // 20)
    smoothed = None  # moving average of the batch losses: no jump at epoch boundaries in the charts
    for epoch in range(1, cfg.ae_epochs + 1):
        model.train()
        order = torch.randperm(len(train_images), generator=gen)
        for b in range(batches_per_epoch):
            if should_stop():
                yield Progress("autoencoder", step, total, epoch, time.perf_counter() - start)
                return
            batch = train_images[order[b * cfg.ae_batch_size : (b + 1) * cfg.ae_batch_size]].to(cfg.device)
            code_noise = torch.randn(len(batch), cfg.latent_dim, generator=gen)
            grads, bce = autoencoder_gradients(model, batch, code_noise, cfg)
            for param, grad in zip(model.parameters(), grads):
                param.grad = grad
            opt.step()
            sched.step()
            step += 1
            smoothed = bce if smoothed is None else 0.95 * smoothed + 0.05 * bce
            if step % report_every == 0 and b != batches_per_epoch - 1:
                yield Progress("autoencoder", step, total, epoch, time.perf_counter() - start,
                               {"train_bce": smoothed})
        model.eval()
        test_bce = sum(bce for chunk in test_images.split(2048)
                       for bce in in_shards(functools.partial(summed_bce, model, cfg), chunk)) / len(test_images)
        yield Progress("autoencoder", step, total, epoch, time.perf_counter() - start,
                       {"train_bce": smoothed, "test_bce": test_bce})


@torch.no_grad()  # grad mode is per thread: the shards' helpers need it said again
def summed_bce(model: Autoencoder, cfg: TrainConfig, images: torch.Tensor) -> float:
    """The reconstruction BCE of images, summed over them (nats)."""
    return autoencoder_loss(model, images.to(cfg.device), cfg, batch_size=1)[1].item()


@torch.no_grad()
def encode_rows(model: Autoencoder, device: str, images: torch.Tensor) -> torch.Tensor:
    """Raw latent codes of a few images."""
    return model.encode(images.to(device)).cpu()


def encode_all(model: Autoencoder, images: torch.Tensor, device: str = "cpu") -> torch.Tensor:
    """Raw latent codes of many images, in chunks, each in shards (`in_shards`)."""
    model.eval()
    return torch.cat([codes for chunk in images.split(4096)
                      for codes in in_shards(functools.partial(encode_rows, model, device), chunk)])


@dataclass
class Snapshot:
    """What a rollback restores: the net, the optimiser, the persistent chains and the step size."""

    iteration: int
    energy: dict
    optimizer: dict
    chains: torch.Tensor
    step_size: float
    average: dict | None  # the weight EMA's state, when there is one

    @classmethod
    def take(cls, iteration: int, energy: nn.Module, opt: torch.optim.Optimizer, buffer: ReplayBuffer,
             step_size: float, average: nn.Module | None) -> Snapshot:
        """A copy of the training state now, detached from the live net, optimiser and chains that go on changing."""
        return cls(iteration, copy.deepcopy(energy.state_dict()), copy.deepcopy(opt.state_dict()),
                   buffer.positions.clone(), step_size,
                   None if average is None else copy.deepcopy(average.state_dict()))


GAP_SMOOTHING = 0.02  # weight of each iteration in the running mean of E(negatives) - E(data), ~50 iterations


def train_energy(model: LatentEBM, codes: torch.Tensor, cfg: TrainConfig,
                 should_stop: StopCheck = never_stop) -> Iterator[Progress]:
    """Stage 2: persistent contrastive divergence on standardized codes.

    Loss = mean E(data) - mean E(negatives) + alpha (E(data)^2 + E(negatives)^2); negatives
    come from a replay buffer advanced by K Langevin steps per iteration.

    Two failures are caught. A non-finite loss or runaway energies roll the net, optimiser,
    chains and step size back to the last healthy state (saved every 100 iterations) with a
    halved learning rate. Negatives whose energy stays `max_energy_gap` above the data's (a
    running mean) are contrastive divergence's quiet failure: the chains no longer reach some
    of the data's modes, so each update deepens wells they cannot find. The chains are then
    restarted at the data codes: inside those wells, they show the update what to flatten.

    The last `ebm_likelihood_iterations` replace the chains by importance sampling: a fixed pool of
    draws from a proposal fitted to the data codes (`ebm.importance.proposal_draws`, the one that
    checks log Z), `likelihood_proposals` of them per update, weighted by exp(-E) / q. Their weighted
    mean of ∇E estimates E_model[∇E] without the bias of chains that have not mixed, so those updates
    follow the gradient of the exact log-likelihood (in 4-D the weights' ESS stays high, and it is
    reported as `proposal_ess`). They fit the codes themselves (no code noise), with a fresh Adam
    (default betas) from `likelihood_lr` annealed to 0, and without the energy regularizer, which would
    pull the fit away from the likelihood's optimum (the likelihood's gradient leaves the energies'
    offset alone). The chain iterations' learning rate anneals over the chain iterations.

    With `ebm_weight_ema` > 0 the negatives still come from the live net, and the net ends
    holding the moving average of its weights (also after a stop).

    `should_stop` is asked after each block of Langevin steps; a stop drops the iteration under
    way before anything (chains, net, optimiser) is updated.
    """
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    energy = model.energy
    opt = fused_adam(energy.parameters(), lr=cfg.ebm_lr, betas=(0.5, 0.999))
    chain_iterations = cfg.ebm_iterations - min(cfg.ebm_likelihood_iterations, cfg.ebm_iterations)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(chain_iterations, 1), eta_min=0.05 * cfg.ebm_lr)
    buffer = ReplayBuffer(cfg.buffer_size, model.latent_dim, generator=gen)
    average = (AveragedModel(energy, multi_avg_fn=get_ema_multi_avg_fn(cfg.ebm_weight_ema))
               if cfg.ebm_weight_ema else None)
    step_size, start = cfg.mcmc_step_size, time.perf_counter()
    good, rollbacks, gap = Snapshot.take(0, energy, opt, buffer, step_size, average), 0, 0.0
    proposals = None  # (draws, their log q), made when the likelihood iterations begin
    try:
        for it in range(1, cfg.ebm_iterations + 1):
            data = codes[torch.randint(len(codes), (cfg.ebm_batch_size,), generator=gen)]
            likelihood = it > chain_iterations
            if cfg.ebm_code_noise and not likelihood:  # the likelihood iterations fit the codes themselves
                data = data + cfg.ebm_code_noise * torch.randn(data.shape, generator=gen)
            if likelihood:
                if proposals is None:
                    proposals = proposal_pool(codes, cfg.seed)
                    opt = fused_adam(energy.parameters(), lr=cfg.likelihood_lr)
                    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.ebm_iterations - chain_iterations)
                    good = Snapshot.take(it - 1, energy, opt, buffer, step_size, average)
                drawn = torch.randint(len(proposals[0]), (cfg.likelihood_proposals,), generator=gen)
                negatives, log_q = proposals[0][drawn], proposals[1][drawn]
            else:
                indices, init = buffer.draw(cfg.ebm_batch_size * cfg.negatives_per_datapoint, cfg.reinit_prob)
                energy.eval()  # a compiled snapshot of this iteration's net (ebm.kernels), on the CPU
                sampler = build_sampler(cfg.sampler, energy.sampling_energy(), step_size, gen)
                chains = run_chains(sampler, sampler.init(init), cfg.mcmc_steps, callback=lambda done: should_stop())
                negatives = chains.state.position
            if should_stop():
                yield Progress("energy", it - 1, cfg.ebm_iterations, 0, time.perf_counter() - start)
                return
            if not likelihood:
                buffer.store(indices, negatives)
                acceptance = chains.acceptance.mean().item()
                if SAMPLERS[cfg.sampler].adjusted:
                    step_size = adapted_step_size(step_size, acceptance, cfg.target_acceptance, rate=0.1)

            energy.train()
            graphs = in_shards(functools.partial(data_and_negative_energies, energy), data, negatives)
            e_pos, e_neg = (torch.cat([pair[k].detach() for pair in graphs]) for k in (0, 1))
            if likelihood:  # E_model by self-normalized importance weights, exp(-E) / q
                weights, reg = torch.softmax(-e_neg - log_q, 0), 0.0
            else:  # E_model by the chains' plain means
                weights, reg = torch.full_like(e_neg, 1 / len(e_neg)), cfg.energy_reg
            cd_loss = e_pos.mean() - weights @ e_neg
            loss = cd_loss + reg * (e_pos.square().mean() + e_neg.square().mean())
            gap += GAP_SMOOTHING * (-cd_loss.item() - gap)
            if not torch.isfinite(loss) or e_pos.abs().max() > 1e4:
                rollbacks += 1
                if rollbacks > 5:
                    raise DivergenceError(f"energy training diverged {rollbacks} times; last loss {loss.item()}")
                energy.load_state_dict(good.energy)
                opt.load_state_dict(good.optimizer)
                buffer.positions.copy_(good.chains)
                if average is not None:
                    average.load_state_dict(good.average)
                step_size, gap = good.step_size, 0.0
                for group in opt.param_groups:
                    group["lr"] *= 0.5
                yield Progress("energy", it, cfg.ebm_iterations, 0, time.perf_counter() - start,
                               message=f"non-finite or exploding loss at iteration {it}: rolled back to iteration "
                                       f"{good.iteration}, lr halved")
                continue
            if not likelihood and gap > cfg.max_energy_gap:  # the chains lost the modes: put them back at the data
                buffer.positions.copy_(codes[torch.randint(len(codes), (len(buffer.positions),), generator=gen)])
                yield Progress("energy", it, cfg.ebm_iterations, 0, time.perf_counter() - start,
                               message=f"negatives {gap:.2f} nats above the data at iteration {it}: "
                                       "chains restarted from the data codes")
                gap = 0.0
                continue
            for param, grad in zip(energy.parameters(), energy_gradients(energy, graphs, weights, reg)):
                param.grad = grad
            nn.utils.clip_grad_norm_(energy.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            if average is not None:
                average.update_parameters(energy)
            if it % 100 == 0 and gap < cfg.max_energy_gap / 2:
                good = Snapshot.take(it, energy, opt, buffer, step_size, average)

            if it % 10 == 0 or it == cfg.ebm_iterations:
                decoded = None
                if cfg.negatives_every and (it % cfg.negatives_every == 0 or it == cfg.ebm_iterations):
                    # a generator of its own: what is shown must not change the training's random numbers
                    shown = (slice(16) if not likelihood
                             else torch.multinomial(weights, 16, generator=torch.Generator().manual_seed(it)))
                    decoded = model.decode(negatives[shown])
                energy_data = e_pos.mean().item()
                losses = {"cd_loss": cd_loss.item(), "energy_data": energy_data,
                          "energy_negatives": energy_data - cd_loss.item()}
                losses |= ({"acceptance": acceptance, "step_size": step_size} if not likelihood
                           else {"proposal_ess": 1 / weights.square().sum().item() / len(weights)})
                yield Progress("energy", it, cfg.ebm_iterations, 0, time.perf_counter() - start, losses,
                               negatives=decoded)
    finally:  # also when the caller stops asking for events
        if average is not None:
            energy.load_state_dict(average.module.state_dict())
        energy.eval()


def data_and_negative_energies(energy: EnergyNet, data: torch.Tensor,
                               negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E(data), E(negatives)) with autograd, in one pass of the net over both: half the ops of two passes
    (`python -m benchmarks.steps`)."""
    return energy(torch.cat([data, negatives])).tensor_split([len(data)])


def energy_gradients(energy: EnergyNet, graphs: list[tuple[torch.Tensor, torch.Tensor]], weights: torch.Tensor,
                     reg: float) -> list[torch.Tensor]:
    """The gradient of mean E(data) - weights · E(negatives) + reg · (mean E(data)² + mean E(negatives)²),
    from each shard's (E(data), E(negatives)) with its autograd graph, the shards' backward passes at once."""
    params = list(energy.parameters())
    n_pos, n_neg = sum(len(p) for p, _ in graphs), len(weights)

    def backward(e_pos: torch.Tensor, e_neg: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        loss = e_pos.sum() / n_pos - w @ e_neg + reg * (e_pos.square().sum() / n_pos + e_neg.square().sum() / n_neg)
        return torch.autograd.grad(loss, params)

    shard_weights = weights.tensor_split(GRADIENT_SHARDS)  # the same bounds as the negatives' shards
    return summed(run_shards([functools.partial(backward, e_pos, e_neg, w)
                              for (e_pos, e_neg), w in zip(graphs, shard_weights)]))


LIKELIHOOD_POOL = 262_144  # proposal draws made once for the likelihood iterations (a few seconds)


def proposal_pool(codes: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`LIKELIHOOD_POOL` draws from `ebm.importance`'s proposal fitted to the codes, and their log q, float32."""
    from .importance import proposal_draws  # scikit-learn and scipy: only trainings that get this far import them

    draws, log_q = proposal_draws(codes, LIKELIHOOD_POOL, seed=seed)
    return torch.from_numpy(draws).float(), torch.from_numpy(log_q).float()


def build_model(cfg: TrainConfig) -> LatentEBM:
    """A fresh, untrained model in the configured shape, seeded."""
    torch.manual_seed(cfg.seed)
    return _assemble(cfg)


def _assemble(cfg: TrainConfig) -> LatentEBM:
    ae = Autoencoder(cfg.autoencoder_config())
    energy = EnergyNet(cfg.energy_config())
    return LatentEBM(ae, energy, torch.zeros(cfg.latent_dim), torch.ones(cfg.latent_dim))


def weights_bytes(cfg: TrainConfig) -> int:
    """The bytes of tensors a config's weights file holds, to check for disk space before training.

    The model is built on the meta device: no memory, and the global random state is untouched.
    """
    with torch.device("meta"):
        model = _assemble(cfg)
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def standardize_codes(model: LatentEBM, images: torch.Tensor, device: str = "cpu") -> torch.Tensor:
    """Encode images, store the codes' mean and std in the model, return standardized codes."""
    raw = encode_all(model.autoencoder, images, device)
    model.code_mean.copy_(raw.mean(0))
    model.code_std.copy_(raw.std(0).clamp_min(1e-6))
    return (raw - model.code_mean) / model.code_std


def energy_training_images(train_images: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """The images whose codes stage 2 fits: all of them, or the first `ebm_train_images`."""
    return train_images if cfg.ebm_train_images is None else train_images[: cfg.ebm_train_images]


def train(model: LatentEBM, train_images: torch.Tensor, test_images: torch.Tensor, cfg: TrainConfig,
          should_stop: StopCheck = never_stop) -> Iterator[Progress]:
    """Both stages in order on binarized (N, 784) images; the model is trained in place.

    A stop (`should_stop` True) during stage 1 ends the training before stage 2's code statistics.
    """
    torch.manual_seed(cfg.seed)
    model.to(cfg.device)
    yield from train_autoencoder(model.autoencoder, train_images, test_images, cfg, should_stop)
    if should_stop():
        return
    codes = standardize_codes(model, energy_training_images(train_images, cfg), cfg.device)
    yield from train_energy(model, codes, cfg, should_stop)


MIN_ITERATIONS_FOR_DIGITS = 200
"""Fewer stage-2 iterations leave the energy net too flat for its samples to look like digits."""


def too_short_for_digits(cfg: TrainConfig) -> list[str]:
    """Why a training this short gives no digits, one reason per setting; empty when it may give some."""
    reasons = []
    if cfg.ae_epochs == 0:
        reasons.append("0 autoencoder epochs leave the decoder untrained, so every sample decodes to noise")
    if cfg.ebm_iterations < MIN_ITERATIONS_FOR_DIGITS:
        reasons.append(f"{cfg.ebm_iterations:,} energy-net iterations are fewer than the "
                       f"{MIN_ITERATIONS_FOR_DIGITS} it takes the samples to find the digits")
    return reasons


def run_metadata(cfg: TrainConfig) -> dict:
    """What a weights file records about how it was made."""
    return {"dataset": cfg.dataset, "threshold": cfg.threshold, "train_config": asdict(cfg)}
