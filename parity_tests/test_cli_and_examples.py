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


def test_parity_cli_prints_the_table_and_writes_the_report(tmp_path, fashion):
    report_path = tmp_path / "parity.json"
    result = run("-m", "jaxtrain", "parity", "--optimizer", "adam", "--epochs", "2", "--train-limit", "640",
                 "--test-limit", "1000", "--steps", "15", "--report", str(report_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "float32: 15 steps" in result.stdout and "float64: 15 steps" in result.stdout
    assert "PARITY PASSED" in result.stdout
    report = json.loads(report_path.read_text())
    assert list(report) == ["passed", "config", "checks", "jax", "torch"]
    assert report["passed"] is True and report["config"]["optimizer"] == "adam"
    for check, dtype in zip(report["checks"], ["float32", "float64"]):
        assert check["dtype"] == dtype and check["passed"] is True
        assert {"max_abs_loss_diff", "max_rel_loss_diff", "first_failing_step", "stage", "tensor"} <= set(check)
        assert check["first_failing_step"] is None
    assert report["jax"]["framework"] == "jax" and report["torch"]["framework"] == "torch"
    assert len(report["jax"]["steps"]) == 15 and len(report["jax"]["epochs"]) == 2


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


@pytest.mark.parametrize("script, args", [
    ("examples/sgd_momentum_steplr.py", ["--epochs", "3", "--train-limit", "1280"]),
    ("examples/bn_dropout.py", ["--epochs", "2", "--train-limit", "640"]),
    ("examples/regression.py", []),
])
def test_examples_run_and_pass_their_parity_check(script, args, fashion):
    result = run(script, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and "PASS" in result.stdout
