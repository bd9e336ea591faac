"""Compiled Langevin and HMC kernels for the MLP energy net (numba).

Why: one Langevin step on 64 chains is about thirty small tensor ops, and in eager PyTorch
their dispatch costs several times the arithmetic. Here a whole block of ULA or MALA steps, or
of HMC iterations, runs in one compiled call: chains go in tiles small enough to stay in cache
for every step of the block, the square layers go through BLAS, and the sigmoid uses an exp
written so that the compiler vectorises it. The maths is `EnergyNet.energy_and_grad`'s, in float32;
tests check that the two agree and that the kernel's chains equal the generic ones.

`FastEnergy` is the entry point: a snapshot of an `EnergyNet`'s weights that is called
like `energy_and_grad` and that `ebm.samplers` recognises by its `langevin` and `hmc` methods.
Chains are independent, so it splits them over `ebm.threads.chain_threads()` cores: the kernels
release the GIL, and each core gets its own chains and its own pre-drawn noise, so the result
does not depend on the number of threads.
"""

from __future__ import annotations

import functools
import itertools
import math

import numba
import numpy as np
import scipy.linalg.cython_blas  # noqa: F401 -- the BLAS that np.dot calls here: loaded now so that it can be limited
import torch

from .threads import chain_threads, limit_blas_threads, run_together

TILE = 32  # chains advanced together; their activations (a few 10 KB) stay in L1/L2
# Below this many chain-steps per core, handing work to another thread costs more than it saves.
MIN_CHAIN_STEPS_PER_THREAD = 1024
# Every fast-math flag except 'nnan' and 'ninf': NaN must still reach the Metropolis test.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
jit = numba.njit(fastmath=FASTMATH, error_model="numpy", cache=True, nogil=True)

_f = np.float32
LOG2E = _f(1.4426950408889634)
# Taylor coefficients of 2^f = exp(f ln 2) for |f| <= 1/2: degree 7 is within float32 rounding.
P0, P1, P2, P3, P4, P5, P6, P7 = (_f(math.log(2) ** k / math.factorial(k)) for k in range(8))


@jit
def silu_rows(pre, bias, hidden, deriv):
    """u = pre + bias on (n, w) rows; hidden = silu(u) = u σ(u) and deriv = silu'(u) = σ + silu (1 - σ).

    σ(u) = 1 / (1 + exp(-u)) with exp(x) = 2^n 2^f, 2^f a polynomial and 2^n built from its
    bits (in `deriv`'s memory, before it is overwritten): libm's expf does not vectorise, this
    does, and it agrees with the exact sigmoid to a relative 1e-6.
    """
    n_rows, width = pre.shape
    bits = deriv.view(np.int32)
    for i in range(n_rows):
        for j in range(width):
            u = pre[i, j] + bias[j]
            t = min(max(-u, _f(-87.0)), _f(87.0)) * LOG2E
            n = np.floor(t + _f(0.5))
            f = t - n
            p = P0 + f * (P1 + f * (P2 + f * (P3 + f * (P4 + f * (P5 + f * (P6 + f * P7))))))
            bits[i, j] = (np.int32(n) + 127) << 23  # the float 2^n
            s = _f(1.0) / (_f(1.0) + p * deriv[i, j])
            h = u * s
            hidden[i, j] = h
            deriv[i, j] = s + h * (_f(1.0) - s)


@jit
def tile_scratch(n, width, layers):
    """Work arrays for a tile of n chains: activations and SiLU derivatives per layer, two (n, w) buffers."""
    return (np.empty((layers, n, width), np.float32), np.empty((layers, n, width), np.float32),
            np.empty((n, width), np.float32), np.empty((n, width), np.float32))


@jit
def energy_and_grad_tile(z, w1t, b1, wh, wht, bh, w_out, b_out, inv_var, hidden, deriv, pre, g_pre, energy, grad):
    """E and dE/dz for a tile of n chains, into `energy` (n,) and `grad` (n, d).

    w1t (d, w) first layer transposed; wh (L-1, w, w) square layers as (out, in) and wht
    transposed; hidden/deriv (L, n, w) each layer's SiLU output and derivative, kept for the
    backward pass; pre and g_pre (n, w) scratch.
    """
    n, d = z.shape
    width = w1t.shape[1]
    last = wh.shape[0]
    if d == 4:  # the default latent size: one vectorised pass instead of four
        for i in range(n):
            z0, z1, z2, z3 = z[i, 0], z[i, 1], z[i, 2], z[i, 3]
            for j in range(width):
                pre[i, j] = z0 * w1t[0, j] + z1 * w1t[1, j] + z2 * w1t[2, j] + z3 * w1t[3, j]
    else:
        for i in range(n):
            for j in range(width):
                pre[i, j] = _f(0.0)
            for k in range(d):
                zk = z[i, k]
                for j in range(width):
                    pre[i, j] += zk * w1t[k, j]
    silu_rows(pre, b1, hidden[0], deriv[0])
    for layer in range(1, last + 1):
        np.dot(hidden[layer - 1], wht[layer - 1], pre)
        silu_rows(pre, bh[layer - 1], hidden[layer], deriv[layer])
    for i in range(n):
        acc = _f(0.0)
        for j in range(width):
            acc += hidden[last, i, j] * w_out[j]
        sq = _f(0.0)
        for k in range(d):
            sq += z[i, k] * z[i, k]
        energy[i] = acc + b_out + _f(0.5) * inv_var * sq
        for j in range(width):
            g_pre[i, j] = w_out[j] * deriv[last, i, j]
    for layer in range(last, 0, -1):
        np.dot(g_pre, wh[layer - 1], pre)
        for i in range(n):
            for j in range(width):
                g_pre[i, j] = pre[i, j] * deriv[layer - 1, i, j]
    if d == 4:
        for i in range(n):
            a0, a1, a2, a3 = _f(0.0), _f(0.0), _f(0.0), _f(0.0)
            for j in range(width):
                gj = g_pre[i, j]
                a0 += gj * w1t[0, j]
                a1 += gj * w1t[1, j]
                a2 += gj * w1t[2, j]
                a3 += gj * w1t[3, j]
            grad[i, 0], grad[i, 1] = a0 + inv_var * z[i, 0], a1 + inv_var * z[i, 1]
            grad[i, 2], grad[i, 3] = a2 + inv_var * z[i, 2], a3 + inv_var * z[i, 3]
    else:
        for i in range(n):
            for k in range(d):
                acc = _f(0.0)
                for j in range(width):
                    acc += g_pre[i, j] * w1t[k, j]
                grad[i, k] = acc + inv_var * z[i, k]


@jit
def accept_and_record(t, i, log_alpha, adjusted, uniform, position, energy, grad, proposal, energy_new, grad_new,
                      trajectory, energies, acceptance):
    """Chain i at step t: the Metropolis-Hastings test on `log_alpha` (a NaN ratio rejects; without `adjusted`
    every proposal is taken), then the chain's position, energy and acceptance probability into the traces."""
    accept_prob = 1.0
    if math.isnan(log_alpha):
        accept_prob = 0.0
    elif log_alpha < 0.0:
        accept_prob = math.exp(log_alpha)
    if not adjusted or uniform[t, i] < accept_prob:
        energy[i] = energy_new[i]
        for k in range(position.shape[1]):
            position[i, k] = proposal[i, k]
            grad[i, k] = grad_new[i, k]
    for k in range(position.shape[1]):
        trajectory[t, i, k] = position[i, k]
    energies[t, i] = energy[i]
    acceptance[t, i] = accept_prob


@jit
def langevin_tile(position, energy, grad, noise, uniform, step_size, adjusted, trajectory, energies, acceptance,
                  w1t, b1, wh, wht, bh, w_out, b_out, inv_var):
    """Advance one tile of chains through every step of the block, in place.

    Per step t: proposal = x - (ε²/2)∇E(x) + ε ξ_t; ULA takes it, MALA accepts it when
    u_t < min(1, exp(E(x) - E(x') + log q(x|x') - log q(x'|x))), a NaN ratio rejects.
    """
    n, d = position.shape
    drift = _f(0.5) * step_size * step_size
    hidden, deriv, pre, g_pre = tile_scratch(n, w1t.shape[1], wh.shape[0] + 1)
    proposal, energy_new, grad_new = np.empty((n, d), np.float32), np.empty(n, np.float32), np.empty((n, d), np.float32)
    for t in range(noise.shape[0]):
        for i in range(n):
            for k in range(d):
                proposal[i, k] = position[i, k] - drift * grad[i, k] + step_size * noise[t, i, k]
        energy_and_grad_tile(proposal, w1t, b1, wh, wht, bh, w_out, b_out, inv_var,
                             hidden, deriv, pre, g_pre, energy_new, grad_new)
        for i in range(n):
            log_alpha = 0.0  # ULA: every proposal is taken
            if adjusted:
                forward_sq, backward_sq = 0.0, 0.0
                for k in range(d):
                    back = position[i, k] - proposal[i, k] + drift * grad_new[i, k]
                    forward_sq += noise[t, i, k] * noise[t, i, k]
                    backward_sq += back * back
                log_alpha = (energy[i] - energy_new[i]) + 0.5 * forward_sq - backward_sq / (2.0 * step_size * step_size)
            accept_and_record(t, i, log_alpha, adjusted, uniform, position, energy, grad, proposal, energy_new,
                              grad_new, trajectory, energies, acceptance)


@jit
def hmc_tile(position, energy, grad, momenta, uniform, step_size, leapfrog_steps, trajectory, energies, acceptance,
             w1t, b1, wh, wht, bh, w_out, b_out, inv_var):
    """Advance one tile of chains through every HMC iteration of the block, in place.

    Per iteration t: p = ξ_t, then L leapfrog steps from (x, p) (half kick, then drift and
    kick, the last kick a half), accepted when u_t < min(1, exp(H(x, p) - H(x', p'))) with
    H = E + |p|²/2; a NaN ratio rejects. The tile's activations stay in cache for all L steps.
    """
    n, d = position.shape
    half = _f(0.5) * step_size
    hidden, deriv, pre, g_pre = tile_scratch(n, w1t.shape[1], wh.shape[0] + 1)
    x, p, energy_new, grad_new = (np.empty((n, d), np.float32), np.empty((n, d), np.float32),
                                  np.empty(n, np.float32), np.empty((n, d), np.float32))
    for t in range(momenta.shape[0]):
        for i in range(n):
            for k in range(d):
                p[i, k] = momenta[t, i, k] - half * grad[i, k]
                x[i, k] = position[i, k]
        for step in range(leapfrog_steps):
            for i in range(n):
                for k in range(d):
                    x[i, k] += step_size * p[i, k]
            energy_and_grad_tile(x, w1t, b1, wh, wht, bh, w_out, b_out, inv_var, hidden, deriv, pre, g_pre,
                                 energy_new, grad_new)
            kick = step_size if step < leapfrog_steps - 1 else half
            for i in range(n):
                for k in range(d):
                    p[i, k] -= kick * grad_new[i, k]
        for i in range(n):
            kinetic_change = 0.0
            for k in range(d):
                kinetic_change += momenta[t, i, k] * momenta[t, i, k] - p[i, k] * p[i, k]
            log_alpha = (energy[i] - energy_new[i]) + 0.5 * kinetic_change
            accept_and_record(t, i, log_alpha, True, uniform, position, energy, grad, x, energy_new, grad_new,
                              trajectory, energies, acceptance)


@jit
def chain_block(first, stop, position, energy, grad, normals, uniform, step_size, adjusted, leapfrog_steps,
                trajectory, energies, acceptance, w1t, b1, wh, wht, bh, w_out, b_out, inv_var):
    """Chains first..stop-1, tile by tile, through one block: Langevin steps when `leapfrog_steps` is 0 (the
    normals are the steps' noise; see `langevin_tile`), else HMC iterations (the normals are momenta; `hmc_tile`)."""
    for lo in range(first, stop, TILE):
        hi = min(lo + TILE, stop)
        if leapfrog_steps == 0:
            langevin_tile(position[lo:hi], energy[lo:hi], grad[lo:hi], normals[:, lo:hi], uniform[:, lo:hi], step_size,
                          adjusted, trajectory[:, lo:hi], energies[:, lo:hi], acceptance[:, lo:hi],
                          w1t, b1, wh, wht, bh, w_out, b_out, inv_var)
        else:
            hmc_tile(position[lo:hi], energy[lo:hi], grad[lo:hi], normals[:, lo:hi], uniform[:, lo:hi], step_size,
                     leapfrog_steps, trajectory[:, lo:hi], energies[:, lo:hi], acceptance[:, lo:hi],
                     w1t, b1, wh, wht, bh, w_out, b_out, inv_var)


@jit
def energy_and_grad_all(first, stop, z, energy, grad, w1t, b1, wh, wht, bh, w_out, b_out, inv_var):
    """E and dE/dz for chains first..stop-1, tile by tile."""
    for lo in range(first, stop, TILE):
        hi = min(lo + TILE, stop)
        hidden, deriv, pre, g_pre = tile_scratch(hi - lo, w1t.shape[1], wh.shape[0] + 1)
        energy_and_grad_tile(z[lo:hi], w1t, b1, wh, wht, bh, w_out, b_out, inv_var, hidden, deriv, pre, g_pre,
                             energy[lo:hi], grad[lo:hi])


def _array(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)


def chain_slices(chains: int, steps: int, threads: int) -> list[slice]:
    """Contiguous groups of whole tiles, one per thread, each worth handing to a core.

    Tiles start at multiples of TILE from chain 0 whatever the split, so every chain goes
    through the same matrix products, and so the same floats, on any number of threads.
    """
    tiles = -(-chains // TILE)
    parts = max(1, min(threads, tiles, chains * steps // MIN_CHAIN_STEPS_PER_THREAD))
    bounds = [min(chains, TILE * (tiles * i // parts)) for i in range(parts + 1)]
    return [slice(lo, hi) for lo, hi in itertools.pairwise(bounds)]


limit_blas_threads()  # one BLAS thread: the same floats under any load, and no pool spinning beside ours


def _map_over_chains(work, chains: int, steps: int) -> None:
    """work(first, stop) for each group of `chain_slices`, all at once (`ebm.threads.run_together`)."""
    run_together([functools.partial(work, group.start, group.stop)
                  for group in chain_slices(chains, steps, chain_threads())])


class FastEnergy:
    """A frozen float32 copy of an `EnergyNet` with compiled E, ∇E, Langevin and HMC blocks.

    Call it like `energy_and_grad`. It does not follow later changes to the net: after an
    update, take a new one (`EnergyNet.sampling_energy()`; copying the weights takes microseconds).
    """

    def __init__(self, net):
        first, rest = net.hidden[0], list(net.hidden[1:])
        width = net.config.hidden_dim
        self.latent_dim = net.config.latent_dim
        self.w1t = _array(first.weight.t())
        self.b1 = _array(first.bias)
        self.wh = (_array(torch.stack([layer.weight for layer in rest])) if rest
                   else np.zeros((0, width, width), np.float32))
        self.wht = np.ascontiguousarray(self.wh.transpose(0, 2, 1))
        self.bh = _array(torch.stack([layer.bias for layer in rest])) if rest else np.zeros((0, width), np.float32)
        self.w_out = _array(net.out.weight[0])
        self.b_out = np.float32(net.out.bias.item())
        self.inv_var = np.float32(1.0 / net.config.tilt_sigma**2)

    def _weights(self) -> tuple:
        return self.w1t, self.b1, self.wh, self.wht, self.bh, self.w_out, self.b_out, self.inv_var

    def _positions(self, z: torch.Tensor) -> np.ndarray:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"positions must have shape (chains, {self.latent_dim}), got {tuple(z.shape)}")
        return _array(z)

    def __call__(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, d) -> ((N,) energies, (N, d) gradients), float32."""
        z = self._positions(z)
        energy, grad = np.empty(len(z), np.float32), np.empty_like(z)

        def work(first: int, stop: int) -> None:  # each thread writes its own rows
            energy_and_grad_all(first, stop, z, energy, grad, *self._weights())

        _map_over_chains(work, len(z), 1)
        return torch.from_numpy(energy), torch.from_numpy(grad)

    def langevin(self, position, energy, grad, noise, uniform, step_size: float, adjusted: bool):
        """Run len(noise) ULA (or, `adjusted`, MALA) steps from (position, energy, grad) with the given
        N(0, I) noise (steps, N, d) and uniforms (steps, N); returns the new (position, energy, grad)
        and the per-step (trajectory (steps, N, d), energies (steps, N), acceptance probabilities (steps, N))."""
        return self._block(position, energy, grad, noise, uniform, np.float32(step_size), bool(adjusted), 0)

    def hmc(self, position, energy, grad, momenta, uniform, step_size: float, leapfrog_steps: int):
        """Run len(momenta) HMC iterations of `leapfrog_steps` leapfrog steps of size `step_size`, each
        starting from the given momentum (steps, N, d); inputs and outputs as in `langevin`."""
        return self._block(position, energy, grad, momenta, uniform, np.float32(step_size), True,
                           int(leapfrog_steps))

    def _block(self, position, energy, grad, normals, uniform, *settings):
        """`chain_block` over all chains, split over the threads; `settings`: ε, adjusted, leapfrog steps."""
        position = self._positions(position).copy()
        energy, grad = _array(energy).copy(), _array(grad).copy()
        normals, uniform = _array(normals), _array(uniform)
        steps, chains = normals.shape[:2]
        trajectory = np.empty((steps, chains, self.latent_dim), np.float32)
        energies, acceptance = np.empty((steps, chains), np.float32), np.empty((steps, chains), np.float32)

        def work(first: int, stop: int) -> None:  # each thread moves its own chains and writes their columns
            chain_block(first, stop, position, energy, grad, normals, uniform, *settings, trajectory, energies,
                        acceptance, *self._weights())

        _map_over_chains(work, chains, steps)
        return tuple(map(torch.from_numpy, (position, energy, grad, trajectory, energies, acceptance)))
