"""The automatic weight mapping (jaxtrain.parity.mapping) and the pure-function view of Flax
models (jaxtrain.flax_model): layouts, forward parity in train and eval mode, mapping errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxtrain.config import Config
from jaxtrain.errors import PortMappingError
from jaxtrain.flax_model import leaves_by_path, pure_model
from jaxtrain.models import make_model
from jaxtrain.parity.check import build_port, check_port
from jaxtrain.parity.runners import step_masks
from torchref.models import make_model as make_torch_model


def _port(torch_model, flax_model, x, y, flax_input=None, weight_map=None, **config):
    from jaxtrain.config import make_config
    from jaxtrain.data import Split

    return build_port(torch_model, flax_model, Split(x.astype(np.float32), y), None, make_config(**config),
                      "cross_entropy", "sgd", flax_input, weight_map)


def test_tutorial_models_pair_by_call_order_and_round_trip():
    torch_model = make_torch_model(Config(model="mlp_bn_dropout"))
    x = np.random.default_rng(0).random((4, 1, 28, 28))
    port = _port(torch_model, make_model(Config(model="mlp_bn_dropout")), x, np.zeros(4, np.int64))
    assert [(t, f) for t, f, _ in port.mapping.layers] == [
        (f"linear_relu_stack.{i}", f"linear_relu_stack.layers.{i}") for i in (0, 1, 4, 5, 8)]
    params, buffers = port.mapping.to_flax(port.flax, port.weights)
    assert leaves_by_path(params)["linear_relu_stack.layers.0.kernel"].shape == (784, 512)  # (in, out)
    back = {**port.mapping.to_torch(params), **port.mapping.to_torch(buffers, buffers=True)}
    assert set(back) == {k for k in port.weights if not k.endswith("num_batches_tracked")}
    for name, value in back.items():
        np.testing.assert_array_equal(value, port.weights[name])


def test_forward_matches_in_train_and_eval_mode_with_injected_dropout():
    jax.config.update("jax_enable_x64", True)
    config = Config(model="mlp_bn_dropout", dropout=0.3)
    torch_model = make_torch_model(config).double()
    x = np.random.default_rng(0).random((32, 1, 28, 28))
    port = _port(torch_model, make_model(config), x, np.zeros(32, np.int64))
    params, buffers = port.mapping.to_flax(port.flax, {k: v.astype(np.float64) if v.dtype.kind == "f" else v
                                                        for k, v in port.weights.items()})
    torch_masks, flax_masks = step_masks(port, config, 0, 32)
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: i[0] * (torch.as_tensor(torch_masks[k]).double() / 0.7))
             for k, m in enumerate(d for d in torch_model.modules() if isinstance(d, torch.nn.Dropout))]
    torch_model.train()
    with torch.no_grad():
        expected_train = torch_model(torch.from_numpy(x)).numpy()
    for h in hooks:
        h.remove()
    torch_model.eval()
    with torch.no_grad():
        expected_eval = torch_model(torch.from_numpy(x)).numpy()
    out, new_buffers, _ = port.flax.apply(params, buffers, jnp.asarray(x), True, tuple(map(jnp.asarray, flax_masks)))
    np.testing.assert_allclose(out, expected_train, rtol=1e-11, atol=1e-12)
    running = port.mapping.to_torch(new_buffers, buffers=True)
    for key in ("linear_relu_stack.1.running_var", "linear_relu_stack.5.running_mean"):
        np.testing.assert_allclose(running[key], torch_model.state_dict()[key].numpy(), rtol=1e-12)
    out, _, _ = port.flax.apply(params, new_buffers, jnp.asarray(x), False)
    np.testing.assert_allclose(out, expected_eval, rtol=1e-11, atol=1e-12)


class TorchZoo(torch.nn.Module):
    """One layer of each mapped type, in an order unlike their definition order."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6 * 4 * 4, 5)
        self.embed = torch.nn.Embedding(10, 4)
        self.conv = torch.nn.Conv2d(2, 6, kernel_size=3, padding=1)
        self.norm = torch.nn.LayerNorm(5)

    def forward(self, x):
        tokens = (x[:, 0, 0, :].abs() * 9).long()  # (N, 4) token ids from the input
        h = self.conv(x + self.embed(tokens).sum(1)[:, None, None, :].mean(-1, keepdim=True))
        return self.norm(self.fc(torch.flatten(torch.relu(h), 1)))


class NnxZoo(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(1)
        self.conv = nnx.Conv(2, 6, kernel_size=(3, 3), padding=1, rngs=rngs)
        self.embed = nnx.Embed(10, 4, rngs=rngs)
        self.fc = nnx.Linear(6 * 4 * 4, 5, rngs=rngs)
        self.norm = nnx.LayerNorm(5, epsilon=1e-5, rngs=rngs)

    def __call__(self, x):  # x is NHWC
        tokens = (jnp.abs(x[:, 0, :, 0]) * 9).astype(jnp.int32)
        h = self.conv(x + self.embed(tokens).sum(1)[:, None, None, :].mean(-1, keepdims=True))
        h = jax.nn.relu(h).transpose(0, 3, 1, 2)
        return self.norm(self.fc(h.reshape(h.shape[0], -1)))


def test_conv_linear_embedding_layernorm_layouts_give_torchs_outputs():
    jax.config.update("jax_enable_x64", True)
    torch.manual_seed(0)
    torch_model = TorchZoo().double()
    x = np.random.default_rng(1).random((3, 2, 4, 4))
    port = _port(torch_model, NnxZoo(), x, np.zeros(3, np.int64), flax_input="nhwc")
    assert [t for t, _, _ in port.mapping.layers] == ["embed", "conv", "fc", "norm"]  # call order
    assert port.channels_last == {"conv"}
    weights = {k: v.astype(np.float64) for k, v in port.weights.items()}
    params, buffers = port.mapping.to_flax(port.flax, weights)
    leaves = leaves_by_path(params)
    assert leaves["conv.kernel"].shape == (3, 3, 2, 6) and leaves["embed.embedding"].shape == (10, 4)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    got, _, _ = port.flax.apply(params, buffers, jnp.asarray(np.moveaxis(x, 1, -1)), False)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)  # a wrong layout is off by O(1)


def test_mismatched_models_raise_one_line_errors_naming_both_sides():
    x = np.random.default_rng(0).random((4, 1, 28, 28))
    y = np.zeros(4, np.int64)
    torch_model = make_torch_model(Config())

    class TwoLayers(nnx.Module):
        def __init__(self):
            self.a, self.b = nnx.Linear(784, 512, rngs=nnx.Rngs(0)), nnx.Linear(512, 10, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.b(nnx.relu(self.a(x.reshape(x.shape[0], -1))))

    with pytest.raises(PortMappingError, match=r"torch 3 \[linear_relu_stack\.0: weight \(512, 784\).*Flax 2 \[a:"):
        _port(torch_model, TwoLayers(), x, y)

    class WrongWidth(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            self.layers = nnx.List([nnx.Linear(784, 256, rngs=rngs), nnx.Linear(256, 512, rngs=rngs),
                                    nnx.Linear(512, 10, rngs=rngs)])

        def __call__(self, x):
            x = x.reshape(x.shape[0], -1)
            for layer in self.layers:
                x = layer(x)
            return x

    with pytest.raises(PortMappingError, match=r"linear_relu_stack\.0\.weight \(512, 784\) \(Linear rule: Flax "
                                               r"kernel \(784, 512\)\) has no match in Flax layer layers\.0"):
        _port(torch_model, WrongWidth(), x, y)
    with pytest.raises(PortMappingError, match="the Flax model (fails on|cannot be run on) inputs of shape"):
        _port(torch_model, nnx.Linear(3, 3, rngs=nnx.Rngs(0)), x, y)
    with pytest.raises(PortMappingError, match="weight_map names torch modules that do not exist: nope"):
        _port(torch_model, make_model(Config()), x, y, weight_map={"nope": "x"})


def test_functional_dropout_in_torch_is_refused_with_the_reason():
    class FunctionalDropout(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(784, 10)

        def forward(self, x):
            return self.fc(torch.nn.functional.dropout(torch.flatten(x, 1), 0.5, training=self.training))

    x = np.random.default_rng(0).random((4, 1, 28, 28))
    flax_model = nnx.Linear(784, 10, rngs=nnx.Rngs(0))
    with pytest.raises(PortMappingError, match="under another seed with its nn.Dropout modules off"):
        check_port(FunctionalDropout(), flax_model, train=(x, np.zeros(4, np.int64)), steps=1,
                   flax_input=lambda a: a.reshape(len(a), -1))


def test_random_dropout_drops_p_and_scales_by_one_over_one_minus_p():
    """JAX's own dropout draws (no injected masks): the same distribution as torch's."""
    jax.config.update("jax_enable_x64", False)
    model = pure_model(nnx.Dropout(0.3, rngs=nnx.Rngs(0)))
    out, _, _ = model.apply(model.params, model.buffers, jnp.ones((200, 512)), True, None, jax.random.key(3))
    out = np.asarray(out)
    torch_out = torch.nn.functional.dropout(torch.ones(200, 512), 0.3, training=True).numpy()
    for sample in (out, torch_out):
        kept = sample != 0
        assert abs(1 - kept.mean() - 0.3) < 0.01  # 102400 draws: 4+ standard deviations
        np.testing.assert_allclose(sample[kept], 1 / 0.7, rtol=1e-6)


def test_a_weight_map_converting_part_of_a_layer_says_which_tensor_is_left_and_never_contradicts_itself():
    """An LSTM whose gates a user's callable converts, all but bias_hh: the message names what is left, not
    "different numbers of layers" with equal counts."""
    class TorchLSTM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lstm, self.head = torch.nn.LSTM(4, 6, batch_first=True), torch.nn.Linear(6, 3)

        def forward(self, x):
            return self.head(self.lstm(x)[0][:, -1])

    class NnxLSTM(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            self.lstm, self.head = nnx.RNN(nnx.LSTMCell(4, 6, rngs=rngs)), nnx.Linear(6, 3, rngs=rngs)

        def __call__(self, x):
            return self.head(self.lstm(x)[:, -1])

    def gates(prefix, value, transpose):
        return [(f"lstm.cell.{prefix}{g}.{'kernel' if transpose else 'bias'}",
                 value[k * 6:(k + 1) * 6].T if transpose else value[k * 6:(k + 1) * 6])
                for k, g in enumerate(["i", "f_", "g", "o"] if prefix == "i" else "ifgo")]

    def weight_map(name, value):
        return {"lstm.weight_ih_l0": lambda: gates("i", value, True), "lstm.weight_hh_l0": lambda: gates("h", value, True),
                "lstm.bias_ih_l0": lambda: gates("h", value, False)}.get(name, lambda: None)()

    x = np.random.default_rng(0).random((32, 5, 4), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 3, 32)
    with pytest.raises(PortMappingError, match=r"converts some of lstm's tensors \(bias_ih_l0, weight_hh_l0, "
                                               r"weight_ih_l0\) but not bias_hh_l0.*return a Flax leaf") as e:
        check_port(TorchLSTM(), NnxLSTM(), train=(x, y), steps=1, batch_size=16, weight_map=weight_map)
    assert "different numbers" not in str(e.value)
