"""The tutorial's models as Flax (linen) modules, laid out like their torch twins.

Layer names follow the torch `nn.Sequential` indices (`linear_relu_stack_0` is
`linear_relu_stack.0`), so weights move between frameworks by name
(see `jaxtrain.transfer`).

Two torch behaviours Flax does not have are written out here:
- `nn.Linear` initialises weights *and biases* from U(±1/sqrt(fan_in)) (`init="torch"`).
- `nn.BatchNorm1d` keeps the *unbiased* batch variance in its running estimate
  (momentum 0.1); Flax's BatchNorm keeps the biased one. `TorchBatchNorm` follows torch.
Every layer takes a per-row `mask` so padded rows of a partial batch change nothing.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def torch_linear_init(fan_in: int):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), nn.Linear's init for weight and bias."""
    bound = fan_in ** -0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def linear(features: int, fan_in: int, init_style: str, name: str) -> nn.Dense:
    """nn.Dense initialised like torch's nn.Linear (`torch`) or with Flax's defaults (`flax`)."""
    if init_style == "torch":
        init = torch_linear_init(fan_in)
        return nn.Dense(features, kernel_init=init, bias_init=init, name=name)
    return nn.Dense(features, name=name)


class TorchBatchNorm(nn.Module):
    """BatchNorm1d with torch's semantics: normalise by the biased batch variance,
    update the running variance with the unbiased one, momentum 0.1, eps 1e-5.
    (`momentum` is torch's: Flax's is 1 - it. `unbiased=False` keeps Flax's biased
    running variance instead.)"""

    momentum: float = 0.1
    eps: float = 1e-5
    unbiased: bool = True

    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), x.dtype))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), x.dtype))
        if train:
            weight = jnp.ones(x.shape[:1], x.dtype) if mask is None else mask.astype(x.dtype)
            n = weight.sum()
            mean = (weight[:, None] * x).sum(0) / n
            var = (weight[:, None] * jnp.square(x - mean)).sum(0) / n
            if not self.is_initializing():
                m = self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * mean
                running_var.value = (1 - m) * running_var.value + m * (var * (n / (n - 1)) if self.unbiased else var)
        else:
            mean, var = running_mean.value, running_var.value
        return (x - mean) / jnp.sqrt(var + self.eps) * scale + bias


def dropout(module: nn.Module, x, rate: float, train: bool, mask=None):
    """Inverted dropout like torch's: zero with probability `rate`, scale the rest by 1/(1-rate).

    `mask` (1 = keep) replaces the random draw; the parity harness passes the same
    masks to both frameworks because their RNGs cannot be matched.
    """
    if not train or rate == 0.0:
        return x
    if mask is None:
        mask = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, x.shape)
    return x * (mask.astype(x.dtype) / (1.0 - rate))  # torch: input * (bernoulli mask / (1 - p))


class MLP(nn.Module):
    """nn.Flatten, then Linear(784,512) ReLU Linear(512,512) ReLU Linear(512,10): the tutorial's."""

    hidden: Sequence[int] = (512, 512)
    num_classes: int = 10
    init_style: str = "torch"

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None, dropout_masks=None):
        x = x.reshape(x.shape[0], -1)
        index = 0
        for width in self.hidden:
            x = nn.relu(linear(width, x.shape[-1], self.init_style, f"linear_relu_stack_{index}")(x))
            index += 2
        return linear(self.num_classes, x.shape[-1], self.init_style, f"linear_relu_stack_{index}")(x)


class MLPBatchNormDropout(nn.Module):
    """Linear BatchNorm1d ReLU Dropout, twice, then Linear: train() and eval() differ."""

    hidden: Sequence[int] = (512, 512)
    num_classes: int = 10
    rate: float = 0.2
    init_style: str = "torch"

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None, dropout_masks=None):
        x = x.reshape(x.shape[0], -1)
        index = 0
        for layer, width in enumerate(self.hidden):
            x = linear(width, x.shape[-1], self.init_style, f"linear_relu_stack_{index}")(x)
            x = TorchBatchNorm(name=f"linear_relu_stack_{index + 1}")(x, train, mask)
            x = nn.relu(x)
            x = dropout(self, x, self.rate, train, None if dropout_masks is None else dropout_masks[layer])
            index += 4
        return linear(self.num_classes, x.shape[-1], self.init_style, f"linear_relu_stack_{index}")(x)


def make_model(config) -> nn.Module:
    if config.model == "mlp":
        return MLP(init_style=config.init)
    return MLPBatchNormDropout(rate=config.dropout, init_style=config.init)


def dropout_shapes(config, batch_size: int) -> list[tuple[int, int]]:
    """Shapes of the dropout masks one training step of this model draws."""
    if config.model == "mlp_bn_dropout" and config.dropout > 0:
        return [(batch_size, 512), (batch_size, 512)]
    return []
