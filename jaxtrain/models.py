"""The tutorial's models in Flax NNX, laid out like their torch twins (torchref/models.py).

`linear_relu_stack` is an `nnx.Sequential` whose indices are the torch
`nn.Sequential`'s (`linear_relu_stack.layers.0` is `linear_relu_stack.0`), and
`model.train()` / `model.eval()` switch BatchNorm and Dropout as torch's do.
Weights move between the frameworks through `jaxtrain.parity.mapping`, the same
automatic mapping users' own ports get.
"""

from __future__ import annotations

from typing import Sequence

from flax import nnx

from jaxtrain.layers import TorchBatchNorm, torch_linear_init

IMAGE_PIXELS = 28 * 28


def linear(fan_in: int, features: int, init_style: str, rngs: nnx.Rngs) -> nnx.Linear:
    """nnx.Linear initialised like torch's nn.Linear (`torch`) or with Flax's defaults (`flax`)."""
    if init_style == "torch":
        init = torch_linear_init(fan_in)
        return nnx.Linear(fan_in, features, kernel_init=init, bias_init=init, rngs=rngs)
    return nnx.Linear(fan_in, features, rngs=rngs)


class MLP(nnx.Module):
    """Flatten, then Linear(784,512) ReLU Linear(512,512) ReLU Linear(512,10): the tutorial's."""

    def __init__(self, hidden: Sequence[int] = (512, 512), num_classes: int = 10, init_style: str = "torch", *,
                 rngs: nnx.Rngs):
        layers, fan_in = [], IMAGE_PIXELS
        for width in hidden:
            layers += [linear(fan_in, width, init_style, rngs), nnx.relu]
            fan_in = width
        self.linear_relu_stack = nnx.Sequential(*layers, linear(fan_in, num_classes, init_style, rngs))

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.linear_relu_stack(x)


class MLPBatchNormDropout(nnx.Module):
    """Linear BatchNorm1d ReLU Dropout, twice, then Linear: model.train() and model.eval() differ."""

    def __init__(self, hidden: Sequence[int] = (512, 512), num_classes: int = 10, rate: float = 0.2,
                 init_style: str = "torch", *, rngs: nnx.Rngs):
        layers, fan_in = [], IMAGE_PIXELS
        for width in hidden:
            layers += [linear(fan_in, width, init_style, rngs), TorchBatchNorm(width), nnx.relu,
                       nnx.Dropout(rate, rngs=rngs)]
            fan_in = width
        self.linear_relu_stack = nnx.Sequential(*layers, linear(fan_in, num_classes, init_style, rngs))

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.linear_relu_stack(x)


def make_model(config) -> nnx.Module:
    rngs = nnx.Rngs(config.seed)
    if config.model == "mlp":
        return MLP(init_style=config.init, rngs=rngs)
    return MLPBatchNormDropout(rate=config.dropout, init_style=config.init, rngs=rngs)
