"""The models the speed comparisons time that ship with the package: a BatchNorm CNN on 28x28 images as a torch
user writes it, and its Flax ports (NNX and linen) as a careful porter writes them. `compare_port`'s suite
(`python -m jaxtrain.bench.port --suite`, the GPU report) times this pair; `examples/cnn.py` checks it."""

import flax.linen as nn
import torch
from flax import nnx
from torch import nn as tnn

from jaxtrain.layers import LinenTorchBatchNorm, TorchBatchNorm


class TorchCNN(tnn.Module):
    """Conv2d BatchNorm2d ReLU MaxPool2d Dropout, then Linear: the user's torch model."""

    def __init__(self):
        super().__init__()
        self.features = tnn.Sequential(
            tnn.Conv2d(1, 8, kernel_size=3, padding=1),
            tnn.BatchNorm2d(8),
            tnn.ReLU(),
            tnn.MaxPool2d(2),
            tnn.Dropout(0.25),
        )
        self.fc = tnn.Linear(8 * 14 * 14, 10)

    def forward(self, x):
        x = self.features(x)
        return self.fc(torch.flatten(x, 1))


class NnxCNN(nnx.Module):
    """Its Flax NNX port: inputs NHWC; back to NCHW before flattening, as torch flattens."""

    def __init__(self, flatten_nhwc: bool = False, rngs: nnx.Rngs | None = None):
        rngs = rngs or nnx.Rngs(0)
        self.conv = nnx.Conv(1, 8, kernel_size=(3, 3), padding=1, rngs=rngs)
        self.bn = TorchBatchNorm(8)
        self.dropout = nnx.Dropout(0.25, rngs=rngs)
        self.fc = nnx.Linear(8 * 14 * 14, 10, rngs=rngs)
        self.flatten_nhwc = flatten_nhwc  # the porting bug: flatten in (H, W, C) order

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x)))
        x = self.dropout(nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2)))
        if not self.flatten_nhwc:
            x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
        return self.fc(x.reshape(x.shape[0], -1))


class LinenCNN(nn.Module):
    """Its Flax linen port, called with `train: bool` as the Flax examples do."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(8, kernel_size=(3, 3), padding=1)(x)
        x = nn.relu(LinenTorchBatchNorm()(x, train))
        x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nn.Dropout(0.25, deterministic=not train)(x)
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW, as torch flattens
        return nn.Dense(10)(x.reshape(x.shape[0], -1))
