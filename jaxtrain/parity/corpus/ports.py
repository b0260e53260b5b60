"""Corpus cases with their own models and data, checked through `check_port` as a user calls it:
a conv/linear bias feeding a BatchNorm under scale-invariant optimizers, gradient accumulation,
and token models (a 10,000-word embedding with a padding row, a position table).

Each case is `data -> check_port keyword arguments` (data: the corpus' FashionMNIST
splits); `jaxtrain.parity.corpus` lists them beside its config cases.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxtrain.layers import LinenTorchBatchNorm

VOCAB, DIM, MAX_LEN, CLASSES = 10_000, 32, 16, 10
TOKEN_TRAIN, TOKEN_TEST = 640, 500


# --------------------------------------------------------------------------- a conv bias feeding BatchNorm


def torch_conv_bn():
    """Conv2d (with its default bias) -> BatchNorm2d -> ReLU -> MaxPool2d -> Linear. The conv bias
    has zero gradient in exact arithmetic (BatchNorm subtracts the batch mean)."""
    import torch
    from torch import nn as tnn

    class ConvBN(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv = tnn.Conv2d(1, 8, kernel_size=3, padding=1)
            self.bn = tnn.BatchNorm2d(8)
            self.fc = tnn.Linear(8 * 14 * 14, 10)

        def forward(self, x):
            x = tnn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
            return self.fc(torch.flatten(x, 1))

    torch.manual_seed(0)
    return ConvBN()


class LinenConvBN(nn.Module):
    """Its linen port (NHWC inside, NCHW before flattening, torch-semantics BatchNorm)."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.relu(LinenTorchBatchNorm()(nn.Conv(8, kernel_size=(3, 3), padding=1)(x), train))
        x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2)).transpose(0, 3, 1, 2)
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def conv_bn(optimizer: str, **optimizer_kwargs):
    def case(data):
        train, test = data
        return dict(torch_model=torch_conv_bn(), flax_model=LinenConvBN(),
                    train=(train.images[:, None], train.labels), test=(test.images[:, None], test.labels),
                    optimizer=optimizer, optimizer_kwargs=optimizer_kwargs, steps=40, flax_input="nhwc")

    return case


# --------------------------------------------------------------------------- gradient accumulation


def accumulation(use_grad_mean: bool):
    """The tutorial's MLP, 2 batches per step (torch's loop: `(loss / 2).backward()` each batch, step every
    second); the port accumulates with its own optax.MultiSteps (the mean, unless `use_grad_mean` is False:
    it then steps with the sum of the gradients, twice too large)."""
    def case(data):
        from jaxtrain.models import make_model
        from jaxtrain.config import make_config
        from torchref.models import make_model as make_torch_model

        import torch

        config = make_config()
        torch.manual_seed(0)
        tx = optax.MultiSteps(optax.sgd(0.05), every_k_schedule=2, use_grad_mean=use_grad_mean)
        train, test = data
        return dict(torch_model=make_torch_model(config), flax_model=make_model(config),
                    train=(train.images[:, None], train.labels), test=(test.images[:, None], test.labels),
                    optimizer=(lambda params: torch.optim.SGD(params, lr=0.05), tx.gradient_transformation()),
                    accumulate=2, steps=50)

    return case


# --------------------------------------------------------------------------- token models


def token_data(seed: int = 0):
    """Sequences of MAX_LEN token ids from a VOCAB-word vocabulary, right-padded with id 0 after a
    random length (4..MAX_LEN), and a class per sequence: (train, test) as (ids, labels) pairs."""
    rng = np.random.default_rng(seed)
    n = TOKEN_TRAIN + TOKEN_TEST
    ids = rng.integers(1, VOCAB, size=(n, MAX_LEN))
    lengths = rng.integers(4, MAX_LEN + 1, size=n)
    ids[np.arange(MAX_LEN)[None, :] >= lengths[:, None]] = 0
    labels = (ids[:, 0] % CLASSES).astype(np.int64)
    return (ids[:TOKEN_TRAIN], labels[:TOKEN_TRAIN]), (ids[TOKEN_TRAIN:], labels[TOKEN_TRAIN:])


def torch_bag():
    """nn.Embedding(VOCAB, DIM, padding_idx=0) plus a learned position table, averaged over the
    positions (pads included: their row is zero and torch never trains it), tanh, Linear."""
    import torch
    from torch import nn as tnn

    class Bag(tnn.Module):
        def __init__(self):
            super().__init__()
            self.embed = tnn.Embedding(VOCAB, DIM, padding_idx=0)
            self.pos = tnn.Embedding(MAX_LEN, DIM)
            self.head = tnn.Linear(DIM, CLASSES)

        def forward(self, ids):
            h = self.embed(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
            return self.head(torch.tanh(h.mean(1)))

    torch.manual_seed(0)
    return Bag()


class NnxBag(nnx.Module):
    """Its NNX port. nnx.Embed has no padding_idx: the port zeroes the padding rows' output, so no
    gradient reaches row 0 (`train_padding_row` forgets that); `clamp_positions` reads the position
    table through min(position, MAX_LEN - 2), an off-by-one that only the last position sees."""

    def __init__(self, train_padding_row: bool = False, clamp_positions: bool = False):
        rngs = nnx.Rngs(0)
        self.embed = nnx.Embed(VOCAB, DIM, rngs=rngs)
        self.pos = nnx.Embed(MAX_LEN, DIM, rngs=rngs)
        self.head = nnx.Linear(DIM, CLASSES, rngs=rngs)
        self.train_padding_row, self.clamp_positions = train_padding_row, clamp_positions

    def __call__(self, ids):
        tokens = self.embed(ids)
        if not self.train_padding_row:
            tokens = tokens * (ids != 0)[..., None].astype(tokens.dtype)
        positions = jnp.arange(ids.shape[1])
        if self.clamp_positions:
            positions = jnp.minimum(positions, MAX_LEN - 2)
        return self.head(jnp.tanh((tokens + self.pos(positions)).mean(1)))


def bag(optimizer: str = "adam", **port):
    def case(data):
        train, test = token_data()
        return dict(torch_model=torch_bag(), flax_model=NnxBag(**port), train=train, test=test,
                    optimizer=optimizer, optimizer_kwargs={"lr": 1e-2}, steps=50)

    return case
