"""Device settings the two frameworks need when they share a GPU, or must agree on one.

Environment variables must be set before JAX starts its backend (the first
array or `jax.devices()`), so the command-line entry points call these first.
On a CPU-only machine they change nothing that matters.
"""

from __future__ import annotations

import os

DETERMINISTIC_XLA_FLAG = "--xla_gpu_deterministic_ops=true"


def share_device() -> None:
    """JAX preallocates 75% of GPU memory per process; parity runs JAX and torch in one process
    and the bench runs several JAX workers, so allocate on demand instead."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def deterministic_env() -> None:
    """Deterministic GPU reductions in XLA; cuBLAS's deterministic workspace for torch."""
    flags = os.environ.get("XLA_FLAGS", "")
    if DETERMINISTIC_XLA_FLAG.split("=")[0] not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_XLA_FLAG}".strip()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def torch_full_precision(deterministic: bool = False) -> None:
    """No TF32 in torch's matmuls or cuDNN convolutions (users' ports have convolutions);
    with `deterministic`, deterministic algorithms only, as parity needs."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    if deterministic:
        torch.backends.mha.set_fastpath_enabled(False)  # eval-mode attention as in training, not fused kernels
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)


def parity_mode() -> None:
    """Everything parity needs from both frameworks (JAX's full matmul precision is set by
    `jaxtrain.train.configure_jax`)."""
    share_device()
    deterministic_env()
    torch_full_precision(deterministic=True)
