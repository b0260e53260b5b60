"""jaxtrain.testing: port checks in a user's own suite. A healthy port passes both assertions; a planted bug
fails with a message naming the step, stage, torch layer and diagnosis; a port that computes something else
fails assert_converts saying where."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from examples.layernorm_mlp import NnxLayerNormMLP, TorchLayerNormMLP
from jaxtrain.testing import assert_converts

ROOT = Path(__file__).resolve().parents[1]
rng = np.random.default_rng(0)
IMAGES = rng.normal(size=(384, 1, 28, 28)).astype(np.float32)
LABELS = rng.integers(0, 10, 384)


@pytest.mark.corpus  # the suite's budget: the planted bug below runs a user-style file in the suite
def test_the_example_test_file_passes_as_a_user_runs_it():
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "examples/test_my_port.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]


PLANTED = """
import numpy as np
from flax import nnx

from examples.layernorm_mlp import NnxLayerNormMLP, TorchLayerNormMLP
from jaxtrain.testing import assert_port

rng = np.random.default_rng(0)
IMAGES = rng.normal(size=(256, 1, 28, 28)).astype(np.float32)
LABELS = rng.integers(0, 10, 256)


def test_my_port_trains_like_torch():
    assert_port(TorchLayerNormMLP(), NnxLayerNormMLP(epsilon=1e-6, rngs=nnx.Rngs(0)), train=(IMAGES, LABELS),
                optimizer="adam", optimizer_kwargs={"lr": 1e-3}, batch_size=32, steps=4, dtypes=("float64",))
"""


def test_a_planted_bug_in_a_users_test_file_fails_naming_step_stage_layer_and_diagnosis(tmp_path):
    """Flax's LayerNorm epsilon (1e-6; torch's is 1e-5), checked by a pytest file written as a user writes one."""
    (tmp_path / "test_users_port.py").write_text(PLANTED)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    out = done.stdout
    assert done.returncode == 1 and "1 failed" in out, out[-3000:]
    message = out[out.index("AssertionError: the port does not train like the torch model"):]
    assert "localised: first difference at step 1, stage forward, net.2 (output) (layer net.2)" in message, message
    assert "DIAGNOSIS (LayerNorm eps)" in message, message
    assert "jax loss" not in message  # the verdict, not the per-epoch tables


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
