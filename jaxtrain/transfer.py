"""Weights both ways between a torch `state_dict` and Flax `params` / `batch_stats`.

Names map by the `nn.Sequential` index: `linear_relu_stack.{i}.*` <-> `linear_relu_stack_{i}`.
- Linear: torch `weight` is (out, in), Flax `kernel` is (in, out): transposed.
- BatchNorm1d: `weight`/`bias` <-> `scale`/`bias`; `running_mean`/`running_var` <-> `mean`/`var`.
  torch keeps the *unbiased* running variance; `jaxtrain.models.TorchBatchNorm`
  keeps the same, so it copies as is. (Flax's own `nn.BatchNorm` keeps the
  biased variance of the batches it saw; `unbiased_to_biased` converts a
  variance estimated from batches of n samples for it.)
Arrays are numpy on both sides; torchref converts tensors with `.numpy()`.
"""

from __future__ import annotations

import re

import numpy as np

_TORCH_KEY = re.compile(r"^(?P<layer>[a-z_]+)\.(?P<index>\d+)\.(?P<name>\w+)$")


def torch_to_flax(state_dict: dict) -> tuple[dict, dict]:
    """A torch state_dict (numpy values) -> (params, batch_stats) for jaxtrain.models."""
    params: dict = {}
    batch_stats: dict = {}
    for key, value in state_dict.items():
        match = _TORCH_KEY.match(key)
        if match is None:
            raise KeyError(f"unexpected torch parameter name {key!r}")
        module = f"{match['layer']}_{match['index']}"
        name, value = match["name"], np.asarray(value)
        if name == "weight" and value.ndim == 2:
            params.setdefault(module, {})["kernel"] = value.T.copy()
        elif name == "weight":
            params.setdefault(module, {})["scale"] = value.copy()
        elif name == "bias":
            params.setdefault(module, {})["bias"] = value.copy()
        elif name == "running_mean":
            batch_stats.setdefault(module, {})["mean"] = value.copy()
        elif name == "running_var":
            batch_stats.setdefault(module, {})["var"] = value.copy()
        elif name != "num_batches_tracked":
            raise KeyError(f"unexpected torch parameter name {key!r}")
    return params, batch_stats


def flax_to_torch(params: dict, batch_stats: dict | None = None) -> dict:
    """(params, batch_stats) of jaxtrain.models -> a torch state_dict layout (numpy values)."""
    out: dict = {}
    for module, leaves in params.items():
        prefix = re.sub(r"_(\d+)$", r".\1", module)
        if "kernel" in leaves:
            out[f"{prefix}.weight"] = np.asarray(leaves["kernel"]).T.copy()
        else:
            out[f"{prefix}.weight"] = np.asarray(leaves["scale"]).copy()
        out[f"{prefix}.bias"] = np.asarray(leaves["bias"]).copy()
        if batch_stats and module in batch_stats:
            out[f"{prefix}.running_mean"] = np.asarray(batch_stats[module]["mean"]).copy()
            out[f"{prefix}.running_var"] = np.asarray(batch_stats[module]["var"]).copy()
            out[f"{prefix}.num_batches_tracked"] = np.asarray(0, dtype=np.int64)
    return out


def unbiased_to_biased(var: np.ndarray, n: int) -> np.ndarray:
    """Variance of n samples: the unbiased (n-1) estimate -> the biased (n) one."""
    return var * (n - 1) / n
