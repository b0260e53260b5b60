"""`jaxtrain train` end to end, as a user runs it."""

import json
import re
import subprocess
import sys

import pytest


def jaxtrain(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "jaxtrain", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_train_prints_the_tutorial_format_and_writes_the_metrics_schema(tmp_path, fashion):
    out = tmp_path / "m.json"
    run = jaxtrain("train", "--epochs", "2", "--train-limit", "6400", "--test-limit", "1000",
                   "--metrics-out", str(out))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[:3] == ["Epoch 1", "-------------------------------", lines[2]]
    assert re.fullmatch(r"loss: \d\.\d{6}  \[   64/ 6400\]", lines[2])
    assert sum(bool(re.fullmatch(r"loss: \d\.\d{6}  \[   64/ 6400\]", line)) for line in lines) == 2
    assert "Test Error: " in lines and "Done!" in lines
    assert any(re.fullmatch(r" Accuracy: \d+\.\d%, Avg loss: \d\.\d{6} ", line) for line in lines)
    assert re.search(r"compile: [\d.]+ s; train epoch \(steady state", run.stdout)
    record = json.loads(out.read_text())
    assert list(record) == ["framework", "config", "device", "steps", "epochs"]
    assert record["framework"] == "jax" and record["device"] == "cpu"
    assert record["config"]["train_limit"] == 6400 and record["config"]["optimizer"] == "sgd"
    assert [s["step"] for s in record["steps"]] == list(range(1, 201))
    assert list(record["epochs"][0]) == ["epoch", "train_loss", "test_loss", "test_accuracy", "seconds"]
    first = record["epochs"][0]
    assert first["train_loss"] == pytest.approx(sum(s["loss"] for s in record["steps"][:100]) / 100)
    assert 0 <= first["test_accuracy"] <= 1 and first["seconds"] > 0
    printed = re.search(r"Avg loss: (\d\.\d{6})", run.stdout).group(1)
    assert float(printed) == pytest.approx(first["test_loss"], abs=1e-6)


def test_quiet_and_progress(fashion):
    quiet = jaxtrain("train", "--epochs", "1", "--train-limit", "640", "--test-limit", "64", "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == ""
    bar = jaxtrain("train", "--epochs", "2", "--train-limit", "640", "--test-limit", "64", "--progress")
    assert bar.returncode == 0 and "2/2" in bar.stderr and "Epoch 1" not in bar.stdout


@pytest.mark.parametrize("args, message", [
    (["--lr", "-1"], "--lr must be > 0"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--epochs", "0"], "must be >= 1"),
    (["--batch-size", "0"], "must be >= 1"),
    (["--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
    (["--scheduler", "warmup"], "invalid choice: 'warmup'"),
    (["--nesterov"], "Nesterov momentum requires a momentum and zero dampening"),
    (["--optimizer", "adam", "--betas", "1.0", "0.999"], "invalid beta parameters"),
    (["--weight-decay", "-0.1"], "invalid weight_decay value"),
    (["--data-dir", "/no/such/dir"], "--data-dir does not exist"),
    (["--metrics-out", "/no/such/dir/m.json"], "does not exist; create it first"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    run = jaxtrain("train", "--epochs", "1", *args)
    assert run.returncode == 2
    assert message in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
