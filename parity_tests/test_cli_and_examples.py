"""`jaxtrain parity`, `torchref train` and the examples, run as a user runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def test_parity_cli_prints_the_verdict_writes_the_report_and_the_plot(tmp_path, fashion):
    report_path, plot_path = tmp_path / "parity.json", tmp_path / "parity.png"
    result = run("-m", "jaxtrain", "parity", "--optimizer", "adam", "--epochs", "2", "--train-limit", "640",
                 "--test-limit", "1000", "--steps", "15", "--report", str(report_path), "--plot", str(plot_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "float32: 15 steps" in result.stdout and "float64: 15 steps" in result.stdout
    for sentence in ("PASS Same math (float64", "PASS Same precision (float32", "PASS Same results (float32"):
        assert sentence in result.stdout
    assert "PARITY PASSED" in result.stdout
    report = json.loads(report_path.read_text())
    assert list(report) == ["passed", "config", "checks", "verdict", "diagnosis", "layers", "mapping_notes", "findings",
                            "jax", "torch"]
    assert report["passed"] is True and report["config"]["optimizer"] == "adam"
    assert set(report["verdict"]) == {"same_math", "same_precision", "same_results"}
    assert all(part["passed"] for part in report["verdict"].values())
    for check, dtype in zip(report["checks"], ["float32", "float64"]):
        assert check["dtype"] == dtype and check["passed"] is True
        assert {"max_abs_loss_diff", "max_rel_loss_diff", "first_failing_step", "stage", "layer", "tensor"} <= set(check)
        assert check["first_failing_step"] is None
    assert report["jax"]["framework"] == "jax" and report["torch"]["framework"] == "torch"
    assert len(report["jax"]["steps"]) == 15 and len(report["jax"]["epochs"]) == 2
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.corpus  # a long check (make corpus), for the suite's 20-minute budget on the slowest kind
def test_parity_of_a_bn_model_without_dropout_runs(fashion):
    """--dropout 0 used to raise IndexError (hooks on nn.Dropout(p=0) looked for masks)."""
    result = run("-m", "jaxtrain", "parity", "--model", "mlp_bn_dropout", "--dropout", "0", "--epochs", "1",
                 "--train-limit", "320", "--test-limit", "500", "--dtype", "float64")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PARITY PASSED" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["-m", "jaxtrain", "parity"], ["-m", "jaxtrain", "train"],
                                     ["-m", "torchref", "train"]])
def test_a_one_row_batch_through_batchnorm_is_refused(command, fashion):
    result = run(*command, "--model", "mlp_bn_dropout", "--train-limit", "65", "--epochs", "1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "BatchNorm needs more than 1 sample per training batch" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_torchref_train_has_the_same_output_and_schema(tmp_path, fashion):
    out = tmp_path / "t.json"
    result = run("-m", "torchref", "train", "--epochs", "1", "--train-limit", "6400", "--test-limit", "1000",
                 "--metrics-out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Epoch 1\n-------------------------------\nloss: ")
    assert "[   64/ 6400]" in result.stdout and "Done!" in result.stdout
    record = json.loads(out.read_text())
    assert list(record) == ["framework", "config", "device", "steps", "epochs"]
    assert record["framework"] == "torch" and len(record["steps"]) == 100


@pytest.mark.parametrize("args, message", [
    (["--nesterov", "--momentum", "0.9", "--dampening", "0.1"], "Nesterov momentum requires a momentum and zero dampening"),
    (["--optimizer", "adam", "--betas", "0.9", "1.5"], "invalid beta parameters"),
    (["--optimizer", "rmsprop", "--eps", "-1"], "invalid epsilon value"),
    (["--scheduler", "multistep"], "--scheduler multistep needs --milestones"),
])
def test_both_clis_reject_the_same_combinations_the_same_way(args, message):
    jax_run = run("-m", "jaxtrain", "train", *args)
    torch_run = run("-m", "torchref", "train", *args)
    for result, prog in ((jax_run, "jaxtrain"), (torch_run, "torchref")):
        assert result.returncode == 2
        assert result.stderr.strip() == f"{prog}: error: " + jax_run.stderr.strip().split(": error: ", 1)[1]
        assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("script, args", [  # with the long checks (make corpus): 50 s of the suite's budget
    pytest.param("examples/sgd_momentum_steplr.py", ["--epochs", "3", "--train-limit", "1280"], marks=pytest.mark.corpus),
    pytest.param("examples/bn_dropout.py", ["--epochs", "2", "--train-limit", "640"], marks=pytest.mark.corpus),
    pytest.param("examples/regression.py", [], marks=pytest.mark.corpus),
])
def test_examples_run_and_pass_their_parity_check(script, args, fashion):
    result = run(script, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and "PASS" in result.stdout


@pytest.mark.corpus  # the long checks: third-party models and recurrent ports, about a minute
@pytest.mark.parametrize("script, expected", [
    ("examples/transformer_lm.py", "PARITY PASSED"),
    ("examples/lstm_classifier.py", "two biases"),
    ("examples/load_torch_weights.py", "every tensor equal to the checkpoint's: True"),
])
def test_port_examples_run_and_end_as_they_say(script, expected):
    result = run(script)
    assert result.returncode == 0, result.stdout + result.stderr
    assert expected in result.stdout, result.stdout
