"""The GPU report command: its CPU-runnable parts (parity, corpus subset, bench) end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, timeout=900, outside=None):
    """The report as `make gpu-report` runs it (the tree on PYTHONPATH), or, with `outside` a folder, as a user
    runs the installed package from there (the checkout not on the path: examples/ cannot be loaded)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)} if outside is None else {
        k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "jaxtrain.gpu_report", *args], capture_output=True, text=True,
                          cwd=ROOT if outside is None else outside, env=env, timeout=timeout)


def test_refuses_without_a_gpu_in_one_line():
    import torch

    if torch.cuda.is_available():  # on a GPU machine this test has nothing to check
        return
    result = run("--out", "/nonexistent")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "no CUDA GPU" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.corpus  # about 6 minutes on the 2-core Intel machine with compare_port's suite: a long check
def test_quick_report_on_the_cpu_runs_to_the_end_outside_the_checkout(tmp_path, fashion):
    """The installed package, from a folder other than the checkout: every part, the speed part included."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    result = run("--allow-cpu", "--quick", "--out", str(out), outside=elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["cpu-parity.png", "cpu-ports.png", "cpu.json", "cpu.md", "cpu.png"]
    report = json.loads((out / "cpu.json").read_text())
    assert {"device", "jax_device", "jax", "torch", "quick", "parity", "corpus", "bench", "ports"} <= set(report)
    assert {"transformer_lm", "bn_cnn", "lstm_classifier"} == set(report["ports"]["models"])  # compare_port's suite
    assert all(m["same_model"]["passed"] for m in report["ports"]["models"].values())
    assert report["parity"]["passed"] and set(report["parity"]["verdict"]) == {"same_math", "same_precision",
                                                                              "same_results"}
    from jaxtrain.parity.corpus import QUICK_BUGS, QUICK_HEALTHY

    assert [r["case"] for r in report["corpus"]] == [QUICK_HEALTHY[0], QUICK_BUGS[0]]  # --quick: one of each
    assert all(r["ok"] for r in report["corpus"])
    assert "shape_floor_seconds" in report["bench"] and "torch_compile" in {v["name"] for v in report["bench"]["variants"]}
    text = (out / "cpu.md").read_text()
    assert "PARITY PASSED" in text and "Verdict corpus" in text and "jax_epoch" in text
