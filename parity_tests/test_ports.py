"""check_port on users' own ports (examples/): healthy ports pass, planted porting bugs fail at the
right stage and layer with the right diagnosis; the CLI's --torch-model/--flax-model."""

import subprocess
import sys

import pytest
import torch

from examples.cnn import LinenCNN, NnxCNN, TorchCNN
from examples.layernorm_mlp import NnxLayerNormMLP, TorchLayerNormMLP
from jaxtrain.layers import TorchBatchNorm
from jaxtrain.parity import check_port


@pytest.fixture(scope="module")
def small(fashion):
    train, test = fashion
    return (train.images[:384, None], train.labels[:384]), (test.images[:300, None], test.labels[:300])


def cnn_check(flax_model, small, steps=12, **kw):
    torch.manual_seed(0)
    args = dict(optimizer="sgd", optimizer_kwargs={"lr": 0.05, "momentum": 0.9}, steps=steps, flax_input="nhwc")
    args.update(kw)
    return check_port(TorchCNN(), flax_model, train=small[0], test=small[1], **args)


@pytest.mark.parametrize("make", [NnxCNN, LinenCNN], ids=["nnx", "linen"])
def test_healthy_cnn_ports_pass_in_float32_and_float64(make, small):
    report = cnn_check(make(), small)
    assert report.passed, str(report)
    assert report.verdict["same_math"]["max_rel_step_loss_diff"] <= 1e-10  # float64: summation order only
    assert report.layers == ["features.0", "features.1", "fc"]


def test_flatten_order_bug_is_named_at_the_linear_after_the_conv(small):
    report = cnn_check(NnxCNN(flatten_nhwc=True), small, steps=3, dtypes=("float64",))
    check = report.checks[0]
    assert not report.passed and (check["stage"], check["layer"], check["first_failing_step"]) == ("forward", "fc", 1)
    assert report.diagnosis["trap"] == "flatten order (NCHW vs NHWC)"


def test_conv_weight_not_transposed_by_the_users_converter(small):
    def reshape_not_transpose(name, value):  # the user's own conversion script's bug
        if name == "features.0.weight":
            return "conv.kernel", value.reshape(3, 3, 1, 8)
        return None

    report = cnn_check(NnxCNN(), small, steps=2, dtypes=("float64",), weight_map=reshape_not_transpose)
    check = report.checks[0]
    assert (check["stage"], check["layer"], check["first_failing_step"]) == ("forward", "features.0", 1)
    assert report.diagnosis["trap"] == "weights in the wrong layout"


@pytest.mark.parametrize("bn, trap, tensor", [
    (dict(momentum=0.9), "BatchNorm momentum convention", "features.1.running_mean"),
    (dict(unbiased=False), "biased vs unbiased running variance", "features.1.running_var")])
def test_batchnorm_conventions_are_named_by_buffer(bn, trap, tensor, small):
    model = NnxCNN()
    model.bn = TorchBatchNorm(8, **bn)
    report = cnn_check(model, small, steps=2, dtypes=("float64",))
    check = report.checks[0]
    assert (check["stage"], check["tensor"], check["first_failing_step"]) == ("buffers", tensor, 1)
    assert report.diagnosis["trap"] == trap


def test_optax_adamw_default_weight_decay_is_diagnosed(small):
    import optax

    torch_pair = (lambda params: torch.optim.AdamW(params, lr=1e-3), optax.adamw(1e-3))
    report = cnn_check(NnxCNN(), small, steps=2, dtypes=("float64",), optimizer=torch_pair, optimizer_kwargs=None)
    check = report.checks[0]
    assert (check["stage"], check["layer"], check["first_failing_step"]) == ("updates", "features.0", 1)
    assert report.diagnosis["trap"] == "weight-decay default"
    assert "-0.0099" in report.diagnosis["sentence"]  # 1e-4 - 1e-2


def test_layernorm_mlp_port_passes_and_flax_default_eps_is_caught(fashion):
    train, test = fashion
    data = dict(train=(train.images[:256], train.labels[:256]), test=(test.images[:200], test.labels[:200]))
    torch.manual_seed(0)
    assert check_port(TorchLayerNormMLP(), NnxLayerNormMLP(), optimizer="adam", steps=8, **data).passed
    torch.manual_seed(0)
    report = check_port(TorchLayerNormMLP(), NnxLayerNormMLP(epsilon=1e-6), optimizer="adam", steps=2,
                        dtypes=("float64",), **data)
    assert (report.checks[0]["stage"], report.checks[0]["layer"]) == ("forward", "net.2")
    assert report.diagnosis["trap"] == "LayerNorm eps"  # the eps that reproduces the port's output, fitted
    assert "eps=1e-06" in report.diagnosis["sentence"] and "eps=1e-05" in report.diagnosis["sentence"]


def test_regression_with_the_users_optax_pair_and_no_test_set():
    from examples.regression import check

    assert check(steps=30).passed
    report = check(weight_decay=1e-4, steps=3)
    assert report.checks[0]["stage"] == "updates" and report.diagnosis["trap"] == "weight-decay default"


def _parity_cli(*args):
    return subprocess.run([sys.executable, "-m", "jaxtrain", "parity", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.corpus  # 28 s of the suite's 20-minute budget on the slowest kind; the long checks run it
def test_cli_checks_the_example_files_and_names_the_flatten_bug(fashion):
    common = ["--torch-model", "examples.cnn:TorchCNN", "--flax-input", "nhwc", "--train-limit", "256",
              "--test-limit", "200", "--steps", "4", "--lr", "0.05"]
    ok = _parity_cli(*common, "--flax-model", "examples.cnn:NnxCNN")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = _parity_cli(*common, "--flax-model", "examples.cnn:nnx_flatten_bug", "--dtype", "float64")
    assert bad.returncode == 1 and "layer fc" in bad.stdout and "flatten order" in bad.stdout


@pytest.mark.parametrize("args, message", [
    (["--torch-model", "no_such_module:X", "--flax-model", "examples.cnn:NnxCNN"], "cannot import 'no_such_module'"),
    (["--torch-model", "examples.cnn:Nope", "--flax-model", "examples.cnn:NnxCNN"], "has no class or factory named"),
    (["--torch-model", "examples.cnn", "--flax-model", "examples.cnn:NnxCNN"], "expected MODULE:ATTR"),
    (["--torch-model", "examples.cnn:TorchCNN"], "go together"),
    (["--torch-model", "examples.cnn:TorchCNN", "--flax-model", "examples.layernorm_mlp:NnxLayerNormMLP"],
     "has no match in Flax layer hidden"),
    # a token model: the CLI's FashionMNIST images are not its inputs
    (["--torch-model", "jaxtrain.parity.corpus.real:TorchTagger", "--flax-model",
      "jaxtrain.parity.corpus.real:LinenTagger"], "use the Python API: jaxtrain.parity.check_port"),
])
def test_cli_bad_model_paths_and_shapes_give_one_line_and_exit_2(args, message, fashion):
    result = _parity_cli(*args, "--train-limit", "128", "--steps", "1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
