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


class TorchLinearWeights(nnx.Module):
    """A Linear's tensors in torch's layout (`weight` (out, in), `bias`), read by the layer that owns it
    (nn.MultiheadAttention's `out_proj`), never called as a layer of its own."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rngs: nnx.Rngs):
        init = torch_linear_init(in_features)
        self.weight = nnx.Param(init(rngs.params(), (out_features, in_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,))) if bias else None

    def apply(self, x):
        return x @ self.weight[...].T + (0.0 if self.bias is None else self.bias[...])


class TorchMultiheadAttention(nnx.Module):
    """nn.MultiheadAttention for NNX with torch's tensors (`in_proj_weight` (3E, E), `in_proj_bias`, `out_proj.weight`,
    `out_proj.bias`) and torch's call: `(output, weights)` from (query, key, value, key_padding_mask, need_weights,
    attn_mask, average_attn_weights, is_causal); masks as torch reads them (bool: True is not attended; float:
    added). The softmax runs in the inputs' dtype, as torch's does. No dropout on the attention weights."""

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, batch_first: bool = False, *,
                 rngs: nnx.Rngs):
        bound = (6.0 / (embed_dim + 3 * embed_dim)) ** 0.5  # torch's xavier_uniform_ over the fused (3E, E)
        self.in_proj_weight = nnx.Param(jax.random.uniform(rngs.params(), (3 * embed_dim, embed_dim),
                                                           minval=-bound, maxval=bound))
        self.in_proj_bias = nnx.Param(jnp.zeros((3 * embed_dim,))) if bias else None
        self.out_proj = TorchLinearWeights(embed_dim, embed_dim, bias, rngs=rngs)
        self.num_heads, self.batch_first = num_heads, batch_first

    def __call__(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                 average_attn_weights=True, is_causal=False):
        if not self.batch_first:  # (T, N, E) -> (N, T, E)
            query, key, value = (jnp.swapaxes(t, 0, 1) for t in (query, key, value))
        w = jnp.split(self.in_proj_weight[...], 3)
        b = jnp.split(self.in_proj_bias[...], 3) if self.in_proj_bias is not None else (0.0,) * 3
        heads = lambda t: t.reshape(*t.shape[:2], self.num_heads, -1).swapaxes(1, 2)  # noqa: E731  (N, H, T, D)
        q, k, v = (heads(t @ wi.T + bi) for t, wi, bi in zip((query, key, value), w, b))
        scores = (q * (q.shape[-1] ** -0.5)) @ jnp.swapaxes(k, -1, -2)
        if is_causal and attn_mask is None:
            attn_mask = ~jnp.tril(jnp.ones((q.shape[2], k.shape[2]), bool))
        if attn_mask is not None:
            scores = jnp.where(attn_mask, -jnp.inf, scores) if attn_mask.dtype == bool else scores + attn_mask
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]
            scores = jnp.where(pad, -jnp.inf, scores) if pad.dtype == bool else scores + pad
        weights = jax.nn.softmax(scores, axis=-1)
        out = (weights @ v).swapaxes(1, 2).reshape(query.shape[0], query.shape[1], -1)
        out = self.out_proj.apply(out)
        out = out if self.batch_first else jnp.swapaxes(out, 0, 1)
        if not need_weights:
            return out, None
        return out, (weights.mean(axis=1) if average_attn_weights else weights)


class TorchTransformerEncoderLayer(nnx.Module):
    """nn.TransformerEncoderLayer for NNX, torch's attribute names (`self_attn`, `linear1`, `linear2`, `norm1`,
    `norm2`, `dropout`, `dropout1`, `dropout2`) and its order of operations (post-norm, or `norm_first`)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.0,
                 activation: str = "relu", layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, *, rngs: nnx.Rngs):
        self.self_attn = TorchMultiheadAttention(d_model, nhead, bias=bias, batch_first=batch_first, rngs=rngs)
        self.linear1 = nnx.Linear(d_model, dim_feedforward, use_bias=bias, rngs=rngs)
        self.linear2 = nnx.Linear(dim_feedforward, d_model, use_bias=bias, rngs=rngs)
        self.norm1, self.norm2 = (nnx.LayerNorm(d_model, epsilon=layer_norm_eps, use_bias=bias, use_fast_variance=False,
                                                rngs=rngs) for _ in range(2))
        self.dropout, self.dropout1, self.dropout2 = (nnx.Dropout(dropout, rngs=rngs) for _ in range(3))
        self.activation = {"relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=False)}[activation]
        self.norm_first = norm_first

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal):
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=is_causal)[0]
        return self.dropout1(x)

    def _ff_block(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def __call__(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._ff_block(x))


class TorchTransformerDecoderLayer(nnx.Module):
    """nn.TransformerDecoderLayer for NNX, torch's attribute names (`self_attn`, `multihead_attn`, `linear1`,
    `linear2`, `norm1`..`norm3`, `dropout`, `dropout1`..`dropout3`) and its order of operations."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.0,
                 activation: str = "relu", layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, *, rngs: nnx.Rngs):
        self.self_attn = TorchMultiheadAttention(d_model, nhead, bias=bias, batch_first=batch_first, rngs=rngs)
        self.multihead_attn = TorchMultiheadAttention(d_model, nhead, bias=bias, batch_first=batch_first, rngs=rngs)
        self.linear1 = nnx.Linear(d_model, dim_feedforward, use_bias=bias, rngs=rngs)
        self.linear2 = nnx.Linear(dim_feedforward, d_model, use_bias=bias, rngs=rngs)
        self.norm1, self.norm2, self.norm3 = (nnx.LayerNorm(d_model, epsilon=layer_norm_eps, use_bias=bias,
                                                            use_fast_variance=False, rngs=rngs) for _ in range(3))
        self.dropout, self.dropout1, self.dropout2, self.dropout3 = (nnx.Dropout(dropout, rngs=rngs) for _ in range(4))
        self.activation = {"relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=False)}[activation]
        self.norm_first = norm_first

    def _sa_block(self, x, mask, padding, is_causal):
        return self.dropout1(self.self_attn(x, x, x, attn_mask=mask, key_padding_mask=padding, need_weights=False,
                                            is_causal=is_causal)[0])

    def _mha_block(self, x, memory, mask, padding, is_causal):
        return self.dropout2(self.multihead_attn(x, memory, memory, attn_mask=mask, key_padding_mask=padding,
                                                 need_weights=False, is_causal=is_causal)[0])

    def _ff_block(self, x):
        return self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def __call__(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                 memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False):
        x = tgt
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
            x = x + self._mha_block(self.norm2(x), memory, memory_mask, memory_key_padding_mask, memory_is_causal)
            return x + self._ff_block(self.norm3(x))
        x = self.norm1(x + self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
        x = self.norm2(x + self._mha_block(x, memory, memory_mask, memory_key_padding_mask, memory_is_causal))
        return self.norm3(x + self._ff_block(x))
