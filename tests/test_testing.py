"""jaxtrain.testing: port checks in a user's own suite. A healthy port passes both assertions; a planted bug
fails with a message naming the step, stage, torch layer and diagnosis; a port that computes something else
fails assert_converts saying where."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flax import nnx

from examples.layernorm_mlp import NnxLayerNormMLP, TorchLayerNormMLP
from jaxtrain.testing import assert_converts, assert_port

ROOT = Path(__file__).resolve().parents[1]
rng = np.random.default_rng(0)
IMAGES = rng.normal(size=(384, 1, 28, 28)).astype(np.float32)
LABELS = rng.integers(0, 10, 384)


def test_the_example_test_file_passes_as_a_user_runs_it():
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "examples/test_my_port.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]


def test_a_planted_bug_fails_assert_port_naming_step_stage_layer_and_diagnosis():
    torch.manual_seed(0)
    with pytest.raises(AssertionError) as failed:
        assert_port(TorchLayerNormMLP(), NnxLayerNormMLP(epsilon=1e-6, rngs=nnx.Rngs(0)),  # Flax's default epsilon
                    train=(IMAGES[:256], LABELS[:256]), optimizer="adam", optimizer_kwargs={"lr": 1e-3},
                    batch_size=32, steps=4, dtypes=("float64",))
    message = str(failed.value)
    assert "localised: first difference at step 1, stage forward" in message, message
    assert "net.2" in message and "DIAGNOSIS" in message and "eps" in message.lower(), message
    assert "jax loss" not in message  # the verdict, not the per-epoch tables
    assert len(message.splitlines()) < 25


def test_assert_converts_says_where_the_forward_pass_differs():
    class Doubled(NnxLayerNormMLP):
        def __call__(self, x):
            return 2 * super().__call__(x)

    with pytest.raises(AssertionError, match=r"forward pass differs from torch's: element \[\d+, \d+\]"):
        assert_converts(TorchLayerNormMLP(), Doubled(rngs=nnx.Rngs(0)), IMAGES[:4])


def test_assert_converts_returns_the_port_holding_torchs_weights():
    torch_model = TorchLayerNormMLP()
    port = assert_converts(torch_model, NnxLayerNormMLP(rngs=nnx.Rngs(0)), IMAGES[:4])
    np.testing.assert_array_equal(np.asarray(port.hidden.kernel[...]), torch_model.net[1].weight.detach().numpy().T)
