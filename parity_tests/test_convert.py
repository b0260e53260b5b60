"""jaxtrain.convert: torch weights into the Flax port and back, for every kind of mapping rule.

Each case: torch -> Flax gives the same eval outputs (float32: within 10x torch's own float32
error of float64 plus a few float32 ulps; float64: 1e-12 relative), and Flax -> torch into a
freshly initialised torch model restores the state_dict bit for bit."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from jaxtrain.convert import flax_to_torch, torch_to_flax
from jaxtrain.errors import PortMappingError
from jaxtrain.flax_model import pure_model
from jaxtrain.parity.corpus import real as real


def _images(channels, size, n=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, channels, size, size)).astype(np.float32)


def _tutorial():
    from jaxtrain.models import MLP
    from torchref.models import NeuralNetwork

    return NeuralNetwork(), MLP(rngs=nnx.Rngs(0)), _images(1, 28), None


def _cnn(kind):
    def make():
        from examples.cnn import LinenCNN, NnxCNN, TorchCNN

        model = TorchCNN()
        with torch.no_grad():  # running statistics that are not the initial ones
            model.train()
            model(torch.from_numpy(_images(1, 28, 16, seed=5)))
        return model.eval(), (NnxCNN() if kind == "nnx" else LinenCNN()), _images(1, 28), "nhwc"

    return make


CASES = {
    "tutorial_mlp_nnx": _tutorial,
    "cnn_batchnorm_nnx": _cnn("nnx"),
    "cnn_batchnorm_linen": _cnn("linen"),
    "lstm_linen": lambda: (real.TorchLSTM(), real.LinenLSTM(), real.tokens(0, 4)[0], None),
    "gru_linen": lambda: (real.TorchGRU(), real.LinenGRU(), real.tokens(0, 4)[0], None),
    "multihead_attention_nnx": lambda: (real.TorchAttention(), real.NnxAttention(), real.tokens(0, 4)[0], None),
    "tied_embedding_lm_nnx": lambda: (real.TorchTiedLM(), real.NnxTiedLM(), real.tokens(0, 4)[0], None),
    "conv_transpose_linen": lambda: (real.TorchUpsample(), real.LinenUpsample(), _images(1, 8), "nhwc"),
    "transformer_encoder_nnx": lambda: (real.TorchEncoder(), real.NnxEncoder(), real.tokens(0, 4)[0], None),
}


def _flax_outputs(variables, flax_model, x, flax_input, dtype):
    from jaxtrain.parity.check import FLAX_INPUTS

    model = pure_model(flax_model if isinstance(flax_model, nnx.Module) else flax_model, FLAX_INPUTS[
        flax_input or "same"](x)).computing_in(dtype)
    if isinstance(flax_model, nnx.Module):
        _, params, buffers = nnx.split(flax_model, nnx.Param, ...)
    else:
        params, buffers = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    cast = lambda t: jax.tree.map(lambda a: np.asarray(a, dtype) if _floating(a) else a, t)  # noqa: E731
    out, _, _ = model.apply(cast(params), cast(buffers), FLAX_INPUTS[flax_input or "same"](x), False)
    return np.asarray(out, np.float64)


def _floating(a) -> bool:
    return jax.numpy.issubdtype(getattr(a, "dtype", np.int32), jax.numpy.floating)


def _float32_inside(flax_model, x, flax_input) -> bool:
    from jaxtrain.parity.check import FLAX_INPUTS

    sample = FLAX_INPUTS[flax_input or "same"](x)
    model = pure_model(flax_model, sample).computing_in(np.float64)
    cast = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64) if _floating(a) else a, t)  # noqa: E731
    return bool(model.lower_precision(sample, cast(model.params), cast(model.buffers)))


def _torch_outputs(model, x, dtype):
    import copy

    model = copy.deepcopy(model).to(dtype).eval()
    with torch.no_grad():
        t = torch.from_numpy(x)
        return model(t if not t.is_floating_point() else t.to(dtype)).double().numpy()


QUICK = ("cnn_batchnorm_linen", "lstm_linen", "multihead_attention_nnx", "tied_embedding_lm_nnx")  # the rest: corpus


@pytest.mark.parametrize("name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.corpus) for n in sorted(CASES)])
def test_torch_to_flax_gives_torchs_outputs_and_flax_to_torch_restores_every_tensor(name):
    jax.config.update("jax_enable_x64", True)
    torch_model, flax_model, x, flax_input = CASES[name]()
    torch_model.eval()
    variables = torch_to_flax(torch_model, flax_model, x, flax_input=flax_input)

    truth = _torch_outputs(torch_model, x, torch.float64)
    torch32 = _torch_outputs(torch_model, x, torch.float32)
    jax32 = _flax_outputs(variables, flax_model, x, flax_input, np.float32)
    scale = np.abs(truth).max()
    assert np.abs(jax32 - truth).max() <= 10 * np.abs(torch32 - truth).max() + 8 * np.finfo(np.float32).eps * scale
    jax64 = _flax_outputs(variables, flax_model, x, flax_input, np.float64)
    if _float32_inside(flax_model, x, flax_input):  # nnx attention's float32 softmax: float32's bound
        assert np.abs(jax64 - truth).max() <= 10 * np.abs(torch32 - truth).max() + 8 * np.finfo(np.float32).eps * scale
    else:
        assert np.abs(jax64 - truth).max() <= 1e-12 * scale

    fresh = type(torch_model)()
    with torch.no_grad():  # other weights: every tensor must come from the port
        for value in fresh.state_dict().values():
            value.add_(1) if value.is_floating_point() else None
    original = torch_model.state_dict()
    assert any(not torch.equal(fresh.state_dict()[k], v) for k, v in original.items())
    flax_to_torch(variables if isinstance(variables, dict) else flax_model, fresh, x, flax_input=flax_input,
                  flax_model=flax_model)
    restored = fresh.state_dict()
    assert set(restored) == set(original)
    for key, value in original.items():
        if key.endswith("num_batches_tracked"):  # no Flax counterpart: left as the torch model had it
            assert restored[key] == 0, key
            continue
        assert restored[key].dtype == value.dtype and torch.equal(restored[key], value), key


def test_a_saved_state_dict_loads_into_the_port(tmp_path):
    torch_model, flax_model, x, flax_input = _cnn("linen")()
    torch.save(torch_model.state_dict(), tmp_path / "model.pt")
    from examples.cnn import TorchCNN

    state = torch.load(tmp_path / "model.pt", map_location="cpu")
    variables = torch_to_flax(state, flax_model, x, torch_model=TorchCNN(), flax_input=flax_input)
    np.testing.assert_array_equal(np.asarray(variables["batch_stats"]["LinenTorchBatchNorm_0"]["mean"]),
                                  state["features.1.running_mean"].numpy())
    np.testing.assert_array_equal(np.asarray(variables["params"]["Conv_0"]["kernel"]),
                                  state["features.0.weight"].numpy().transpose(2, 3, 1, 0))


def test_a_float64_model_with_float64_inputs_round_trips_bit_for_bit():
    """A model and inputs in float64, as check_port takes them: paired (in float32) and converted in float64."""
    from examples.cnn import NnxCNN, TorchCNN

    torch.manual_seed(3)
    model = TorchCNN().double()
    x = _images(1, 28).astype(np.float64)
    port = torch_to_flax(model.state_dict(), NnxCNN(rngs=nnx.Rngs(1)), x, torch_model=model, flax_input="nhwc")
    assert {str(v.dtype) for v in jax.tree.leaves(nnx.state(port, nnx.Param))} == {"float64"}
    back = flax_to_torch(port, TorchCNN().double(), x, flax_input="nhwc")
    for name, tensor in model.state_dict().items():
        assert back.state_dict()[name].dtype == tensor.dtype and torch.equal(back.state_dict()[name], tensor), name


def test_recurrent_cell_with_one_bias_round_trips_the_function_and_says_so():
    """Flax's LSTMCell has one bias per gate where torch trains two: torch -> Flax sums them, so the
    way back gives the same outputs, not the same two tensors."""
    torch_model, x = real.TorchLSTM(), real.tokens(0, 4)[0]
    with pytest.warns(UserWarning, match="two biases per gate"):
        variables = torch_to_flax(torch_model, real.LinenLSTM(cell="flax"), x)
    with pytest.warns(UserWarning, match="two biases per gate"):
        fresh = flax_to_torch(variables, real.TorchLSTM(), x, flax_model=real.LinenLSTM(cell="flax"))
    # the float32 sum of the two biases is the only rounding on the way
    np.testing.assert_allclose(_torch_outputs(fresh, x, torch.float64), _torch_outputs(torch_model, x, torch.float64),
                               rtol=16 * np.finfo(np.float32).eps)
    s, f = torch_model.state_dict(), fresh.state_dict()
    np.testing.assert_allclose((f["lstm.bias_ih_l0"] + f["lstm.bias_hh_l0"]).numpy(),
                               (s["lstm.bias_ih_l0"] + s["lstm.bias_hh_l0"]).numpy(), rtol=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda: torch_to_flax({"fc.weight": torch.zeros(2, 2)}, real.NnxAttention(), real.tokens(0, 4)[0],
                           torch_model=real.TorchAttention()), "the state_dict does not fit TorchAttention"),
    (lambda: torch_to_flax({}, real.NnxAttention(), real.tokens(0, 4)[0]), "needs torch_model="),
    (lambda: torch_to_flax(real.TorchLSTM(), real.NnxAttention(), real.tokens(0, 4)[0]), "layer"),
    (lambda: flax_to_torch({"params": {}}, real.TorchLSTM(), real.tokens(0, 4)[0]), "flax_model="),
])
def test_bad_inputs_raise_one_port_mapping_error(call, message):
    with pytest.raises(PortMappingError, match=message):
        call()


def _convert_cli(*args):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])  # examples/ importable from any directory
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "jaxtrain", "convert", *args], capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.mark.parametrize("flax_model", [  # NNX with the long checks (make corpus): the suite's 20-minute budget
    "examples.cnn:LinenCNN", pytest.param("examples.cnn:NnxCNN", marks=pytest.mark.corpus)])
def test_cli_writes_an_orbax_checkpoint_and_back_a_state_dict_equal_to_the_original(tmp_path, flax_model):
    torch_model = _cnn("linen")()[0]
    torch.save(torch_model.state_dict(), tmp_path / "model.pt")
    common = ["--torch-model", "examples.cnn:TorchCNN", "--flax-model", flax_model, "--flax-input", "nhwc"]
    there = _convert_cli(*common, "--checkpoint", str(tmp_path / "model.pt"), "--out", str(tmp_path / "flax"))
    assert there.returncode == 0, there.stderr
    back = _convert_cli(*common, "--to-torch", "--checkpoint", str(tmp_path / "flax"), "--out",
                        str(tmp_path / "back.pt"))
    assert back.returncode == 0, back.stderr
    original, restored = torch_model.state_dict(), torch.load(tmp_path / "back.pt")
    assert set(original) == set(restored)
    for key in original:
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(original[key], restored[key]), key


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "no_such.pt", "--out", "x"], "cannot load a torch state_dict"),
    pytest.param(["--checkpoint", "no_such_dir", "--out", "x.pt", "--to-torch"], "not an orbax checkpoint",
                 marks=pytest.mark.corpus),
    (["--checkpoint", "model.pt", "--out", "x", "--flax-model", "examples.layernorm_mlp:NnxLayerNormMLP"],
     "has no match in Flax layer"),
    pytest.param(["--checkpoint", "model.pt", "--out", "model.pt"], "exists", marks=pytest.mark.corpus),
    pytest.param(["--checkpoint", "model.pt", "--out", "x", "--input-shape", "0,3"], "sizes >= 1",
                 marks=pytest.mark.corpus),
])
def test_cli_bad_inputs_give_one_line_and_exit_2(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    torch.save(_cnn("linen")()[0].state_dict(), tmp_path / "model.pt")
    common = ["--torch-model", "examples.cnn:TorchCNN", "--flax-model", "examples.cnn:LinenCNN", "--flax-input", "nhwc"]
    result = _convert_cli(*common, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
