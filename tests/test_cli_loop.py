"""The training-loop flags (optimizers, schedulers, --scheduler-interval, --clip-grad-norm, --accumulate,
--no-decay-on) in `jaxtrain train`, `jaxtrain parity` and `torchref train`: they run, the parity check
passes with them, and every bad value is one line and exit 2 in all three."""

import json
import subprocess
import sys

import pytest

from jaxtrain import cli as jax_cli
from torchref import cli as torch_cli

LOOP = ["--optimizer", "nadam", "--weight-decay", "0.01", "--no-decay-on", "bias,norm", "--model", "mlp_bn_dropout",
        "--scheduler", "onecycle", "--max-lr", "0.003", "--scheduler-interval", "step", "--clip-grad-norm", "0.5",
        "--accumulate", "2"]
SMALL = ["--epochs", "2", "--train-limit", "512", "--test-limit", "256"]


def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=600)


def test_train_and_torchref_train_run_the_users_loop_and_record_it(tmp_path, fashion):
    for module in ("jaxtrain", "torchref"):
        out = tmp_path / f"{module}.json"
        done = run(module, "train", *SMALL, *LOOP, "--metrics-out", str(out))
        assert done.returncode == 0, done.stderr
        config = json.loads(out.read_text())["config"]
        assert (config["optimizer"], config["scheduler"], config["accumulate"], config["no_decay_on"]) == (
            "nadam", "onecycle", 2, ["bias", "norm"])
        assert len(json.loads(out.read_text())["steps"]) == 2 * 8  # every batch's loss, 2 per optimizer step


def test_parity_holds_with_the_users_loop(fashion):
    done = run("jaxtrain", "parity", *SMALL, *LOOP)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PARITY PASSED" in done.stdout


@pytest.mark.corpus  # the suite's budget
def test_plateau_and_cyclic_momentum_pass_parity_in_float64(fashion):
    for flags in (["--optimizer", "sgd", "--momentum", "0.9", "--scheduler", "plateau", "--patience", "0",
                   "--threshold", "0.5"],
                  ["--optimizer", "adam", "--scheduler", "cyclic", "--max-lr", "0.005", "--step-size-up", "3",
                   "--scheduler-interval", "step"]):
        done = run("jaxtrain", "parity", *SMALL, "--dtype", "float64", *flags)
        assert done.returncode == 0 and "PARITY PASSED" in done.stdout, done.stdout + done.stderr


BAD = [
    (["--optimizer", "muon"], "invalid choice: 'muon'"),
    (["--scheduler", "lambda"], "invalid choice: 'lambda'"),
    (["--scheduler-interval", "batch"], "invalid choice: 'batch'"),
    (["--clip-grad-norm", "0"], "--clip-grad-norm must be a finite number > 0"),
    (["--clip-grad-norm", "inf"], "--clip-grad-norm must be a finite number > 0"),
    (["--accumulate", "0"], "must be >= 1"),
    (["--accumulate", "3", "--train-limit", "640"], "--accumulate 3 must divide the 10 batches"),
    (["--no-decay-on", "weights"], "expected bias, norm or bias,norm"),
    (["--no-decay-on", "bias", "--optimizer", "rprop"], "--optimizer rprop has no weight decay"),
    (["--scheduler", "plateau", "--scheduler-interval", "step"], "steps once per epoch on the test loss"),
    (["--scheduler", "plateau", "--factor", "1.5"], "--factor must be in"),
    (["--scheduler", "onecycle", "--optimizer", "adagrad"], "add --no-cycle-momentum"),
    (["--scheduler", "onecycle", "--pct-start", "1.5"], "--pct-start must be in (0, 1)"),
    (["--optimizer", "adadelta", "--rho", "2"], "invalid rho value"),
    (["--optimizer", "rprop", "--etas", "1.5", "1.2"], "invalid eta values"),
    (["--optimizer", "adafactor", "--d", "0.5"], "clipping threshold d should be >= 1"),
    (["--optimizer", "adam", "--decoupled-weight-decay"], "applies to nadam and radam only"),
]


@pytest.mark.parametrize("cli", ["jaxtrain train", "jaxtrain parity", "torchref train"])
@pytest.mark.parametrize("args, message", BAD)
def test_bad_loop_flags_are_one_line_and_exit_2(cli, args, message, capsys, fashion):
    main = torch_cli.main if cli.startswith("torchref") else jax_cli.main
    argv = [cli.split()[1], "--epochs", "1", "--test-limit", "64", *args]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
