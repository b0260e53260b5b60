"""check_port on habits of real torch code that are not porting bugs (the models: jaxtrain.parity.corpus.habits,
whose every case `make corpus` runs): in-place inputs, a 0-d parameter and a default-dtype causal mask need no
glue; a scale that moved across a layer boundary is no difference; a buffer the port keeps as a parameter pairs;
a failure of jaxtrain's own code is reported as ours, never as the model's."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxtrain.errors import InternalError, PortMappingError
from jaxtrain.parity import check_port
from jaxtrain.parity.corpus.habits import (ADAMW, CHECK, HEALTHY, NnxBiasParam, NnxHabits, NnxScaled, TorchBiasBuffer,
                                           TorchHabits, TorchScaled, lm_data)


def test_in_place_inputs_scalar_parameter_and_default_dtype_mask_need_no_glue():
    (ids, positions), y = lm_data()
    kept = positions.copy()
    report = check_port(TorchHabits(), NnxHabits(), train=((ids, positions), y), test=((ids[:32], positions[:32]),
                                                                                      y[:32]), **CHECK)
    assert report.passed, report
    np.testing.assert_array_equal(positions, kept)  # the model's `+=` never reached the user's arrays
    assert torch.get_default_dtype() == torch.float32  # restored after the float64 runs


def test_our_own_failure_is_reported_as_ours(monkeypatch):
    from jaxtrain.parity import runners

    # a bug planted in jaxtrain's torch' run: its per-step hook takes the log of the first step's index, 0
    monkeypatch.setattr(runners.TorchRunner, "_nudge", staticmethod(math.log))
    (ids, positions), y = lm_data()
    with pytest.raises(InternalError, match=r"jaxtrain failed in the float64 torch_rounding run .*not the model: "
                                            r"ValueError: math domain error .*at jaxtrain/parity/runners.py:\d+ in "
                                            r"_count_step"):
        check_port(TorchHabits(), NnxHabits(), train=((ids, positions), y), dtypes=("float64",), **CHECK)


def test_the_models_own_failure_is_still_the_models():
    class Fails(TorchHabits):
        def forward(self, ids, position_ids):
            if self.training and ids.dtype == torch.int64 and self.logit_scale.dtype == torch.float64:
                raise RuntimeError("the user's float64 path is broken")
            return super().forward(ids, position_ids)

    (ids, positions), y = lm_data()
    with pytest.raises(PortMappingError, match="the torch model fails in the float64 run .*RuntimeError: the user's"):
        check_port(Fails(), NnxHabits(), train=((ids, positions), y), dtypes=("float64",), **CHECK)


# --------------------------------------------------------------------------- a computation across a layer boundary


def test_a_scale_moved_across_a_layer_boundary_is_no_difference_and_is_said():
    (ids, _), y = lm_data()
    report = check_port(TorchScaled(), NnxScaled(), train=(ids, y[:, 0]), test=(ids[:32], y[:32, 0]), **CHECK)
    assert report.passed, report
    assert any("embed's output differs but proj receives the same input" in f for f in report.findings), report


def test_a_buffer_the_port_keeps_as_a_parameter_pairs_by_name_and_its_decay_is_named():
    """The tied head, the buffer and the port's Param pair (no weight_map); AdamW decays only the port's copy."""
    (ids, _), y = lm_data()
    report = check_port(TorchBiasBuffer(), NnxBiasParam(), train=(ids, y), dtypes=("float64",), **ADAMW)
    assert not report.passed and report.diagnosis["trap"] == "frozen tensor trained", report
    assert "final_logits_bias" in report.diagnosis["sentence"]


# --------------------------------------------------------------------------- float32 only: no float64 run at all


class TorchFloat32Head(torch.nn.Module):
    """A model that cannot run in float64: its head's input is cast to float32 in its own code."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(13, 8)
        self.head = torch.nn.Linear(8, 13)

    def forward(self, ids):
        return self.head(self.embed(ids).mean(1).to(torch.float32))


class NnxFloat32Head(nnx.Module):
    def __init__(self, pool=jnp.mean):
        rngs = nnx.Rngs(0)
        self.embed, self.head, self.pool = nnx.Embed(13, 8, rngs=rngs), nnx.Linear(8, 13, rngs=rngs), pool

    def __call__(self, ids):
        return self.head(self.pool(self.embed(ids), axis=1))


def test_float32_only_runs_nothing_in_float64_and_judges_against_torchs_float32():
    (ids, _), y = lm_data()
    data = dict(train=(ids, y[:, 0]), test=(ids[:32], y[:32, 0]), **CHECK)
    with pytest.raises(PortMappingError, match="the torch model fails in the float64 run"):
        check_port(TorchFloat32Head(), NnxFloat32Head(), **data)
    report = check_port(TorchFloat32Head(), NnxFloat32Head(), dtypes="float32", **data)
    assert report.passed, report
    assert {dtype for _, dtype in report.trajectories} == {"float32"}
    assert report.verdict["same_math"] is None
    assert "against torch's float32 run" in report.verdict["same_precision"]["sentence"]
    bug = check_port(TorchFloat32Head(), NnxFloat32Head(pool=jnp.sum), dtypes=("float32",), **data)
    assert not bug.passed
    assert (bug.checks[0]["stage"], bug.checks[0]["layer"], bug.checks[0]["first_failing_step"]) == \
        ("forward", "head", 1), bug


@pytest.mark.parametrize("dtypes", [(), ("float16",), ("float32", "bfloat16")])
def test_dtypes_other_than_float32_and_float64_are_refused(dtypes):
    from jaxtrain.errors import ConfigError

    (ids, _), y = lm_data()
    with pytest.raises(ConfigError, match=r"dtypes=.*give \"float32\", \"float64\" or both"):
        check_port(TorchFloat32Head(), NnxFloat32Head(), train=(ids, y[:, 0]), dtypes=dtypes, **CHECK)


def test_a_port_returning_channels_last_images_is_read_in_torchs_layout_by_every_part():
    """An autoencoder port returning NHWC (torch: NCHW): its loss sees targets in its own layout, and the float64
    and float32 parts read its prediction through one path, in torch's layout (no "off by inf")."""
    report = check_port(**HEALTHY["autoencoder_output_channels_last"]())
    assert report.passed, report
    assert report.verdict["same_precision"]["step1_tensors"] > 0
    assert report.verdict["same_precision"]["step1_worst"]["excess"] < 1, report
