"""`compare_port` and `jaxtrain bench --torch-model`: every variant measured in its worker, the
same-model verdict, one-line errors. Tiny models, 2 steps, one round; no speed is asserted.
torch.compile takes ~40 s on this CPU, so the fast tests leave it out and a corpus test covers it."""

import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jaxtrain.models
import torchref.models
from jaxtrain.bench.port import VARIANTS, compare_port, format_table
from jaxtrain.config import make_config
from jaxtrain.errors import ConfigError, PortMappingError
from jaxtrain.parity.corpus import real as corpus_real

ROOT = Path(__file__).resolve().parents[1]
FAST = ("torch_eager", "jax_step", "jax_scan")
QUICK = dict(batch_size=8, steps=2, repeats=1)


def _images(n, shape, classes, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, classes, n)


def _mlp():
    """The tutorial's pair, as factories (a live NNX MLP does not pickle: see the test below)."""
    return dict(torch_model=functools.partial(torchref.models.make_model, make_config()),
                flax_model=functools.partial(jaxtrain.models.make_model, make_config()),
                train=_images(24, (1, 28, 28), 10))


def _lstm():
    """examples/lstm_classifier.py's pair, on 3-token sequences (the port unrolls its LSTM in Python)."""
    ids, _, labels = corpus_real.tokens(14, 24)
    return dict(torch_model=corpus_real.TorchLSTM, flax_model=corpus_real.LinenLSTM, train=(ids[:, :3], labels))


def _lm():
    """The suite's GPT-2 pair (transformers' PyTorch model against its own Flax port), tiny: 1 layer, hidden 32.
    (The BatchNorm CNN is the CLI test's model.)"""
    from jaxtrain.bench.port import suite

    arguments = suite(quick=True)["transformer_lm"]
    return {k: arguments[k] for k in ("torch_model", "flax_model", "train", "optimizer", "optimizer_kwargs")}


def assert_measured(report, variants):
    """Every variant timed (positive, finite, ordered), its throughput, compile time and memory."""
    assert [v["name"] for v in report["variants"]] == list(variants)
    for v in report["variants"]:
        t = v["step_seconds"]
        assert 0 < t["min"] <= t["median"] <= t["max"] and math.isfinite(t["max"]), v
        assert v["samples_per_second"] == pytest.approx(report["batch_size"] / t["median"])
        assert v["compile_seconds"] >= 0
        assert v["peak_rss_mb"] >= v["import_rss_mb"] > 50
        assert v["peak_device_mb"] is None or v["peak_device_mb"] > 0
        if v["name"].startswith("jax"):
            assert v["compile_seconds"] > 0  # ahead of time, apart from the blocks
    assert report["dtype"] == "float32" and report["steps"] == QUICK["steps"] and report["repeats"] == 1
    assert json.loads(json.dumps(report)) == report  # JSON-ready as it is


# the suite's budget: the MLP in every fast variant here, the LSTM and the tiny GPT-2 among the long checks
# (the BatchNorm CNN is the CLI test's model)
@pytest.mark.parametrize("pair, variants", [  # the suite's budget: the CLI test below times the CNN pair
    pytest.param(_mlp, FAST, marks=pytest.mark.corpus), pytest.param(_lstm, ("torch_eager", "jax_scan"), marks=pytest.mark.corpus),
    pytest.param(_lm, ("torch_eager", "jax_scan"), marks=pytest.mark.corpus)], ids=["mlp", "lstm", "transformer_lm"])
def test_every_variant_is_timed_on_the_same_model(pair, variants):
    """The suite's budget: every variant on the MLP, the eager and scanned ones on the others."""
    report = compare_port(**pair(), **QUICK, variants=variants)
    assert_measured(report, variants)
    assert report["same_model"]["passed"] is True
    assert "Same precision" in report["same_model"]["detail"]
    assert "same model: yes" in format_table(report)
    rss = {v["name"]: v["import_rss_mb"] for v in report["variants"]}
    assert rss["torch_eager"] < rss["jax_scan"]  # a torch worker imports no JAX


@pytest.mark.corpus  # the suite's budget: strict=True below refuses the same port in the suite
def test_a_wrong_port_is_timed_but_flagged():
    """examples/cnn.py's port that flattens NHWC: it pairs, runs, and is not the same model."""
    report = compare_port("examples.cnn:TorchCNN", "examples.cnn:nnx_flatten_bug", train=_images(16, (1, 28, 28), 10),
                          flax_input="nhwc", **QUICK, variants=("jax_scan",))
    assert_measured(report, ("jax_scan",))
    assert report["same_model"]["passed"] is False
    assert "flatten" in report["same_model"]["detail"]
    assert "NO: the times below compare different computations" in format_table(report)
    assert str(report) == format_table(report)  # print(compare_port(...)) prints the table, as a report does


def test_strict_refuses_to_time_another_model():
    with pytest.raises(PortMappingError, match="do not train the same model") as e:
        compare_port("examples.cnn:TorchCNN", "examples.cnn:nnx_flatten_bug", train=_images(16, (1, 28, 28), 10),
                     flax_input="nhwc", **QUICK, variants=("jax_scan",), strict=True)
    assert "\n" not in str(e.value)


def test_a_model_that_does_not_run_is_one_line():
    with pytest.raises(PortMappingError, match="model (fails|cannot be run) on inputs") as e:
        compare_port("examples.cnn:TorchCNN", "examples.cnn:NnxCNN", train=_images(16, (1, 8, 8), 10),
                     flax_input="nhwc", **QUICK, variants=("jax_scan",))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad, message", [
    (dict(steps=0), "steps must be a whole number >= 1"),
    (dict(steps=-3), "steps must be a whole number >= 1"),
    (dict(repeats=0), "repeats must be a whole number >= 1"),
    (dict(batch_size=2.5), "batch_size must be a whole number >= 1"),
    (dict(dtype="bfloat16"), "dtype must be one of float32, float64"),
    (dict(variants=("torch_jit",)), "variants must be distinct names"),
    (dict(variants=()), "variants must be distinct names"),
    (dict(batch_size=64), "batch_size 64 is larger than the 24 training samples"),
    (dict(train=np.zeros((24, 3))), "train must be a pair"),
    (dict(optimizer=lambda params: None), "optimizer cannot be sent to the benchmark's worker processes"),
    (dict(flax_model=jaxtrain.models.make_model(make_config())), "flax_model cannot be sent"),
])
def test_bad_input_is_one_config_error(bad, message):
    arguments = {**_mlp(), **QUICK, "variants": FAST, **bad}
    with pytest.raises(ConfigError, match=message) as e:
        compare_port(**arguments)
    assert "\n" not in str(e.value)


def _cli(*flags, timeout=120):
    return subprocess.run([sys.executable, "-m", "jaxtrain", "bench", *flags], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_the_cli_times_a_port_from_import_paths(tmp_path):
    out, png = tmp_path / "port.json", tmp_path / "port.png"
    run = _cli("--torch-model", "jaxtrain.parity.corpus.real:TorchConvBN", "--flax-model",
               "jaxtrain.parity.corpus.real:LinenConvBN", "--flax-input", "nhwc", "--input-shape", "1,8,8",
               "--classes", "3", "--batch-size", "8", "--quick", "--variants", "torch_eager,jax_scan",
               "--json", str(out), "--plot", str(png))
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert [v["name"] for v in report["variants"]] == ["torch_eager", "jax_scan"]
    assert report["same_model"]["passed"] and report["steps"] == 3 and report["batch_size"] == 8
    assert all(v["step_seconds"]["min"] > 0 for v in report["variants"])
    assert "TorchConvBN (torch) vs LinenConvBN (Flax)" in run.stdout and "jax_scan" in run.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flags, message", [
    (("--torch-model", "examples.cnn:TorchCNN", "--flax-model", "examples.cnn:NnxCNN", "--steps", "0"),
     "argument --steps: must be >= 1, got 0"),
    (("--torch-model", "examples.cnn:TorchCNN"), "--torch-model and --flax-model go together"),
    (("--steps", "5"), "--steps: only with --torch-model and --flax-model"),
    (("--torch-model", "examples.cnn:TorchCNN", "--flax-model", "examples.cnn:NnxCNN", "--variants", "jax_jit"),
     "argument --variants: expected names among"),
    (("--torch-model", "examples.nope:Model", "--flax-model", "examples.cnn:NnxCNN", "--variants", "jax_scan"),
     "cannot import 'examples.nope'"),
])
def test_the_cli_rejects_bad_flags_in_one_line(flags, message):
    run = _cli(*flags)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


@pytest.mark.corpus  # the suite's budget: compare_port(strict=True) is the same refusal
def test_the_cli_refuses_a_port_that_is_another_model():
    run = _cli("--torch-model", "examples.cnn:TorchCNN", "--flax-model", "examples.cnn:nnx_flatten_bug",
               "--flax-input", "nhwc", "--batch-size", "8", "--quick", "--variants", "jax_scan", "--quiet")
    assert run.returncode == 2 and "do not train the same model" in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


@pytest.mark.corpus  # torch.compile on the CPU: ~40 s a model
def test_torch_compile_is_timed_too():
    report = compare_port(**_mlp(), **QUICK)
    assert_measured(report, VARIANTS)
    compiled = next(v for v in report["variants"] if v["name"] == "torch_compile")
    assert compiled["compile_seconds"] > 0 and report["same_model"]["passed"]


@pytest.mark.corpus  # three models, every variant (torch.compile included): minutes
def test_the_quick_suite_writes_json_and_plot(tmp_path):
    out, png = tmp_path / "suite.json", tmp_path / "suite.png"
    run = subprocess.run([sys.executable, "-m", "jaxtrain.bench.port", "--suite", "--quick", "--json", str(out),
                          "--plot", str(png)], capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result["models"]) == ["transformer_lm", "bn_cnn", "lstm_classifier"]
    for report in result["models"].values():
        assert [v["name"] for v in report["variants"]] == list(VARIANTS) and report["same_model"]["passed"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


STDIN_SCRIPT = """
import numpy as np
from jaxtrain.bench.port import compare_port
x = np.random.default_rng(0).normal(size=(16, 1, 28, 28)).astype(np.float32)
y = np.random.default_rng(1).integers(0, 10, 16)
print(compare_port("examples.cnn:TorchCNN", "examples.cnn:NnxCNN", train=(x, y), flax_input="nhwc", batch_size=8,
                   steps=2, repeats=1, variants=("torch_eager", "jax_step")))
"""


@pytest.mark.corpus  # two workers spawned: half a minute
def test_compare_port_from_a_script_on_stdin_gives_its_table(tmp_path):
    done = subprocess.run([sys.executable, "-"], input=STDIN_SCRIPT, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same model: yes" in done.stdout and "jax_step" in done.stdout and "EOFError" not in done.stderr


@pytest.mark.parametrize("how, where", [("stdin", "a script read from <stdin>"), pytest.param(
    "-c", "an interactive session (a REPL, a notebook, python -c)", marks=pytest.mark.corpus)])  # the budget
def test_a_recipe_defined_in_a_script_without_a_file_is_one_config_error(tmp_path, how, where):
    script = STDIN_SCRIPT.replace('"examples.cnn:TorchCNN"', "TorchCNN").replace(
        "import numpy as np", "import numpy as np\nfrom torch import nn\n"
        "class TorchCNN(nn.Module):\n    def __init__(self):\n        super().__init__(); self.fc = nn.Linear(784, 10)\n"
        "    def forward(self, x):\n        return self.fc(x.flatten(1))\n")
    command = [sys.executable, "-"] if how == "stdin" else [sys.executable, "-c", script]
    done = subprocess.run(command, input=script if how == "stdin" else None, cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode != 0
    assert f"ConfigError: compare_port's workers cannot rebuild torch_model defined in {where}" in done.stderr, \
        done.stderr[-2000:]
