"""Each layout in `jaxtrain.parity.layouts` against the real layers: torch's module and Flax's
(linen and NNX) give the same outputs once torch's tensors are laid out, and `to_torch` carries
Flax's leaves back (exactly where the layout is one to one, as an adjoint where biases are summed)."""

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp
from flax import linen as nn, nnx
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxtrain.parity import layouts

torch.manual_seed(0)


def _torch_tensors(module) -> dict:
    return {k: v.detach().numpy() for k, v in module.named_parameters()}


def _linen_params(module, x):
    params = module.init(jax.random.key(0), x)["params"]
    return {".".join(k): np.asarray(v).shape for k, v in flatten_dict(params).items()}


def _linen_apply(module, flat: dict, x):
    tree = unflatten_dict({tuple(k.split(".")): jnp.asarray(v) for k, v in flat.items()})
    return np.asarray(module.apply({"params": tree}, x))


def _nnx_shapes(module) -> dict:
    return {".".join(map(str, k)): v.value.shape for k, v in nnx.state(module, nnx.Param).flat_state()}


def _nnx_apply(module, flat: dict, x):
    state = nnx.state(module, nnx.Param)
    for k, v in state.flat_state():
        v.value = jnp.asarray(flat[".".join(map(str, k))])
    nnx.update(module, state)
    return np.asarray(module(x))


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


RECURRENT = {"LSTM": (torch.nn.LSTM, nn.LSTMCell, nnx.LSTMCell), "GRU": (torch.nn.GRU, nn.GRUCell, nnx.GRUCell),
             "RNN": (torch.nn.RNN, nn.SimpleCell, nnx.SimpleCell)}


@pytest.mark.parametrize("kind,api", [(k, a) for k in RECURRENT for a in ("linen", "nnx")] + [("LSTM", "nnx fused")])
def test_recurrent_layers_run_alike(kind, api):
    torch_cls, linen_cell, nnx_cell = RECURRENT[kind]
    if api == "nnx fused":
        nnx_cell = nnx.OptimizedLSTMCell
    t = torch_cls(3, 4, batch_first=True)
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    want = t(torch.from_numpy(x))[0].detach().numpy()
    to_flax, to_torch, note = layouts.recurrent(kind)
    tensors = _torch_tensors(t)
    if api == "linen":
        m = nn.RNN(linen_cell(4))
        shapes = _linen_params(m, x)
        flat = to_flax(tensors, shapes)
        assert set(flat) == set(shapes)
        got = _linen_apply(m, flat, x)
    else:
        m = nnx.RNN(nnx_cell(3, 4, rngs=nnx.Rngs(0)))
        shapes = _nnx_shapes(m)
        flat = to_flax(tensors, shapes)
        assert set(flat) == set(shapes)
        got = _nnx_apply(m, flat, x)
    if kind == "GRU" and api == "nnx":
        # NNX's GRUCell has no hidden bias on the n gate: torch's is dropped and the note says so
        assert "no place" in note({k: v.shape for k, v in tensors.items()}, shapes)
        t.bias_hh_l0.data[8:] = 0
        want = t(torch.from_numpy(x))[0].detach().numpy()
    else:
        assert "twice as fast" in note({k: v.shape for k, v in tensors.items()}, shapes)
    _close(got, want)
    back = to_torch(flat, {k: v.shape for k, v in tensors.items()})
    for name in ("weight_ih_l0", "weight_hh_l0"):
        np.testing.assert_array_equal(back[name], tensors[name])


def test_two_layer_bidirectional_lstm_pairs_cells_in_torch_order():
    t = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    x = np.random.default_rng(1).normal(size=(2, 5, 3)).astype(np.float32)
    want = t(torch.from_numpy(x))[0].detach().numpy()

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i in range(2):
                x = nn.Bidirectional(nn.RNN(nn.LSTMCell(4)), nn.RNN(nn.LSTMCell(4)), name=f"layers_{i}")(x)
            return x

    m = Stack()
    shapes = _linen_params(m, x)
    to_flax, to_torch, _ = layouts.recurrent("LSTM")
    flat = to_flax(_torch_tensors(t), shapes)
    _close(_linen_apply(m, flat, x), want)


def test_recurrent_layout_refuses_what_has_no_place():
    t = torch.nn.LSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="proj_size"):
        layouts.recurrent("LSTM")[0](_torch_tensors(t), {"cell.ii.kernel": (3, 4)})
    t = torch.nn.LSTM(3, 4, num_layers=2)
    shapes = _linen_params(nn.RNN(nn.LSTMCell(4)), np.zeros((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match="2 layer"):
        layouts.recurrent("LSTM")[0](_torch_tensors(t), shapes)


@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize("bias", [True, False])
def test_multihead_attention_runs_alike(api, bias):
    t = torch.nn.MultiheadAttention(8, 2, batch_first=True, bias=bias)
    x = np.random.default_rng(2).normal(size=(2, 5, 8)).astype(np.float32)
    xt = torch.from_numpy(x)
    want = t(xt, xt, xt, need_weights=False)[0].detach().numpy()
    tensors = _torch_tensors(t)
    if api == "linen":
        m = nn.MultiHeadDotProductAttention(num_heads=2, use_bias=bias)
        shapes = _linen_params(m, x)
        flat = layouts.multihead_attention_to_flax(tensors, shapes)
        got = _linen_apply(m, flat, x)
    else:
        m = nnx.MultiHeadAttention(num_heads=2, in_features=8, decode=False, use_bias=bias, rngs=nnx.Rngs(0))
        shapes = _nnx_shapes(m)
        flat = layouts.multihead_attention_to_flax(tensors, shapes)
        got = _nnx_apply(m, flat, x)
    assert set(flat) == set(shapes)
    _close(got, want)
    back = layouts.multihead_attention_to_torch(flat, {k: v.shape for k, v in tensors.items()})
    assert set(back) == set(tensors)
    for k in tensors:
        np.testing.assert_array_equal(back[k], tensors[k])


@pytest.mark.parametrize("stride,padding,output_padding", [(1, 0, 0), (2, 1, 1), (2, 0, 0)])
def test_conv_transpose_runs_alike(stride, padding, output_padding):
    t = torch.nn.ConvTranspose2d(3, 5, 3, stride=stride, padding=padding, output_padding=output_padding)
    x = np.random.default_rng(3).normal(size=(2, 3, 6, 6)).astype(np.float32)
    want = t(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
    lo, hi = 3 - 1 - padding, 3 - 1 - padding + output_padding
    m = nn.ConvTranspose(5, (3, 3), strides=(stride, stride), padding=((lo, hi), (lo, hi)))
    xf = x.transpose(0, 2, 3, 1)
    flat = {"kernel": layouts.conv_transpose_kernel_to_flax(t.weight.detach().numpy()),
            "bias": t.bias.detach().numpy()}
    assert flat["kernel"].shape == _linen_params(m, xf)["kernel"]
    _close(_linen_apply(m, flat, xf), want)
    np.testing.assert_array_equal(layouts.conv_transpose_kernel_to_torch(flat["kernel"]), t.weight.detach().numpy())
