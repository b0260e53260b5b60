"""Corpus cases for habits of real torch code that are not porting bugs, and the bugs that hide behind them:
a model that changes its inputs in place (`position_ids += offset`), a 0-dimensional parameter, a causal mask
filled with `torch.finfo` of one dtype into a tensor of torch's default dtype; a scale inside torch's embedding
module that the port applies after its nn.Embed (a layer boundary that moved); a logits bias torch keeps as a
buffer and the port as a parameter; a position table torch freezes and the port reads behind stop_gradient; an
autoencoder port that returns channels-last images where torch returns NCHW.

Each entry of `HEALTHY`/`BUGS` is `data -> check_port keyword arguments` (the cases make their own token data).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

VOCAB, T, D, OFFSET = 13, 6, 8, 2


class TorchHabits(torch.nn.Module):
    """A one-head causal attention LM, written with three habits of transformers' code."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, D)
        self.positions = torch.nn.Embedding(T + OFFSET, D)
        self.value = torch.nn.Linear(D, D)
        self.head = torch.nn.Linear(D, VOCAB)
        self.logit_scale = torch.nn.Parameter(torch.tensor(0.7))  # 0-dimensional

    def forward(self, ids, position_ids):
        position_ids += OFFSET  # in place, on the tensor it was given (OPT's learned positions start at 2)
        h = self.embed(ids) + self.positions(position_ids)
        causal = torch.ones(T, T, dtype=torch.bool).triu(1)
        mask = torch.zeros(T, T).masked_fill(causal, torch.finfo(h.dtype).min)  # torch's default dtype
        scores = h @ h.transpose(1, 2) / math.sqrt(D) + mask
        return self.head(torch.softmax(scores, -1) @ self.value(h)) * self.logit_scale.exp()


class NnxHabits(nnx.Module):
    def __init__(self, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
        self.positions = nnx.Embed(T + OFFSET, D, rngs=rngs)
        self.value = nnx.Linear(D, D, rngs=rngs)
        self.head = nnx.Linear(D, VOCAB, rngs=rngs)
        self.logit_scale = nnx.Param(jnp.asarray(0.0))

    def __call__(self, ids, position_ids):
        h = self.embed(ids) + self.positions(position_ids + OFFSET)
        causal = jnp.triu(jnp.ones((T, T), bool), 1)
        scores = jnp.where(causal, jnp.finfo(h.dtype).min, h @ jnp.swapaxes(h, 1, 2) / math.sqrt(D))
        return self.head(nnx.softmax(scores, -1) @ self.value(h)) * jnp.exp(self.logit_scale[...])


def lm_data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (n, T))
    positions = np.broadcast_to(np.arange(T), (n, T)).copy()
    return (ids, positions), np.roll(ids, -1, axis=1)


CHECK = dict(optimizer="adam", optimizer_kwargs={"lr": 1e-2}, batch_size=32, steps=4)


class ScaledEmbedding(torch.nn.Embedding):
    """An embedding that scales its own output by sqrt(d), as several transformers families' do."""

    def forward(self, ids):
        return super().forward(ids) * math.sqrt(self.embedding_dim)


class TorchScaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.embed = ScaledEmbedding(VOCAB, D)
        self.proj = torch.nn.Linear(D, D)
        self.head = torch.nn.Linear(D, VOCAB)

    def forward(self, ids):
        return self.head(torch.tanh(self.proj(self.embed(ids))).mean(1))


class NnxScaled(nnx.Module):
    """The port scales after its nn.Embed: the same model, the boundary elsewhere."""

    def __init__(self, activation=jnp.tanh, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
        self.proj = nnx.Linear(D, D, rngs=rngs)
        self.head = nnx.Linear(D, VOCAB, rngs=rngs)
        self.activation = activation

    def __call__(self, ids):
        return self.head(self.activation(self.proj(self.embed(ids) * math.sqrt(D))).mean(1))


class TorchBiasBuffer(torch.nn.Module):
    """A tied LM head and a logits bias kept as a buffer on the model itself (BART/Marian's final_logits_bias)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.embed = torch.nn.Embedding(VOCAB, D)
        self.proj = torch.nn.Linear(D, D)
        self.lm_head = torch.nn.Linear(D, VOCAB, bias=False)
        self.lm_head.weight = self.embed.weight
        self.register_buffer("final_logits_bias", 0.1 * torch.randn(1, VOCAB))

    def forward(self, ids):
        return self.lm_head(torch.tanh(self.proj(self.embed(ids)))) + self.final_logits_bias


class NnxBiasParam(nnx.Module):
    """Its port: the head through embed.attend, the bias an nnx.Param behind stop_gradient."""

    def __init__(self, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
        self.proj = nnx.Linear(D, D, rngs=rngs)
        self.final_logits_bias = nnx.Param(jnp.zeros((1, VOCAB)))

    def __call__(self, ids):
        bias = jax.lax.stop_gradient(self.final_logits_bias[...])
        return self.embed.attend(jnp.tanh(self.proj(self.embed(ids)))) + bias


class TorchFrozenTable(torch.nn.Module):
    """A position table torch freezes (requires_grad_(False)); the port reads its table behind stop_gradient."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.embed = torch.nn.Embedding(VOCAB, D)
        self.pos = torch.nn.Embedding(T, D)
        self.pos.requires_grad_(False)
        self.head = torch.nn.Linear(D, VOCAB)

    def forward(self, ids):
        return self.head(torch.tanh(self.embed(ids) + self.pos(torch.arange(ids.shape[1]))))


class NnxFrozenTable(nnx.Module):
    def __init__(self, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
        self.pos = nnx.Embed(T, D, rngs=rngs)
        self.head = nnx.Linear(D, VOCAB, rngs=rngs)

    def __call__(self, ids):
        pos = jax.lax.stop_gradient(self.pos.embedding[...])
        return self.head(jnp.tanh(self.embed(ids) + pos[None, : ids.shape[1]]))


class TorchAutoencoder(torch.nn.Module):
    """A small convolutional autoencoder on 3-channel images, NCHW in and out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.enc = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.dec = torch.nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.dec(torch.relu(self.enc(x))))


class NnxAutoencoder(nnx.Module):
    """Its port, channels-last throughout as Flax writes it: NHWC in (flax_input="nhwc") and NHWC out."""

    def __init__(self, squash=jax.nn.sigmoid, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.enc = nnx.Conv(3, 8, (3, 3), padding=1, rngs=rngs)
        self.dec = nnx.Conv(8, 3, (3, 3), padding=1, rngs=rngs)
        self.squash = squash

    def __call__(self, x):
        return self.squash(self.dec(nnx.relu(self.enc(x))))


def _autoencoder(flax_model):
    def case(data=None):
        images = np.random.default_rng(4).random((96, 3, 8, 8), dtype=np.float32)
        return dict(torch_model=TorchAutoencoder(), flax_model=flax_model(), train=(images, images),
                    test=(images[:32], images[:32]), loss="mse", flax_input="nhwc", **CHECK)

    return case


ADAMW = {**CHECK, "optimizer": "adamw", "optimizer_kwargs": {"lr": 1e-2, "weight_decay": 0.1}}


class ShiftedHabits(NnxHabits):
    """The habits' port forgetting the position offset: a real bug beside them."""

    def __call__(self, ids, position_ids):
        return super().__call__(ids, position_ids - OFFSET)


def _case(torch_model, flax_model, targets=lambda y: y, **kwargs):
    def case(data=None):
        (ids, positions), y = lm_data()
        inputs = (ids, positions) if isinstance(flax_model(), NnxHabits) else ids
        test = tuple(a[:32] for a in inputs) if isinstance(inputs, tuple) else inputs[:32]
        return dict(torch_model=torch_model(), flax_model=flax_model(), train=(inputs, targets(y)),
                    test=(test, targets(y)[:32]), **{**CHECK, **kwargs})

    return case


def _first(y):
    return y[:, 0]


HEALTHY = {
    "habits_in_place_scalar_default_dtype": _case(TorchHabits, NnxHabits),
    "embedding_scale_across_boundary": _case(TorchScaled, NnxScaled, _first),
    "logits_bias_buffer_as_param": _case(TorchBiasBuffer, NnxBiasParam),
    "frozen_table_behind_stop_gradient": _case(TorchFrozenTable, NnxFrozenTable),
    "autoencoder_output_channels_last": _autoencoder(NnxAutoencoder),
}
# name: (case, stage, step, tensor, why, trap)
BUGS = {
    "position_offset_forgotten": (
        _case(TorchHabits, ShiftedHabits), "forward", 1, "positions (output)",
        "learned positions read without the model's offset of 2, beside in-place inputs and a 0-d parameter", None),
    "activation_after_moved_boundary": (
        _case(TorchScaled, lambda: NnxScaled(activation=jax.nn.relu), _first), "forward", 1, "head (output)",
        "relu where torch has tanh, after an embedding whose sqrt(d) scale moved across the layer boundary", None),
    "decay_on_buffer_kept_as_param": (
        _case(TorchBiasBuffer, NnxBiasParam, **ADAMW), "forward", 2, "output",
        "a logits bias torch keeps as a buffer, a Param behind stop_gradient in the port: AdamW decays it",
        "frozen tensor trained"),
    "decay_on_frozen_table": (
        _case(TorchFrozenTable, NnxFrozenTable, **ADAMW), "updates", 1, "pos.weight",
        "a position table torch freezes (requires_grad_(False)), trainable behind stop_gradient in the port: "
        "AdamW decays it", "frozen tensor trained"),
    "autoencoder_sigmoid_forgotten": (
        _autoencoder(lambda: NnxAutoencoder(squash=lambda x: x)), "forward", 1, "output",
        "the port of an autoencoder that returns NHWC (torch: NCHW) leaves out the final sigmoid", None),
}
