"""Where a parity check first goes wrong: replay the steps, compare every stage.

A stage is named only when it differs beyond what rounding explains at that step:
in float64 beyond ENVELOPE_FACTOR x what the same step moved in torch' (torch's own
rounding-spread run) + 1e-10 of the stage's magnitude; in float32 at step 1, element
by element against torch's float32 error (see criteria). Otherwise the report says
rounding accumulated (stage `drift`), and from which step.
"""

from __future__ import annotations

from jaxtrain.parity import criteria
from jaxtrain.parity.runners import align_layers, ROUNDING, epoch_lengths, replay

JAX64, TORCH64, ROUNDING64 = ("jax", "float64"), ("torch", "float64"), (ROUNDING, "float64")
ROUNDING32 = (ROUNDING, "float32")
JAX32, TORCH32 = ("jax", "float32"), ("torch", "float32")


def steps_through_epoch(config, num_train: int, epoch: int, max_steps=None) -> int:
    """Steps up to the end of `epoch` (1-based)."""
    return sum(epoch_lengths(config, num_train, max_steps)[:epoch])


def localise_math(port, config, math: dict, max_steps=None, floor: float = 0.0) -> dict:
    """The first (step, stage, tensor) where float64 JAX and torch differ beyond torch's own rounding
    spread; `eval` when training agrees through the epoch whose evaluation differs beyond it;
    `drift` when no stage of any step and no evaluation does (rounding amplified by an unstable run).
    `floor`: part of either run computes in a lower float format (float32 inside the float64 run), so a
    difference within what its rounding explains (`criteria.cast_explains`, relative to the tensor) is not one."""
    inf = float("inf")
    loss_step = math["first_failing_step"] or inf
    epoch = math["first_failing_epoch"]
    epoch_end = steps_through_epoch(config, len(port.train), epoch, max_steps) if epoch else inf
    until = int(min(loss_step, epoch_end))
    carried: dict = {}  # per stage tensor: the largest rounding spread of the steps so far
    buffers_in = [{n: port.weights[n].astype("float64") for n in port.mapping.buffer_names()}]

    def visit(step, stages):
        found = criteria.first_math_difference(step, stages[JAX64], stages[TORCH64], stages[ROUNDING64], carried,
                                               floor)
        if found is not None:  # what the diagnosis reads (taken out before the report is written)
            found["evidence"] = {"jax": stages[JAX64], "torch": stages[TORCH64], "buffers_before": buffers_in[0]}
        buffers_in[0] = stages[TORCH64]["buffers"]
        return found

    eval_layers = lambda runners: criteria.first_eval_difference(  # noqa: E731
        *align_layers({key: runners[key].capture_eval(_first_test_batch(port, config))
                       for key in (JAX64, TORCH64, ROUNDING64)}).values(), carried, floor)
    found = replay(port, config, [JAX64, TORCH64, ROUNDING64], until, visit,
                   after=eval_layers if loss_step > epoch_end else None)
    moved = list(carried.get("moved", {}).values())  # layer outputs that differ but not downstream
    if found is not None and moved:
        found["moved_boundaries"] = moved
    if found is not None:
        if found.get("stage") != "eval":
            return found
        return {"step": None, "epoch": epoch, "stage": "eval", "layer": found["layer"], "tensor": found["tensor"],
                "moved_boundaries": moved,
                "note": f"training agrees (every stage of every step, buffers included) through epoch {epoch}; "
                        f"the evaluation (model.eval(), no gradients) differs beyond rounding, first at "
                        f"{found['tensor']}"}
    evaluation = f" nor epoch {epoch}'s evaluation" if loss_step > epoch_end else ""
    return {"step": int(until), "stage": "drift", "layer": None, "tensor": None, "moved_boundaries": moved,
            "note": f"no stage of steps 1-{until}{evaluation} differs beyond torch's own rounding spread: float64 "
                    "rounding accumulated"}


def _first_test_batch(port, config):
    import numpy as np

    return np.arange(min(config.batch_size, len(port.test or port.train)))


def step1_precision(port, config, evidence: dict | None = None, reference=TORCH64) -> list[dict]:
    """Step 1 of the float32 runs beside torch float64, from identical weights: every element of every
    stage tensor, JAX's rounding error against torch's. `evidence` (a dict) receives JAX float32's and
    the reference's stage tensors, for the diagnosis. With `reference=TORCH32` (no float64 run) torch's
    float32 step is the reference and torch' in float32 (every weight an ulp off) stands for torch's error."""
    other = TORCH32 if reference == TORCH64 else ROUNDING32

    def visit(step, stages):
        if evidence is not None:
            evidence.update(jax=stages[JAX32], torch=stages[reference], buffers_before={
                n: port.weights[n].astype("float64") for n in port.mapping.buffer_names()})
        return criteria.precision_findings(step, stages[JAX32], stages[other], stages[reference])

    return replay(port, config, [JAX32, other, reference], 1, visit)
