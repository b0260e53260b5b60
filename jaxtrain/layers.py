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


def _lstm_cell(x_proj, h_proj, carry):
    """torch's LSTM step: gates i, f, g, o from x W_ih^T + b_ih + h W_hh^T + b_hh."""
    h, c = carry
    i, f, g, o = jnp.split(x_proj + h_proj, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h


def _gru_cell(x_proj, h_proj, carry):
    """torch's GRU step: r, z from both projections; n = tanh(W_in x + b_in + r (W_hn h + b_hn))."""
    (h,) = carry
    xr, xz, xn = jnp.split(x_proj, 3, axis=-1)
    hr, hz, hn = jnp.split(h_proj, 3, axis=-1)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    h = (1 - z) * n + z * h
    return (h,), h


class TorchRecurrent(nnx.Module):
    """nn.LSTM / nn.GRU for NNX, holding torch's own tensors under torch's names (`weight_ih_l0`, `weight_hh_l0`,
    `bias_ih_l0`, `bias_hh_l0`, `..._reverse`; gates in torch's order), each direction's time loop one
    `lax.scan`. Called like torch's: `(output, h_n)` for a GRU, `(output, (h_n, c_n))` for an LSTM."""

    CELLS = {"LSTM": (4, 2, _lstm_cell), "GRU": (3, 1, _gru_cell)}

    def __init__(self, kind: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, bidirectional: bool = False, *, rngs: nnx.Rngs):
        self.kind, self.hidden_size, self.num_layers = kind, hidden_size, num_layers
        self.batch_first, self.bias = batch_first, bias
        self.directions = ("", "_reverse") if bidirectional else ("",)
        gates = self.CELLS[kind][0] * hidden_size
        init = torch_linear_init(hidden_size)  # torch: U(+-1/sqrt(hidden_size)) for every tensor
        for layer in range(num_layers):
            fan_in = input_size if layer == 0 else hidden_size * len(self.directions)
            for sfx in self.directions:
                for name, shape in ((f"weight_ih_l{layer}{sfx}", (gates, fan_in)),
                                    (f"weight_hh_l{layer}{sfx}", (gates, hidden_size)),
                                    *(((f"bias_ih_l{layer}{sfx}", (gates,)), (f"bias_hh_l{layer}{sfx}", (gates,)))
                                      if bias else ())):
                    setattr(self, name, nnx.Param(init(rngs.params(), shape)))

    def __call__(self, x, hx=None):
        _, states, cell = self.CELLS[self.kind]
        xs = jnp.swapaxes(x, 0, 1) if self.batch_first else x  # time first
        n = len(self.directions)
        if hx is None:
            zeros = jnp.zeros((self.num_layers * n, xs.shape[1], self.hidden_size), xs.dtype)
            hx = (zeros,) * states
        elif states == 1:
            hx = (hx,)
        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for d, sfx in enumerate(self.directions):
                w_ih, w_hh = (getattr(self, f"weight_{s}_l{layer}{sfx}")[...] for s in ("ih", "hh"))
                b_ih, b_hh = ((getattr(self, f"bias_{s}_l{layer}{sfx}")[...] for s in ("ih", "hh")) if self.bias
                              else (0.0, 0.0))
                x_proj = xs @ w_ih.T + b_ih  # every step's input projection at once

                def step(carry, x_t, w_hh=w_hh, b_hh=b_hh):
                    return cell(x_t, carry[0] @ w_hh.T + b_hh, carry)

                carry, ys = jax.lax.scan(step, tuple(h[layer * n + d] for h in hx), x_proj, reverse=d == 1)
                outputs.append(ys)
                finals.append(carry)
            xs = jnp.concatenate(outputs, axis=-1) if n > 1 else outputs[0]
        output = jnp.swapaxes(xs, 0, 1) if self.batch_first else xs
        h_n = tuple(jnp.stack([c[i] for c in finals]) for i in range(states))
        return output, (h_n if states > 1 else h_n[0])
