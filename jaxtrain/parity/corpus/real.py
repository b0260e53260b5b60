"""Hand-written ports of common `torch.nn` layers, shaped like users' code, for the verdict corpus
and the tests: token inputs as tuples and dicts, per-token targets, structured outputs,
`nn.MultiheadAttention`, `nn.LSTM` (a port keeping torch's tensors, and one on Flax's LSTMCell,
whose single bias per gate trains differently), a tied-embedding LM, modules named `value`.

Each entry of `HEALTHY`/`BUGS` is `data -> check_port keyword arguments` (data unused: the cases
make their own token data), listed by `jaxtrain.parity.corpus`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import linen as nn, nnx
from torch import nn as tnn

from jaxtrain.layers import LinenTorchBatchNorm

VOCAB, T, N = 20, 6, 96
SHORT = dict(optimizer="adam", optimizer_kwargs={"lr": 1e-2}, batch_size=32, steps=6)


def tokens(seed=0, n=N):
    """Random ids (1..VOCAB-1), an attention mask of random lengths, labels from the first id."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (n, T))
    mask = (np.arange(T)[None] < rng.integers(2, T + 1, n)[:, None]).astype(np.int64)
    return ids, mask, (ids[:, 0] % 3)


class TorchBag(tnn.Module):
    """Mean of the unmasked token embeddings -> Linear; returns a dict (as a model's output)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = tnn.Embedding(VOCAB, 8)
        self.head = tnn.Linear(8, 3)

    def forward(self, ids, mask):
        m = mask.unsqueeze(-1).to(self.embed.weight.dtype)
        return {"logits": self.head((self.embed(ids) * m).sum(1) / m.sum(1)), "aux": m}


@dataclasses.dataclass
class Out:
    hidden: object
    scores: object


class NnxBag(nnx.Module):
    def __init__(self):
        self.embed = nnx.Embed(VOCAB, 8, rngs=nnx.Rngs(0))
        self.head = nnx.Linear(8, 3, rngs=nnx.Rngs(1))

    def __call__(self, ids, mask):
        m = mask[..., None].astype(self.embed.embedding.dtype)
        pooled = (self.embed(ids) * m).sum(1) / m.sum(1)
        return Out(hidden=pooled, scores=self.head(pooled))


class TorchTagger(tnn.Module):
    """Per-token classes: (B, T) ids -> (B, T, C) logits; targets (B, T)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = tnn.Embedding(VOCAB, 8)
        self.out = tnn.Linear(8, 4)

    def forward(self, ids):
        return self.out(torch.tanh(self.embed(ids)))


class LinenTagger(nn.Module):
    @nn.compact
    def __call__(self, ids):
        return nn.Dense(4, name="out")(jnp.tanh(nn.Embed(VOCAB, 8, name="embed")(ids)))


class TorchAttention(tnn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = tnn.Embedding(VOCAB, 16)
        self.attn = tnn.MultiheadAttention(16, 4, batch_first=True)
        self.norm = tnn.LayerNorm(16)
        self.head = tnn.Linear(16, 3)

    def forward(self, ids):
        x = self.embed(ids)
        a, _ = self.attn(x, x, x)
        return self.head(self.norm(x + a).mean(1))


def _unscaled_attention(query, key, value, **kwargs):
    """dot_product_attention without its 1/sqrt(head_dim): the scale forgotten (it cancels the one inside)."""
    return nnx.dot_product_attention(query * np.sqrt(query.shape[-1]), key, value, **kwargs)


class NnxAttention(nnx.Module):
    def __init__(self, scaled=True):
        rngs = nnx.Rngs(0)
        self.embed = nnx.Embed(VOCAB, 16, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(4, 16, decode=False, rngs=rngs, **(
            {} if scaled else {"attention_fn": _unscaled_attention}))
        self.norm = nnx.LayerNorm(16, epsilon=1e-5, rngs=rngs)
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, ids):
        x = self.embed(ids)
        return self.head(self.norm(x + self.attn(x)).mean(1))


class TorchLSTM(tnn.Module):
    def __init__(self, vocab=VOCAB, embed=8, hidden=12, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.embed = tnn.Embedding(vocab, embed)
        self.lstm = tnn.LSTM(embed, hidden, batch_first=True)
        self.head = tnn.Linear(hidden, classes)

    def forward(self, ids):
        out, _ = self.lstm(self.embed(ids))
        return self.head(out[:, -1])


class TorchStyleLSTM(nn.Module):
    """A user's Flax LSTM keeping torch's tensors (weight_ih/hh, bias_ih/hh, gates i f g o)."""

    hidden: int = 12
    gates: str = "ifgo"  # the order the fused gate rows are split in ("igfo": TensorFlow's i, j, f, o)
    scan: bool = False  # the time loop as one lax.scan (one compiled cell) instead of unrolled in Python

    @nn.compact
    def __call__(self, x):
        h4 = 4 * self.hidden
        w_ih = self.param("weight_ih_l0", nn.initializers.lecun_normal(), (h4, x.shape[-1]))
        w_hh = self.param("weight_hh_l0", nn.initializers.lecun_normal(), (h4, self.hidden))
        b_ih = self.param("bias_ih_l0", nn.initializers.zeros, (h4,))
        b_hh = self.param("bias_hh_l0", nn.initializers.zeros, (h4,))
        h = c = jnp.zeros((x.shape[0], self.hidden), x.dtype)

        def cell(carry, x_t):
            h, c = carry
            i, f, g, o = (dict(zip(self.gates, jnp.split(x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh, 4, axis=-1)))[k]
                          for k in "ifgo")
            c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
            h = nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        if self.scan:
            return jnp.swapaxes(jax.lax.scan(cell, (h, c), jnp.swapaxes(x, 0, 1))[1], 0, 1)
        outs = []
        for t in range(x.shape[1]):
            (h, c), out = cell((h, c), x[:, t])
            outs.append(out)
        return jnp.stack(outs, 1)


class LinenLSTM(nn.Module):
    cell: str = "torch"
    gates: str = "ifgo"
    vocab: int = VOCAB
    embed: int = 8
    hidden: int = 12
    classes: int = 3
    scan: bool = False

    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(self.vocab, self.embed, name="embed")(ids)
        if self.cell == "torch":
            x = TorchStyleLSTM(hidden=self.hidden, gates=self.gates, scan=self.scan, name="lstm")(x)
        else:
            x = nn.RNN(nn.LSTMCell(self.hidden), name="lstm")(x)
        return nn.Dense(self.classes, name="head")(x[:, -1])


class TorchTiedLM(tnn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = tnn.Embedding(VOCAB, 8)
        self.mix = tnn.Linear(8, 8)
        self.lm_head = tnn.Linear(8, VOCAB, bias=False)
        self.lm_head.weight = self.embed.weight  # tied

    def forward(self, ids):
        return self.lm_head(torch.tanh(self.mix(self.embed(ids))))


class NnxTiedLM(nnx.Module):
    def __init__(self, tied=True):
        rngs = nnx.Rngs(0)
        self.embed = nnx.Embed(VOCAB, 8, rngs=rngs)
        self.mix = nnx.Linear(8, 8, rngs=rngs)
        if not tied:  # the porting mistake: a head of its own, starting from the embedding's values
            self.lm_head = nnx.Linear(8, VOCAB, use_bias=False, rngs=rngs)

    def __call__(self, ids):
        x = jnp.tanh(self.mix(self.embed(ids)))
        return self.lm_head(x) if hasattr(self, "lm_head") else self.embed.attend(x)


class TorchValue(tnn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.key = tnn.Linear(4, 4)
        self.value = tnn.Linear(4, 3)

    def forward(self, x):
        return self.value(torch.relu(self.key(x)))


class NnxValue(nnx.Module):
    def __init__(self):
        self.key = nnx.Linear(4, 4, rngs=nnx.Rngs(0))
        self.value = nnx.Linear(4, 3, rngs=nnx.Rngs(1))

    def __call__(self, x):
        return self.value(nnx.relu(self.key(x)))


class NnxPackedAttention(nnx.Module):
    """Attention ported with one packed qkv Dense (in, 3E): no rule knows it; a weight_map does."""

    def __init__(self):
        rngs = nnx.Rngs(0)
        self.embed = nnx.Embed(VOCAB, 16, rngs=rngs)
        self.qkv = nnx.Linear(16, 48, rngs=rngs)
        self.proj = nnx.Linear(16, 16, rngs=rngs)
        self.norm = nnx.LayerNorm(16, epsilon=1e-5, rngs=rngs)
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, ids):
        x = self.embed(ids)
        b, t, e = x.shape
        q, k, v = (a.reshape(b, t, 4, 4) for a in jnp.split(self.qkv(x), 3, axis=-1))
        w = nnx.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / 2.0, axis=-1)
        a = self.proj(jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, t, e))
        return self.head(self.norm(x + a).mean(1))



class TorchGRU(tnn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = tnn.Embedding(VOCAB, 8)
        self.gru = tnn.GRU(8, 12, batch_first=True)
        self.head = tnn.Linear(12, 3)

    def forward(self, ids):
        out, _ = self.gru(self.embed(ids))
        return self.head(out[:, -1])


class TorchStyleGRU(nn.Module):
    """A user's Flax GRU keeping torch's tensors and equations (n = tanh(W_in x + b_in + r * (W_hn h + b_hn)))."""

    hidden: int = 12

    @nn.compact
    def __call__(self, x):
        h3 = 3 * self.hidden
        w_ih = self.param("weight_ih_l0", nn.initializers.lecun_normal(), (h3, x.shape[-1]))
        w_hh = self.param("weight_hh_l0", nn.initializers.lecun_normal(), (h3, self.hidden))
        b_ih = self.param("bias_ih_l0", nn.initializers.zeros, (h3,))
        b_hh = self.param("bias_hh_l0", nn.initializers.zeros, (h3,))
        h = jnp.zeros((x.shape[0], self.hidden), x.dtype)
        outs = []
        for t in range(x.shape[1]):
            xr, xz, xn = jnp.split(x[:, t] @ w_ih.T + b_ih, 3, axis=-1)
            hr, hz, hn = jnp.split(h @ w_hh.T + b_hh, 3, axis=-1)
            r, z = nn.sigmoid(xr + hr), nn.sigmoid(xz + hz)
            h = (1 - z) * jnp.tanh(xn + r * hn) + z * h
            outs.append(h)
        return jnp.stack(outs, 1)


class LinenGRU(nn.Module):
    cell: str = "torch"

    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(VOCAB, 8, name="embed")(ids)
        x = TorchStyleGRU(name="gru")(x) if self.cell == "torch" else nn.RNN(nn.GRUCell(12), name="gru")(x)
        return nn.Dense(3, name="head")(x[:, -1])


class TorchEncoder(tnn.Module):
    """Embedding -> nn.TransformerEncoderLayer (post-norm, ReLU) -> mean -> Linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = tnn.Embedding(VOCAB, 16)
        self.encoder = tnn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = tnn.Linear(16, 3)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)).mean(1))


class NnxEncoderLayer(nnx.Module):
    """The encoder layer ported to NNX with torch's attribute names."""

    def __init__(self, d=16, heads=4, ff=32, rngs=None):
        self.self_attn = nnx.MultiHeadAttention(heads, d, decode=False, rngs=rngs)
        self.linear1, self.linear2 = nnx.Linear(d, ff, rngs=rngs), nnx.Linear(ff, d, rngs=rngs)
        self.norm1, self.norm2 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs), nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)

    def __call__(self, x):
        x = self.norm1(x + self.self_attn(x))
        return self.norm2(x + self.linear2(nnx.relu(self.linear1(x))))


class NnxEncoder(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.embed = nnx.Embed(VOCAB, 16, rngs=rngs)
        self.encoder = NnxEncoderLayer(rngs=rngs)
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, ids):
        return self.head(self.encoder(self.embed(ids)).mean(1))


class TorchUpsample(tnn.Module):
    """Conv2d (stride 2) -> ReLU -> ConvTranspose2d (stride 2, output_padding 1) -> Linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.down = tnn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.up = tnn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)
        self.head = tnn.Linear(2 * 8 * 8, 3)

    def forward(self, x):
        return self.head(torch.flatten(self.up(torch.relu(self.down(x))), 1))


class LinenUpsample(nn.Module):
    """Its linen port, NHWC inside: torch's padding p of a transposed conv is k - 1 - p on each side
    (plus output_padding at the end)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), name="down")(x))
        x = nn.ConvTranspose(2, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)), name="up")(x)
        return nn.Dense(3, name="head")(x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1))


class TorchDepthwise(tnn.Module):
    """A depthwise conv (groups = channels) -> ReLU -> AvgPool2d(3, 2, padding=1) -> Linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.dw = tnn.Conv2d(3, 6, 3, padding=1, groups=3)
        self.pool = tnn.AvgPool2d(3, stride=2, padding=1)
        self.head = tnn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(torch.relu(self.dw(x))), 1))


class NnxDepthwise(nnx.Module):
    def __init__(self, count_include_pad=True):
        rngs = nnx.Rngs(0)
        self.dw = nnx.Conv(3, 6, (3, 3), padding=1, feature_group_count=3, rngs=rngs)
        self.head = nnx.Linear(6 * 4 * 4, 3, rngs=rngs)
        self.count_include_pad = count_include_pad

    def __call__(self, x):
        x = nnx.avg_pool(nnx.relu(self.dw(x)), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                         count_include_pad=self.count_include_pad)
        return self.head(x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1))


class TorchConvBN(tnn.Module):
    """Conv2d -> BatchNorm2d -> ReLU -> flatten -> Linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = tnn.Conv2d(1, 4, 3, padding=1)
        self.bn = tnn.BatchNorm2d(4)
        self.head = tnn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.head(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


class LinenConvBN(nn.Module):
    """Its linen port (jaxtrain.layers' torch-convention BatchNorm); `train_flag=False` plants the classic
    bug: the BatchNorm called with train=False always (running statistics in training too)."""

    train_flag: bool = True

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(4, (3, 3), padding=1, name="conv")(x)
        x = LinenTorchBatchNorm(name="bn")(x, train and self.train_flag)
        x = nn.relu(x).transpose(0, 3, 1, 2)
        return nn.Dense(3, name="head")(x.reshape(x.shape[0], -1))


class TorchNormedConv(tnn.Module):
    """A GAN-discriminator-shaped block: Conv2d under spectral_norm (or weight_norm) -> LeakyReLU ->
    flatten -> Linear under the same parametrization."""

    def __init__(self, norm: str = "spectral"):
        super().__init__()
        torch.manual_seed(0)
        wrap = getattr(tnn.utils.parametrizations, f"{norm}_norm")
        self.conv = wrap(tnn.Conv2d(3, 8, 3, stride=2, padding=1))
        self.head = wrap(tnn.Linear(8 * 4 * 4, 3))

    def forward(self, x):
        return self.head(torch.flatten(tnn.functional.leaky_relu(self.conv(x), 0.2), 1))


def _unit(x, eps):
    return x / jnp.maximum(jnp.linalg.norm(x), eps)


class SpectralNormed(nn.Module):
    """A user's linen port of torch's spectral_norm around a Dense or Conv: u and v kept in batch_stats;
    each training call does u = normalize(W v), v = normalize(W^T u), then W / (u . W v). `iterate=False`
    plants a porting mistake: the power iteration never runs (train not passed on)."""

    layer: nn.Module
    eps: float = 1e-12
    iterate: bool = True

    @nn.compact
    def __call__(self, x, train: bool):
        shape = (*getattr(self.layer, "kernel_size", ()), x.shape[-1], self.layer.features)
        kernel = self.param("kernel", self.layer.kernel_init, shape)
        bias = self.param("bias", nn.initializers.zeros, shape[-1:])
        w = kernel.reshape(-1, shape[-1]).T  # torch's weight matrix (out, rest)
        u = self.variable("batch_stats", "u", lambda: _unit(jnp.ones(w.shape[0], w.dtype), self.eps))
        v = self.variable("batch_stats", "v", lambda: _unit(jnp.ones(w.shape[1], w.dtype), self.eps))
        if train and self.iterate and not self.is_initializing():
            u.value = jax.lax.stop_gradient(_unit(w @ v.value, self.eps))
            v.value = jax.lax.stop_gradient(_unit(w.T @ u.value, self.eps))
        sigma = u.value @ (w @ v.value)
        return self.layer.apply({"params": {"kernel": kernel / sigma, "bias": bias}}, x)


class LinenNormedConv(nn.Module):
    """TorchNormedConv's port, NHWC inside: `norm` "spectral" (the hand-written SpectralNormed above),
    "flax spectral" (Flax's own nn.SpectralNorm) or "weight" (Flax's own nn.WeightNorm)."""

    norm: str = "spectral"
    iterate: bool = True

    @nn.compact
    def __call__(self, x, train: bool):
        if self.norm == "spectral":  # the layers only say what to compute: SpectralNormed owns their weights
            conv, head = nn.Conv(8, (3, 3), strides=(2, 2), padding=1, parent=None), nn.Dense(3, parent=None)
            conv, head = (SpectralNormed(m, iterate=self.iterate, name=n) for m, n in ((conv, "conv"), (head, "head")))
            call = lambda m, x: m(x, train)  # noqa: E731
            return self._forward(conv, head, call, x)
        conv, head = nn.Conv(8, (3, 3), strides=(2, 2), padding=1, name="conv"), nn.Dense(3, name="head")
        if self.norm == "flax spectral":
            conv, head = nn.SpectralNorm(conv), nn.SpectralNorm(head)
            call = lambda m, x: m(x, update_stats=train)  # noqa: E731
        else:
            conv, head = nn.WeightNorm(conv), nn.WeightNorm(head)
            call = lambda m, x: m(x)  # noqa: E731
        return self._forward(conv, head, call, x)

    @staticmethod
    def _forward(conv, head, call, x):
        x = nn.leaky_relu(call(conv, x), 0.2).transpose(0, 3, 1, 2)
        return call(head, x.reshape(x.shape[0], -1))


class TorchRotary(tnn.Module):
    """Embedding -> causal self-attention with rotary embeddings on q and k (Llama's rotate_half pairs,
    base `rope_theta`) -> mean over tokens -> Linear."""

    def __init__(self, rope_theta: float = 10000.0, heads: int = 2, dim: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.rope_theta, self.heads, self.head_dim = rope_theta, heads, dim // heads
        self.embed = tnn.Embedding(VOCAB, dim)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (tnn.Linear(dim, dim, bias=False) for _ in range(4))
        self.head = tnn.Linear(dim, 3)

    def rotate(self, x):
        d = self.head_dim
        inv_freq = self.rope_theta ** (-torch.arange(0, d, 2, dtype=x.dtype) / d)
        freqs = torch.outer(torch.arange(x.shape[2], dtype=x.dtype), inv_freq)
        cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()
        half = torch.cat((-x[..., d // 2:], x[..., : d // 2]), -1)
        return x * cos + half * sin

    def forward(self, ids):
        x = self.embed(ids)
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = tnn.functional.scaled_dot_product_attention(self.rotate(q), self.rotate(k), v, is_causal=True)
        return self.head(self.o_proj(out.transpose(1, 2).reshape(b, t, -1)).mean(1))


def rotary(x, layout: str = "half", base: float = 10000.0):
    """x (B, T, H, D) rotated at positions 0..T-1, pairs (i, i + D/2) (`half`) or (2i, 2i + 1) (`interleaved`)."""
    d = x.shape[-1]
    angle = jnp.arange(x.shape[1], dtype=x.dtype)[:, None] * base ** (-jnp.arange(0, d, 2, dtype=x.dtype) / d)
    cos, sin = jnp.cos(angle)[:, None, :], jnp.sin(angle)[:, None, :]
    if layout == "half":
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).reshape(x.shape)


class NnxRotary(nnx.Module):
    """TorchRotary's NNX port; `layout="interleaved"`, `base`, `causal=False` and `scaled=False` plant
    porting mistakes."""

    def __init__(self, layout: str = "half", base: float = 10000.0, heads: int = 2, dim: int = 16,
                 causal: bool = True, scaled: bool = True):
        rngs = nnx.Rngs(0)
        self.layout, self.base, self.heads, self.causal, self.scaled = layout, base, heads, causal, scaled
        self.embed = nnx.Embed(VOCAB, dim, rngs=rngs)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nnx.Linear(dim, dim, use_bias=False, rngs=rngs)
                                                              for _ in range(4))
        self.head = nnx.Linear(dim, 3, rngs=rngs)

    def __call__(self, ids):
        x = self.embed(ids)
        b, t, dim = x.shape
        q, k, v = (p(x).reshape(b, t, self.heads, -1) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = rotary(q, self.layout, self.base), rotary(k, self.layout, self.base)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k)
        if self.scaled:
            scores = scores / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        if self.causal:
            scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, -jnp.inf)
        out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), v).reshape(b, t, dim)
        return self.head(self.o_proj(out).mean(1))


class NnxNormedConv(nnx.Module):
    """TorchNormedConv's port on NNX's own wrappers: nnx.WeightNorm (its scales are plain arrays, not
    nnx.Param: no optimizer trains them, flax#5577) or nnx.SpectralNorm."""

    def __init__(self, norm: str = "weight"):
        rngs = nnx.Rngs(0)
        conv, head = nnx.Conv(3, 8, (3, 3), strides=(2, 2), padding=1, rngs=rngs), nnx.Linear(8 * 4 * 4, 3, rngs=rngs)
        wrap = nnx.WeightNorm if norm == "weight" else nnx.SpectralNorm
        self.conv, self.head = wrap(conv, rngs=rngs), wrap(head, rngs=rngs)

    def __call__(self, x):
        x = nnx.leaky_relu(self.conv(x), 0.2).transpose(0, 3, 1, 2)
        return self.head(x.reshape(x.shape[0], -1))


# --------------------------------------------------------------------------- corpus cases

LONG = dict(optimizer="adam", optimizer_kwargs={"lr": 1e-2}, batch_size=32, steps=30)


def _case(torch_model, flax_model, inputs, targets, **kwargs):
    half = len(targets) // 2
    from jaxtrain.inputs import rows

    return dict(torch_model=torch_model, flax_model=flax_model, train=(rows(inputs, slice(0, half)), targets[:half]),
                test=(rows(inputs, slice(half, None)), targets[half:]), **{**LONG, **kwargs})


def _bag_tuple(data):
    ids, mask, y = tokens(10, 192)
    return _case(TorchBag(), NnxBag(), (ids, mask), y, flax_output=lambda out: out.scores)


def _bag_dict(data):
    ids, mask, y = tokens(11, 192)
    return _case(TorchBag(), NnxBag(), {"ids": ids, "mask": mask}, y, flax_output=lambda out: out.scores)


def _tagger(data):
    ids, _, _ = tokens(12, 192)
    return _case(TorchTagger(), LinenTagger(), ids, ids % 4)


def _attention(data):
    ids, _, y = tokens(13, 192)
    return _case(TorchAttention(), NnxAttention(), ids, y)


def _lstm(data):
    ids, _, y = tokens(14, 192)
    return _case(TorchLSTM(), LinenLSTM(), ids, y)


def _tied_lm(data):
    ids, _, _ = tokens(15, 192)
    return _case(TorchTiedLM(), NnxTiedLM(), ids[:, :-1], ids[:, 1:])


def _untied_lm(data):
    ids, _, _ = tokens(15, 192)
    return _case(TorchTiedLM(), NnxTiedLM(tied=False), ids[:, :-1], ids[:, 1:])


def _lstm_flax_cell(data):
    ids, _, y = tokens(14, 192)
    return _case(TorchLSTM(), LinenLSTM(cell="flax"), ids, y, optimizer="sgd", optimizer_kwargs={"lr": 0.5})


def _lstm_gate_order(data):
    ids, _, y = tokens(14, 192)
    return _case(TorchLSTM(), LinenLSTM(gates="igfo"), ids, y)


def _attention_unscaled(data):
    ids, _, y = tokens(13, 192)
    return _case(TorchAttention(), NnxAttention(scaled=False), ids, y)


def _gru(data):
    ids, _, y = tokens(16, 192)
    return _case(TorchGRU(), LinenGRU(), ids, y)


def _gru_flax_cell(data):
    ids, _, y = tokens(16, 192)
    return _case(TorchGRU(), LinenGRU(cell="flax"), ids, y, optimizer="sgd", optimizer_kwargs={"lr": 0.5})


def _encoder(data):
    ids, _, y = tokens(17, 192)
    return _case(TorchEncoder(), NnxEncoder(), ids, y)


def _images(seed, channels, size=8):
    x = np.random.default_rng(seed).normal(size=(192, channels, size, size)).astype(np.float32)
    return x, (x[:, 0, :4].mean(axis=(1, 2)) > 0).astype(np.int64) + (x[:, -1, 4:].mean(axis=(1, 2)) > 0)


def _upsample(data):
    x, y = _images(18, 1)
    return _case(TorchUpsample(), LinenUpsample(), x, y, flax_input="nhwc")


def _depthwise(data):
    x, y = _images(19, 3)
    return _case(TorchDepthwise(), NnxDepthwise(), x, y, flax_input="nhwc")


def _depthwise_pad_excluded(data):
    x, y = _images(19, 3)
    return _case(TorchDepthwise(), NnxDepthwise(count_include_pad=False), x, y, flax_input="nhwc")


def _unflipped(name, array):
    """A hand-written weight_map that lays the transposed conv's kernel out as a plain conv's (no flip)."""
    return ("up.kernel", array.transpose(2, 3, 0, 1)) if name == "up.weight" else None


def _upsample_unflipped(data):
    x, y = _images(18, 1)
    return _case(TorchUpsample(), LinenUpsample(), x, y, flax_input="nhwc", weight_map=_unflipped)


def _conv_bn(data):
    x, y = _images(20, 1)
    return _case(TorchConvBN(), LinenConvBN(), x, y, flax_input="nhwc")


def _conv_bn_running_in_training(data):
    x, y = _images(20, 1)
    return _case(TorchConvBN(), LinenConvBN(train_flag=False), x, y, flax_input="nhwc")


def _normed(norm, port=None, **port_kwargs):
    def case(data):
        x, y = _images(21, 3)
        flax_model = NnxNormedConv(norm) if port == "nnx" else LinenNormedConv(port or norm, **port_kwargs)
        return _case(TorchNormedConv(norm), flax_model, x, y, flax_input="nhwc")

    return case


def _rotary(torch_theta=10000.0, **port):
    def case(data):
        ids, _, y = tokens(22, 192)
        return _case(TorchRotary(torch_theta), NnxRotary(**port), ids, y)

    return case


# The lines a user writes beyond the two models and the data, per case.
GLUE = {"real_conv_transpose2d": ["flax_input='nhwc'"], "real_depthwise_conv_avgpool": ["flax_input='nhwc'"],
        "real_conv_batchnorm": ["flax_input='nhwc'"], "real_spectral_norm": ["flax_input='nhwc'"],
        "real_weight_norm_flax_wrapper": ["flax_input='nhwc'"], "flax_spectral_norm_wrapper": ["flax_input='nhwc'"],
        "flax_nnx_weight_norm_wrapper": ["flax_input='nhwc'"], "real_bag_tuple_inputs": ["flax_output=lambda out: out.scores"],
        "real_bag_dict_inputs": ["flax_output=lambda out: out.scores"]}

HEALTHY = {"real_gru_torch_layout": _gru, "real_transformer_encoder_layer": _encoder,
           "real_conv_transpose2d": _upsample, "real_depthwise_conv_avgpool": _depthwise, "real_conv_batchnorm": _conv_bn, "real_bag_tuple_inputs": _bag_tuple, "real_bag_dict_inputs": _bag_dict,
           "real_tagger_sequence_targets": _tagger, "real_multihead_attention": _attention,
           "real_lstm_torch_layout": _lstm, "real_tied_embedding_lm": _tied_lm, "real_spectral_norm": _normed("spectral"),
           "real_weight_norm_flax_wrapper": _normed("weight"), "real_rotary_attention": _rotary()}
# torch's spectral_norm against Flax's own nn.SpectralNorm: the two libraries' power iterations differ
# (torch u then v and sigma = |W^T u|, Flax v then u and sigma = |W v|); NNX's WeightNorm does not train its
# scales (flax#5577): findings the check must name
FINDINGS = {"flax_spectral_norm_wrapper": (_normed("spectral", "flax spectral"), "layer parametrisation"),
            "flax_nnx_weight_norm_wrapper": (_normed("weight", "nnx"), "layer parametrisation")}
