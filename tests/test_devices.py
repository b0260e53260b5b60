"""GPU correctness settings, checked where a CPU can check them."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from jaxtrain.bench import tutorial as bench
from jaxtrain.config import Config

ROOT = Path(__file__).resolve().parents[1]


def test_parity_mode_sets_both_frameworks_for_a_shared_deterministic_gpu():
    code = ("from jaxtrain import devices; devices.parity_mode(); import os, torch; "
            "print(os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'], os.environ['XLA_FLAGS'], "
            "os.environ['CUBLAS_WORKSPACE_CONFIG'], torch.are_deterministic_algorithms_enabled(), "
            "torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, "
            "torch.get_float32_matmul_precision(), sep='|')")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE")}
    env["XLA_FLAGS"] = "--xla_dump_to=/nonexistent-keep-me"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    prealloc, flags, cublas, deterministic, cudnn_tf32, matmul_tf32, precision = out.stdout.strip().split("|")
    assert prealloc == "false"
    assert flags == "--xla_dump_to=/nonexistent-keep-me --xla_gpu_deterministic_ops=true"  # the user's flags kept
    assert cublas == ":4096:8" and deterministic == "True"
    assert cudnn_tf32 == "False" and matmul_tf32 == "False" and precision == "highest"


def test_bench_measures_rates_at_full_float32_precision():
    import jax

    jax.config.update("jax_default_matmul_precision", "default")
    torch.set_float32_matmul_precision("high")
    bench._full_precision()
    assert jax.config.jax_default_matmul_precision == "highest"
    assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32


def test_shape_floor_counts_every_gemm_of_a_step():
    flop = sum(2 * m * k * n for m, k, n in bench.step_gemms(64))
    assert flop == bench.epoch_flop(64)
    floor = bench.shape_floor(100, 64)  # one batch of 64 and one of 36
    assert [(g["m"], g["per_epoch"]) for g in floor["shapes"][:1]] == [(64, 1)]
    assert {g["m"] for g in floor["shapes"] if g["k"] == 784} == {64, 36}
    assert floor["seconds"] == sum(g["per_epoch"] * g["seconds"][g["best"]] for g in floor["shapes"])
    assert all(set(g["seconds"]) == {"jax", "torch", "numpy"} for g in floor["shapes"])


def test_torch_checkpoints_carry_the_cuda_rng_states(tmp_path):
    from torchref.checkpoint import TorchCheckpointer
    from torchref.train import setup

    config = Config(epochs=1)
    model, _, optimizer, scheduler = setup(config)
    saver = TorchCheckpointer(str(tmp_path), keep=1)
    saver.save(1, (model, optimizer, scheduler), {"config": config.to_json(), "steps": [], "epochs": []})
    payload = torch.load(next(tmp_path.glob("epoch-*.pt")), weights_only=False)
    assert payload["cuda_rng"] == ([] if not torch.cuda.is_available() else torch.cuda.get_rng_state_all())
    record, epochs_done = saver.restorer(config)(model, optimizer, scheduler)
    assert epochs_done == 1


def test_make_setup_has_an_explicit_cuda_path_and_keeps_the_cpu_default():
    def dry(*args):
        return subprocess.run(["make", "-n", "-B", "setup", *args], capture_output=True, text=True, cwd=ROOT,
                              timeout=60)

    cpu, cuda, bad = dry(), dry("CUDA=12"), dry("CUDA=11")
    assert cpu.returncode == 0 and "-c constraints.txt" in cpu.stdout and "cuda12" not in cpu.stdout
    assert cuda.returncode == 0 and '"jax[cuda12]"' in cuda.stdout and "pip --isolated install" in cuda.stdout
    assert ".installed-cuda12" in cuda.stdout
    assert bad.returncode != 0 and "CUDA=11 is not supported" in bad.stderr
