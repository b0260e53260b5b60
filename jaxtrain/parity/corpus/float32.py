"""Corpus cases for float32 alone: ports whose math is torch's (float64 holds) but whose float32 is not.

Two small models on uncentred tabular inputs (sensor readings around 300, spread 3: Kelvin temperatures,
pixel values, prices), where float32's range and cancellation matter and float64's do not:

- a LayerNorm classifier: its healthy port, and two float32-only bugs: nnx.LayerNorm's default one-pass
  variance E[x^2] - E[x]^2 (cancellation: the mean is 100x the spread), one Linear computing in bfloat16;
- a raw-feature softmax classifier returning log-probabilities (logits in the hundreds): its healthy port
  (`jax.nn.log_softmax`), and two float32-only bugs: `log(softmax(x))` (a probability below float32's range
  becomes log(0)), a log-sum-exp without the max subtracted (exp overflows).

Each case is `data -> check_port keyword arguments`; the corpus' FashionMNIST data is not used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

FEATURES, CLASSES, N_TRAIN, N_TEST = 16, 10, 512, 256
CHECK = dict(optimizer="adam", optimizer_kwargs={"lr": 1e-3}, batch_size=64, steps=16)


def sensor_data(seed: int = 0):
    """Readings around 300 (spread 3) and a class from a fixed projection of their deviations."""
    rng = np.random.default_rng(seed)
    x = 300.0 + 3.0 * rng.normal(size=(N_TRAIN + N_TEST, FEATURES))
    y = np.argmax((x - 300.0) @ rng.normal(size=(FEATURES, CLASSES)), axis=1)
    x = x.astype(np.float32)
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


# --------------------------------------------------------------------------- LayerNorm first


def torch_layernorm_net():
    import torch
    from torch import nn as tnn

    class SensorNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.norm = tnn.LayerNorm(FEATURES)
            self.fc1 = tnn.Linear(FEATURES, 32)
            self.fc2 = tnn.Linear(32, CLASSES)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(self.norm(x))))

    torch.manual_seed(0)
    return SensorNet()


class NnxSensorNet(nnx.Module):
    """Its port; `fast_variance` is nnx.LayerNorm's default (one pass); `bf16_fc1` casts fc1's input to bfloat16
    (a hand-placed cast to save memory: the check runs a module's `dtype=` field in the run's dtype, a cast in the
    code as written)."""

    def __init__(self, fast_variance: bool = False, bf16_fc1: bool = False, rngs: nnx.Rngs | None = None):
        rngs = rngs or nnx.Rngs(0)
        self.norm = nnx.LayerNorm(FEATURES, epsilon=1e-5, use_fast_variance=fast_variance, rngs=rngs)
        self.fc1 = nnx.Linear(FEATURES, 32, rngs=rngs)
        self.fc2 = nnx.Linear(32, CLASSES, rngs=rngs)
        self.bf16_fc1 = bf16_fc1

    def __call__(self, x):
        h = self.norm(x)
        return self.fc2(nnx.relu(self.fc1(h.astype(jnp.bfloat16) if self.bf16_fc1 else h)))


def layernorm_case(**port):
    def case(data):
        (x, y), test = sensor_data()
        return dict(torch_model=torch_layernorm_net(), flax_model=NnxSensorNet(**port), train=(x, y), test=test,
                    **CHECK)

    return case


# --------------------------------------------------------------------------- log-probabilities of raw logits


def torch_log_softmax_net():
    import torch
    from torch import nn as tnn

    class RawSoftmax(tnn.Module):
        def __init__(self):
            super().__init__()
            self.fc = tnn.Linear(FEATURES, CLASSES)

        def forward(self, x):
            return torch.log_softmax(self.fc(x), dim=-1)

    torch.manual_seed(0)
    return RawSoftmax()


def _log_softmax(z):
    return jax.nn.log_softmax(z, axis=-1)


def _log_of_softmax(z):
    return jnp.log(jax.nn.softmax(z, axis=-1))


def _unshifted_log_sum_exp(z):
    return z - jnp.log(jnp.sum(jnp.exp(z), axis=-1, keepdims=True))


LOG_PROBABILITIES = {"log_softmax": _log_softmax, "log_of_softmax": _log_of_softmax,
                     "unshifted_logsumexp": _unshifted_log_sum_exp}


class NnxRawSoftmax(nnx.Module):
    def __init__(self, log_probabilities: str = "log_softmax", rngs: nnx.Rngs | None = None):
        self.fc = nnx.Linear(FEATURES, CLASSES, rngs=rngs or nnx.Rngs(0))
        self.log_probabilities = log_probabilities

    def __call__(self, x):
        return LOG_PROBABILITIES[self.log_probabilities](self.fc(x))


def log_softmax_case(log_probabilities: str = "log_softmax"):
    def case(data):
        (x, y), test = sensor_data(1)
        return dict(torch_model=torch_log_softmax_net(), flax_model=NnxRawSoftmax(log_probabilities), train=(x, y),
                    test=test, loss="nll", **CHECK)

    return case


HEALTHY = {"sensor_layernorm_two_pass": layernorm_case(), "raw_logits_log_softmax": log_softmax_case()}
# name: (case, stage, step, tensor, why, trap)
BUGS = {
    "layernorm_one_pass_variance": (
        layernorm_case(fast_variance=True), "forward", 1, "norm (output)",
        "nn.LayerNorm ported as nnx.LayerNorm with its default use_fast_variance=True: E[x^2] - E[x]^2 in float32 "
        "on inputs whose mean is 100x their spread", "one-pass variance"),
    "linear_in_bfloat16": (
        layernorm_case(bf16_fc1=True), "forward", 1, "fc1 (output)",
        "one Linear's input cast to bfloat16 (float32 parameters and product)", "matmul precision below float32"),
    "log_of_softmax": (
        log_softmax_case("log_of_softmax"), "forward", 1, "output",
        "torch.log_softmax ported as log(softmax(x)): probabilities below float32's range become log(0)",
        "float32 range"),
    "logsumexp_without_max": (
        log_softmax_case("unshifted_logsumexp"), "forward", 1, "output",
        "torch.log_softmax ported as x - log(sum(exp(x))) without subtracting the max: exp overflows in float32",
        "float32 range"),
}
