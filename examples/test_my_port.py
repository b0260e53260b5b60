"""Port checks in your own test suite: copy this file, put your torch model and your Flax port in place of the
LayerNorm MLP below, and run it with pytest (`pytest examples/test_my_port.py`).

`assert_converts` loads torch's weights into the port, compares the forward passes and loads them back;
`assert_port` trains both side by side (`check_port`) and fails with the step, stage, torch layer and
diagnosis of the first difference.
"""

import numpy as np
from flax import nnx

from examples.layernorm_mlp import NnxLayerNormMLP, TorchLayerNormMLP
from jaxtrain.testing import assert_converts, assert_port

rng = np.random.default_rng(0)
IMAGES = rng.normal(size=(384, 1, 28, 28)).astype(np.float32)  # your inputs, in torch's layout
LABELS = rng.integers(0, 10, 384)


def test_the_port_loads_torchs_weights():
    assert_converts(TorchLayerNormMLP(), NnxLayerNormMLP(rngs=nnx.Rngs(0)), IMAGES[:4])


def test_the_port_trains_like_torch():
    assert_port(TorchLayerNormMLP(), NnxLayerNormMLP(rngs=nnx.Rngs(0)),
                train=(IMAGES[:256], LABELS[:256]), test=(IMAGES[256:], LABELS[256:]),
                optimizer="adam", optimizer_kwargs={"lr": 1e-3}, batch_size=32, steps=8)
