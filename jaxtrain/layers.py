"""Flax layers with torch's semantics where Flax's own differ, for NNX and for linen.

- `torch_linear_init`: nn.Linear initialises weights *and biases* from U(+-1/sqrt(fan_in)).
- `TorchBatchNorm`: torch's BatchNorm (1d/2d/3d; the feature axis is the last, as in
  Flax): normalise by the biased batch variance, but update the running variance with
  the *unbiased* one, momentum 0.1 in torch's convention (new = (1-m) old + m batch),
  eps 1e-5. Flax's `BatchNorm` keeps the biased variance and calls 1 - m its momentum:
  a port that uses it trains differently (the parity check names both traps).
  `unbiased=False` keeps the biased running variance instead.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx


def torch_linear_init(fan_in: int):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), nn.Linear's init for weight and bias."""
    bound = fan_in ** -0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _batch_moments(x):
    """Per-feature mean and biased variance over every axis but the last, and the count."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axes)
    return mean, jnp.square(x - mean).mean(axes), x.size // x.shape[-1]


def _running(old, batch, momentum):
    return (1 - momentum) * old + momentum * batch


class TorchBatchNorm(nnx.Module):
    """nn.BatchNorm{1,2,3}d for NNX; `model.train()` / `model.eval()` switch it like torch's."""

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5, unbiased: bool = True,
                 use_running_average: bool = False, *, dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((num_features,), dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), dtype))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), dtype))
        self.var = nnx.BatchStat(jnp.ones((num_features,), dtype))
        self.momentum, self.eps, self.unbiased = momentum, eps, unbiased
        self.use_running_average = use_running_average

    def __call__(self, x):
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            mean, var, n = _batch_moments(x)
            self.mean[...] = _running(self.mean[...], mean, self.momentum)
            self.var[...] = _running(self.var[...], var * n / (n - 1) if self.unbiased else var, self.momentum)
        return (x - mean) / jnp.sqrt(var + self.eps) * self.scale[...] + self.bias[...]


class LinenTorchBatchNorm(nn.Module):
    """The same for linen: called with `train: bool`; statistics in the `batch_stats` collection."""

    momentum: float = 0.1
    eps: float = 1e-5
    unbiased: bool = True

    @nn.compact
    def __call__(self, x, train: bool):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), x.dtype))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), x.dtype))
        if not train:
            mean, var = running_mean.value, running_var.value
        else:
            mean, var, n = _batch_moments(x)
            if not self.is_initializing():
                running_mean.value = _running(running_mean.value, mean, self.momentum)
                running_var.value = _running(running_var.value, var * n / (n - 1) if self.unbiased else var,
                                             self.momentum)
        return (x - mean) / jnp.sqrt(var + self.eps) * scale + bias
