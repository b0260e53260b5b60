"""Checkpoints, exact resume, interrupts, kill -9 during saves, the NaN guard, bad input."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--train-limit", "1280", "--test-limit", "500", "--shuffle", "--model", "mlp_bn_dropout",
         "--optimizer", "adam", "--scheduler", "step", "--quiet"]


def env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def cli(prog, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", prog, "train", *args], capture_output=True, text=True,
                          timeout=timeout, env=env(), cwd=ROOT)


def trajectory(path):
    record = json.loads(Path(path).read_text())
    return record["steps"], [{k: v for k, v in e.items() if k != "seconds"} for e in record["epochs"]]


def checkpoints(directory: Path, prog: str) -> list:
    if not directory.exists():
        return []
    if prog == "jaxtrain":
        return sorted(p.name for p in directory.iterdir() if p.name.isdigit())
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".pt"))


# the suite's budget on the slowest kind: the torch twin's run among the long checks (make corpus), JAX's here
@pytest.mark.parametrize("prog", ["jaxtrain", pytest.param("torchref", marks=pytest.mark.corpus)])
def test_resume_is_bit_identical_to_an_uninterrupted_run(prog, tmp_path, fashion):
    ck = tmp_path / "ck"
    first = cli(prog, "--epochs", "2", *SMALL, "--checkpoint-dir", str(ck))
    assert first.returncode == 0, first.stderr
    assert len(checkpoints(ck, prog)) == 2
    resumed = cli(prog, "--epochs", "4", *SMALL, "--checkpoint-dir", str(ck), "--resume",
                  "--metrics-out", str(tmp_path / "resumed.json"))
    assert resumed.returncode == 0, resumed.stderr
    straight = cli(prog, "--epochs", "4", *SMALL, "--metrics-out", str(tmp_path / "straight.json"))
    assert straight.returncode == 0, straight.stderr
    steps, epochs = trajectory(tmp_path / "resumed.json")
    assert (steps, epochs) == trajectory(tmp_path / "straight.json")  # every float, exactly
    assert len(steps) == 80 and len(epochs) == 4


# the suite's budget: the torch twin's run among the long checks (make corpus), JAX's here
@pytest.mark.parametrize("prog", ["jaxtrain", pytest.param("torchref", marks=pytest.mark.corpus)])
def test_sigterm_saves_then_resume_finishes_the_same_run(prog, tmp_path, fashion):
    ck = tmp_path / "ck"
    args = ["--epochs", "12", "--train-limit", "3200", "--test-limit", "200", "--shuffle", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", prog, "train", *args, "--checkpoint-dir", str(ck),
                             "--checkpoint-every", "3"], stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT)
    deadline = time.time() + 300
    while not checkpoints(ck, prog) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert len(stderr.strip().splitlines()) == 1 and "resume with" in stderr and "SIGTERM after epoch" in stderr
    stopped_at = int(stderr.split("after epoch ")[1].split(";")[0])
    assert stopped_at < 12  # stopped early, at an epoch boundary, and saved there
    resumed = cli(prog, *args, "--checkpoint-dir", str(ck), "--resume", "--metrics-out", str(tmp_path / "r.json"))
    assert resumed.returncode == 0, resumed.stderr
    straight = cli(prog, *args, "--metrics-out", str(tmp_path / "s.json"))
    assert straight.returncode == 0, straight.stderr
    assert trajectory(tmp_path / "r.json") == trajectory(tmp_path / "s.json")


# the suite's budget: a stress test (kills at random moments), among the long checks (make corpus); the
# suite keeps the resume and SIGTERM runs
@pytest.mark.corpus
@pytest.mark.parametrize("prog", ["jaxtrain", "torchref"])
def test_kill_9_at_random_moments_always_leaves_a_restorable_checkpoint(prog, tmp_path, fashion):
    """Checkpoint every epoch (tiny epochs: saving is a large share of the time) and SIGKILL
    at random moments; every time, --resume must load the latest complete checkpoint."""
    rng = random.Random(0)
    args = ["--epochs", "400", "--train-limit", "128", "--test-limit", "64", "--quiet", "--keep", "2"]
    for attempt in range(3):
        ck = tmp_path / f"ck{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", prog, "train", *args, "--checkpoint-dir", str(ck)],
                                stderr=subprocess.DEVNULL, env=env(), cwd=ROOT)
        deadline = time.time() + 300
        while not checkpoints(ck, prog) and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        resumed = cli(prog, *args, "--checkpoint-dir", str(ck), "--resume", "--epochs", "1")
        # --epochs 1 < epochs done: nothing to train, but the checkpoint must load
        assert resumed.returncode == 0, (attempt, resumed.stderr)


@pytest.mark.parametrize("prog", ["jaxtrain", pytest.param("torchref", marks=pytest.mark.corpus)])  # the budget
def test_nan_guard_stops_with_step_and_epoch_and_keeps_the_last_good_checkpoint(prog, tmp_path, fashion):
    ck = tmp_path / "ck"
    # the learning rate grows 100x each epoch: fine at first, divergent later
    args = ["--epochs", "6", "--train-limit", "640", "--test-limit", "100", "--lr", "1", "--optimizer", "sgd",
            "--momentum", "0.9", "--scheduler", "exponential", "--gamma", "100", "--quiet"]
    run = cli(prog, *args, "--checkpoint-dir", str(ck), "--metrics-out", str(tmp_path / "m.json"))
    assert run.returncode == 3
    line = run.stderr.strip()
    assert len(line.splitlines()) == 1 and "loss became" in line and "Traceback" not in line
    epoch = int(line.split("(epoch ")[1].split(")")[0])
    assert epoch >= 2
    saved = checkpoints(ck, prog)
    assert saved and int(saved[-1].split("-")[-1].split(".")[0]) == epoch - 1  # the last good epoch
    assert not (tmp_path / "m.json").exists()  # no half-written metrics
    unguarded = cli(prog, *args, "--no-nan-guard", "--metrics-out", str(tmp_path / "nan.json"))
    assert unguarded.returncode == 0
    assert any(s["loss"] != s["loss"] for s in json.loads((tmp_path / "nan.json").read_text())["steps"])


# the suite's budget: the torch twin's run among the long checks (make corpus), JAX's here
@pytest.mark.parametrize("prog", ["jaxtrain", pytest.param("torchref", marks=pytest.mark.corpus)])
def test_checkpoint_from_another_config_is_refused(prog, tmp_path, fashion):
    ck = tmp_path / "ck"
    assert cli(prog, "--epochs", "1", "--train-limit", "640", "--test-limit", "100", "--quiet",
               "--checkpoint-dir", str(ck)).returncode == 0
    run = cli(prog, "--epochs", "2", "--train-limit", "640", "--test-limit", "100", "--quiet", "--lr", "0.01",
              "--checkpoint-dir", str(ck), "--resume")
    assert run.returncode == 2
    assert "checkpoint was made with --lr 0.001, this run has 0.01" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("prog", ["jaxtrain", "torchref"])
@pytest.mark.parametrize("args, message", [
    (["--resume"], "--resume needs --checkpoint-dir"),
    (["--checkpoint-dir", "/proc/version"], "is not a directory"),
    (["--checkpoint-dir", "/proc/jaxtrain-ck"], "cannot create --checkpoint-dir"),
    (["--keep", "0"], "must be >= 1"),
    (["--metrics-out", "/proc"], "is a directory"),
    (["--data-dir", "/tmp"], "FashionMNIST not found"),
])
def test_bad_reliability_flags_are_one_line_exit_2(prog, args, message):
    run = cli(prog, "--epochs", "1", *args)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1
