"""The energy net's E(z) in jax.numpy, from a torch `EnergyNet`'s weights, for the BlackJAX peer benchmark.

E(z) = MLP(z) + |z|^2 / (2 tilt_sigma^2), the MLP d -> w -> ... -> w -> 1 with SiLU after every
hidden layer: `EnergyNet.forward`'s maths, in float32. benchmarks/sampler.py runs BlackJAX's MALA on
it and tests/test_sampler_benchmark.py checks it against torch. Needs benchmarks/requirements.txt.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ebm.models import EnergyNet

jax.config.update("jax_enable_x64", False)  # float32, as the torch net and our kernels


def energy_params(net: EnergyNet) -> dict:
    """The net's weights as float32 jax arrays: per hidden layer (in, out) matrices and biases, the output row."""
    def array(t):
        return jnp.asarray(np.asarray(t.detach().cpu().numpy(), dtype=np.float32))

    return {
        "hidden": [(array(layer.weight.t()), array(layer.bias)) for layer in net.hidden],
        "w_out": array(net.out.weight[0]),
        "b_out": array(net.out.bias[0]),
        "inv_var": jnp.float32(1.0 / net.config.tilt_sigma**2),
    }


def energy(params: dict, z: jax.Array) -> jax.Array:
    """E(z) of one code (d,) -> scalar; `jax.vmap` it over chains."""
    h = z
    for weight, bias in params["hidden"]:
        h = jax.nn.silu(h @ weight + bias)
    return h @ params["w_out"] + params["b_out"] + 0.5 * params["inv_var"] * jnp.sum(z * z)
