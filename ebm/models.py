"""The two networks: a binary-image autoencoder and an energy net on its latent space."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .validation import Settings, setting

IMAGE_PIXELS = 28 * 28
MAX_LAYERS = 16
MAX_WIDTH = 4096  # caps what a (possibly uploaded) config can make us allocate: ~100 MB of weights
MAX_CHANNELS = 256  # the same for a conv autoencoder


ARCHITECTURES = ("mlp", "conv")
CONV_GRID = 7  # the conv encoder halves 28 x 28 twice: its second layer's maps are 7 x 7


@dataclass
class AutoencoderConfig(Settings):
    """Shape of the autoencoder. "mlp": 784 -> hidden -> hidden -> latent -> hidden -> hidden -> 784.
    "conv": two stride-2 convolutions (channels, 2 x channels; 28 -> 14 -> 7), then 7·7·2c -> hidden -> latent,
    and the decoder mirrored with transposed convolutions. Files saved before the choice existed lack these
    fields, so the defaults are the MLP they hold."""

    hidden_dim: int = setting(512, low=1, high=MAX_WIDTH)
    latent_dim: int = setting(4, low=1, high=MAX_WIDTH)
    architecture: str = setting("mlp", choices=ARCHITECTURES)
    conv_channels: int = setting(32, low=1, high=MAX_CHANNELS)


def _conv_encoder(c: int, h: int, d: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)), nn.Conv2d(1, c, 4, 2, 1), nn.GELU(), nn.Conv2d(c, 2 * c, 4, 2, 1), nn.GELU(),
        nn.Flatten(), nn.Linear(2 * c * CONV_GRID**2, h), nn.GELU(), nn.Linear(h, d))


def _conv_decoder(c: int, h: int, d: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d, h), nn.GELU(), nn.Linear(h, 2 * c * CONV_GRID**2), nn.GELU(),
        nn.Unflatten(1, (2 * c, CONV_GRID, CONV_GRID)), nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.GELU(),
        nn.ConvTranspose2d(c, 1, 4, 2, 1), nn.Flatten())


class Autoencoder(nn.Module):
    """MLP or convolutional autoencoder with GELU activations on flat (N, 784) images; the decoder returns
    Bernoulli logits per pixel. The conv one is what binary-digit autoencoders usually are: sharper edges."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        h, d, c = config.hidden_dim, config.latent_dim, config.conv_channels
        self.config = config
        if config.architecture == "conv":
            self.encoder, self.decoder = _conv_encoder(c, h, d), _conv_decoder(c, h, d)
            return
        self.encoder = nn.Sequential(
            nn.Linear(IMAGE_PIXELS, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, d)
        )
        self.decoder = nn.Sequential(
            nn.Linear(d, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, IMAGE_PIXELS)
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(..., 784) images in [0, 1] -> (..., d) raw latent codes."""
        return _rows(self.encoder, images, self.config.latent_dim)

    def decode_logits(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., d) raw codes -> (..., 784) pixel logits."""
        return _rows(self.decoder, codes, IMAGE_PIXELS)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., d) raw codes -> (..., 784) pixel probabilities."""
        return torch.sigmoid(self.decode_logits(codes))


def _rows(net: nn.Module, x: torch.Tensor, out_dim: int) -> torch.Tensor:
    """`net` on the rows of x with any leading dims (the conv layers take only (N, features))."""
    return net(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], out_dim)


@dataclass
class EnergyConfig(Settings):
    """Shape of the energy net E(z) = MLP(z) + |z|^2 / (2 tilt_sigma^2) on standardized codes."""

    latent_dim: int = setting(4, low=1, high=MAX_WIDTH)
    hidden_dim: int = setting(96, low=1, high=MAX_WIDTH)
    num_layers: int = setting(3, low=1, high=MAX_LAYERS)
    tilt_sigma: float = setting(3.0, low=0.0, low_open=True)


class EnergyNet(nn.Module):
    """Smooth (SiLU) MLP energy with a Gaussian tilt, so that exp(-E) is integrable.

    The tilt dominates far from the data because the MLP grows at most linearly,
    which makes the density proper and the grid quadrature of log Z meaningful.
    `energy_and_grad` computes E and dE/dz by hand, without autograd: samplers call
    it thousands of times per request and the autograd tape costs more than the maths.
    """

    def __init__(self, config: EnergyConfig):
        super().__init__()
        self.config = config
        widths = [config.latent_dim] + [config.hidden_dim] * config.num_layers
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(config.hidden_dim, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(N, d) standardized codes -> (N,) energies; differentiable with autograd."""
        h = z
        for layer in self.hidden:
            h = nn.functional.silu(layer(h))
        return self.out(h).squeeze(-1) + z.square().sum(-1) / (2 * self.config.tilt_sigma**2)

    @torch.no_grad()
    def energy_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, d) -> ((N,) energies, (N, d) gradients dE/dz), by a hand-written backward pass.

        Keeps only the pre-activations; aten's fused silu_backward computes g * silu'(u) in one
        pass, which halves the elementwise work compared with building silu' from sigmoids.
        """
        h, pre_activations = z, []
        for layer in self.hidden:
            u = torch.addmm(layer.bias, h, layer.weight.t())
            pre_activations.append(u)
            h = nn.functional.silu(u)
        inv_var = 1.0 / self.config.tilt_sigma**2
        energy = torch.addmv(self.out.bias, h, self.out.weight[0])
        energy.add_(z.square().sum(-1), alpha=0.5 * inv_var)
        g = self.out.weight.expand(z.shape[0], -1)
        for layer, u in zip(reversed(self.hidden), reversed(pre_activations)):
            g = torch.ops.aten.silu_backward(g, u) @ layer.weight
        g.add_(z, alpha=inv_var)
        return energy, g

    def sampling_energy(self):
        """What samplers should call: a compiled snapshot of the net on the CPU (`ebm.kernels.FastEnergy`),
        `energy_and_grad` elsewhere. The snapshot does not follow later weight updates."""
        if self.out.weight.device.type != "cpu":
            return self.energy_and_grad
        from .kernels import FastEnergy  # numba compiles on first use; importers that never sample skip it

        return FastEnergy(self)


class LatentEBM(nn.Module):
    """The whole generative model: autoencoder + energy net on standardized latent codes.

    Samplers and the energy net work in standardized coordinates c = (z - mean) / std,
    so step sizes and the tilt mean the same thing for every trained autoencoder.
    """

    def __init__(self, autoencoder: Autoencoder, energy: EnergyNet, code_mean: torch.Tensor, code_std: torch.Tensor):
        super().__init__()
        if autoencoder.config.latent_dim != energy.config.latent_dim:
            raise ValueError("autoencoder and energy net disagree on the latent dimension")
        self.autoencoder = autoencoder
        self.energy = energy
        self.register_buffer("code_mean", code_mean.detach().clone().float())
        self.register_buffer("code_std", code_std.detach().clone().float())

    @property
    def latent_dim(self) -> int:
        """Dimension d of the latent codes the energy net scores."""
        return self.energy.config.latent_dim

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 784) binary images -> (N, d) standardized codes."""
        return (self.autoencoder.encode(images) - self.code_mean) / self.code_std

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, d) standardized codes -> (N, 784) pixel probabilities."""
        return self.autoencoder.decode(codes * self.code_std + self.code_mean)

    def energy_and_grad(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The energy net's `EnergyNet.energy_and_grad` on (N, d) standardized codes."""
        return self.energy.energy_and_grad(codes)

    def sampling_energy(self):
        """The energy net's `EnergyNet.sampling_energy`: what samplers should call."""
        return self.energy.sampling_energy()
