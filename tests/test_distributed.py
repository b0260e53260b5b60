"""Data parallel: --devices, jaxtrain launch (jax.distributed), torchrun DDP, each against one device.

float64 runs: the only difference a split batch may make is the summation order, so step
losses and epoch metrics must equal the single-device run's to 1e-12 relative. Every
multi-process run here has a bounded timeout.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from jaxtrain import cli
from torchref.distributed import DataParallel

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240
# 651 training samples: the last batch has 11 rows, which do not split over 2 devices (JAX runs it
# replicated; torch's ranks get 6 and 5 rows); 202 test samples: a last batch of 10 rows, split 5/5.
F64 = ["--dtype", "float64", "--train-limit", "651", "--test-limit", "202", "--shuffle", "--quiet"]
BN_DROPOUT = ["--model", "mlp_bn_dropout", "--optimizer", "adam"]


def env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run(*argv, timeout=TIMEOUT):
    return subprocess.run([*argv], capture_output=True, text=True, timeout=timeout, env=env(), cwd=ROOT)


def jaxtrain(*args):
    return run(sys.executable, "-m", "jaxtrain", *args)


def metrics(path):
    record = json.loads(Path(path).read_text())
    steps = np.array([s["loss"] for s in record["steps"]])
    epochs = np.array([[e["train_loss"], e["test_loss"], e["test_accuracy"]] for e in record["epochs"]])
    return steps, epochs


def assert_same_trajectory(path, reference, rtol=1e-12):
    steps, epochs = metrics(path)
    ref_steps, ref_epochs = metrics(reference)
    assert steps.shape == ref_steps.shape and epochs.shape == ref_epochs.shape
    np.testing.assert_allclose(steps, ref_steps, rtol=rtol, atol=0)
    np.testing.assert_allclose(epochs, ref_epochs, rtol=rtol, atol=0)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory, fashion):
    """The single-device JAX run every data-parallel JAX run is compared with."""
    path = tmp_path_factory.mktemp("one") / "one.json"
    done = jaxtrain("train", "--epochs", "2", *F64, *BN_DROPOUT, "--metrics-out", str(path))
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, one_device):
    """`jaxtrain launch --nproc 2`, uninterrupted, checkpointing every epoch."""
    where = tmp_path_factory.mktemp("two")
    done = jaxtrain("launch", "--nproc", "2", "--", "train", "--epochs", "2", *F64, *BN_DROPOUT,
                    "--checkpoint-dir", str(where / "ck"), "--metrics-out", str(where / "two.json"))
    assert done.returncode == 0, done.stderr
    return where / "two.json"


def test_two_devices_follow_the_single_device_trajectory(tmp_path, one_device):
    """BatchNorm statistics over the global batch and dropout masks that do not depend on the split."""
    done = jaxtrain("train", "--devices", "2", "--epochs", "2", *F64, *BN_DROPOUT,
                    "--metrics-out", str(tmp_path / "two.json"))
    assert done.returncode == 0, done.stderr
    assert_same_trajectory(tmp_path / "two.json", one_device)


def test_two_processes_follow_the_single_device_trajectory(two_processes, one_device):
    assert_same_trajectory(two_processes, one_device)
    assert len(metrics(two_processes)[0]) == 2 * 11


@pytest.mark.corpus  # the suite's budget: float64 on two devices follows one device exactly, above
def test_float32_on_two_devices_holds_the_float32_parity_verdict(tmp_path, one_device):
    """float32 on 2 devices against float32 on one, both judged against float64 as the parity
    verdict judges two frameworks' float32 results (jaxtrain.parity.criteria.same_results)."""
    from jaxtrain.parity.criteria import same_results
    from jaxtrain.parity.runners import Trajectory

    for name, devices in (("one32", "1"), ("two32", "2")):
        done = jaxtrain("train", "--devices", devices, "--epochs", "2", *F64, *BN_DROPOUT, "--dtype", "float32",
                        "--metrics-out", str(tmp_path / f"{name}.json"))
        assert done.returncode == 0, done.stderr
    one32, two32, ref64 = (Trajectory(json.loads(Path(p).read_text()), [], [11, 22])
                           for p in (tmp_path / "one32.json", tmp_path / "two32.json", one_device))
    assert two32.record["config"]["dtype"] == "float32" and ref64.record["config"]["dtype"] == "float64"
    verdict = same_results(two32, one32, ref64, num_test=202)
    assert verdict["passed"], verdict["sentence"]
    np.testing.assert_allclose(two32.losses[0], one32.losses[0], rtol=1e-6)  # step 1: rounding only


@pytest.mark.corpus  # the suite's budget: one-process resume is exact in test_reliability; two processes here
def test_resume_under_two_processes_is_bit_identical(tmp_path, two_processes):
    ck = tmp_path / "ck"
    args = ["launch", "--nproc", "2", "--", "train", *F64, *BN_DROPOUT, "--checkpoint-dir", str(ck)]
    first = jaxtrain(*args, "--epochs", "1")
    assert first.returncode == 0, first.stderr
    resumed = jaxtrain(*args, "--epochs", "2", "--resume", "--metrics-out", str(tmp_path / "resumed.json"))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "resumed.json").read_text())["steps"] == json.loads(two_processes.read_text())["steps"]
    assert_same_trajectory(tmp_path / "resumed.json", two_processes, rtol=0)


def test_torchrun_ddp_follows_the_one_process_trajectory(tmp_path, fashion):
    """Unequal blocks of the last batch (6 and 5 rows) still give the global batch's mean."""
    args = ["train", "--epochs", "2", *F64, "--optimizer", "adam"]
    one = run(sys.executable, "-m", "torchref", *args, "--metrics-out", str(tmp_path / "one.json"))
    assert one.returncode == 0, one.stderr
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    ddp = run(torchrun, "--standalone", "--nproc-per-node", "2", "-m", "torchref", *args,
              "--metrics-out", str(tmp_path / "ddp.json"))
    assert ddp.returncode == 0, ddp.stderr
    assert_same_trajectory(tmp_path / "ddp.json", tmp_path / "one.json")


@pytest.mark.corpus  # a stress test: three torchrun launches in a row (the suite's budget)
def test_torchrun_ranks_end_cleanly_every_time(tmp_path, fashion):
    """torch 2.13's gloo group keeps its threads after destroy_process_group; tearing them down with
    the interpreter aborted a rank now and then (SIGABRT, then torchrun killed the other). Several
    runs in a row: every one exits 0 with its metrics and no abort."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    for attempt in range(3):
        out = tmp_path / f"run{attempt}.json"
        done = run(torchrun, "--standalone", "--nproc-per-node", "2", "-m", "torchref", "train", "--epochs", "1",
                   "--train-limit", "256", "--test-limit", "64", "--quiet", "--metrics-out", str(out))
        assert done.returncode == 0 and "terminate called" not in done.stderr, (attempt, done.stderr[-3000:])
        assert len(json.loads(out.read_text())["steps"]) == 4


def test_a_killed_rank_ends_the_launch_with_one_line_and_a_whole_checkpoint(tmp_path, fashion):
    ck, out = tmp_path / "ck", tmp_path / "m.json"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "jaxtrain", "launch", "--nproc", "2", "--", "train", "--epochs", "100",
         "--train-limit", "6400", "--test-limit", "500", "--checkpoint-dir", str(ck), "--metrics-out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT)
    try:
        deadline = time.time() + TIMEOUT
        while not (ck / "1").exists() and time.time() < deadline and launcher.poll() is None:
            time.sleep(0.1)
        assert (ck / "1").exists(), "no checkpoint after the first epoch"
        rank1 = subprocess.run(["pgrep", "-f", "--", f"--checkpoint-dir {ck} .*--process-id 1"], capture_output=True,
                               text=True).stdout.split()
        assert len(rank1) == 1
        killed_at = time.time()
        os.kill(int(rank1[0]), signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=60)
        assert time.time() - killed_at < 60
    finally:
        launcher.kill()
    assert launcher.returncode == 128 + signal.SIGKILL
    assert "Traceback" not in stderr
    assert "jaxtrain launch: rank 1 of 2 was killed by SIGKILL; stopping the other ranks" in stderr.splitlines()
    assert not out.exists()  # no half-written metrics
    assert any(p.name.isdigit() for p in ck.iterdir())  # orbax renames a checkpoint into place when whole
    resumed = jaxtrain("train", "--epochs", "1", "--train-limit", "6400", "--test-limit", "500",
                       "--checkpoint-dir", str(ck), "--resume")  # one process resumes the 2-process checkpoint
    assert resumed.returncode == 0, resumed.stderr


def test_launch_forwards_sigint_and_every_rank_stops_at_the_same_epoch(tmp_path, fashion):
    ck = tmp_path / "ck"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "jaxtrain", "launch", "--nproc", "2", "--", "train", "--epochs", "100",
         "--train-limit", "3200", "--test-limit", "200", "--checkpoint-dir", str(ck), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT)
    try:
        deadline = time.time() + TIMEOUT
        while not (ck / "1").exists() and time.time() < deadline and launcher.poll() is None:
            time.sleep(0.1)
        launcher.send_signal(signal.SIGINT)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode == 128 + signal.SIGINT, stderr
    stops = [line for line in stderr.splitlines() if "SIGINT after epoch" in line]
    assert len(stops) == 2 and stops[0] == stops[1], stderr  # both ranks, the same epoch
    epoch = int(stops[0].split("after epoch ")[1].split(";")[0])
    assert 1 <= epoch < 100 and (ck / str(epoch)).is_dir()


def test_coordinator_auto_without_a_cluster_is_one_line(fashion):
    clean = {k: v for k, v in env().items() if not k.startswith(("SLURM_", "OMPI_", "KUBERNETES_", "TPU_"))}
    done = subprocess.run([sys.executable, "-m", "jaxtrain", "train", "--coordinator", "auto", "--epochs", "1",
                           "--train-limit", "64", "--quiet"], capture_output=True, text=True, timeout=TIMEOUT,
                          env=clean, cwd=ROOT)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "JAX detected no cluster" in done.stderr, done.stderr


def test_batch_that_does_not_split_over_the_devices_is_one_line(fashion):
    done = jaxtrain("train", "--devices", "3", "--epochs", "1", "--train-limit", "64", "--quiet")
    assert done.returncode == 2
    assert done.stderr.strip() == "jaxtrain: error: --batch-size 64 does not split over 3 devices; use a multiple of 3"


@pytest.mark.parametrize("argv, message", [
    (["train", "--num-processes", "2"], "--num-processes and --process-id need --coordinator HOST:PORT"),
    (["train", "--coordinator", "nowhere"], "expected HOST:PORT"),
    (["train", "--coordinator", "localhost:1", "--num-processes", "2"], "needs --num-processes N and --process-id I"),
    (["train", "--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "2"],
     "--process-id must be in [0, 2)"),
    (["launch", "--nproc", "2", "--", "parity"], "launch runs train"),
    (["launch", "--nproc", "2", "--", "train", "--process-id", "1"], "--process-id is set by jaxtrain launch"),
])
def test_bad_data_parallel_flags_are_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_rank_blocks_and_loss_shares_add_up_to_the_global_batch():
    """torchref's split of one global batch of 11 rows over 2 ranks, and the loss each rank
    backpropagates: the shares of the per-rank means sum to the mean over all 11 rows."""
    rows = np.arange(100, 111)
    ranks = [DataParallel(world_size=2, rank=r) for r in range(2)]
    blocks = [p.rank_rows(rows) for p in ranks]
    assert [len(b) for b in blocks] == [6, 5] and np.array_equal(np.concatenate(blocks), rows)
    losses = torch.arange(11, dtype=torch.float64) ** 2
    mean = torch.nn.MSELoss()  # only its reduction is read
    shares = [p.loss_share(losses[b - 100].mean(), mean, len(b), 11) for p, b in zip(ranks, blocks)]
    assert torch.isclose(sum(shares), losses.mean(), rtol=1e-15)
    total = torch.nn.MSELoss(reduction="sum")
    assert sum(p.loss_share(losses[b - 100].sum(), total, len(b), 11) for p, b in zip(ranks, blocks)) == losses.sum()
    with pytest.raises(Exception, match="fewer than the 2 ranks"):
        ranks[0].check_batches(65, 64, "training")  # a last batch of 1 row cannot feed 2 ranks
