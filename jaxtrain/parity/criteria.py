"""The three parts of the parity verdict, as pure functions of the runs and their replays.

- Same math (float64): JAX and torch compute the same thing, so in float64 only
  float64 rounding may separate them: every step's loss and every epoch's test
  loss within 1e-10 relative, test accuracy equal, every buffer (BatchNorm
  running mean/var) after every epoch within 1e-10 relative. A difference beyond
  that is replayed step by step; it fails when a stage (forward, loss, grads,
  updates, buffers) or the evaluation differs beyond 1e-10 of its magnitude.
  When none does, an unstable run amplified float64 rounding: reported, not failed.
- Same precision (float32): each framework's float32 run is judged against
  float64 (which both agree on), never against the other float32 run: two
  float32 runs that drift apart independently are both healthy. At step 1, from
  identical weights, every stage tensor (forward, loss, each gradient, each
  update, each buffer) must have a JAX rounding error within STAGE_FACTOR x
  torch's + STAGE_FLOOR ulps. The error of a tensor is the median over its
  elements of |x32 - x64| / |x64|, so an element that is pure rounding noise
  (a gradient at rounding level that Adam or RMSprop turns into a full step)
  does not decide it; a precision defect (float32 bias correction, a
  bfloat16/TF32 matmul) moves every element and does. Later steps are not
  judged stage by stage: once one float32 run has flipped a ReLU or the sign of
  a noise-level gradient (a discrete event, in either framework, at a random
  step) its errors grow chaotically. The drift onset (the step where JAX's
  float32 loss first strays RUN_DRIFT_LEVEL from float64) and both runs' RMS
  loss errors are reported as information.
- Same results (float32): JAX's float32 test results (loss and accuracy, every
  epoch) are as close to float64's as float32 rounding puts them on this run:
  within RESULT_FACTOR x the larger of torch's own error and the training drift
  (see `same_results`).

The constants were chosen on the verdict corpus (parity_tests/corpus.py; README,
"Verdict corpus"): over its 32 healthy runs JAX's step-1 stage error was at most
1.75x torch's (STAGE_FACTOR 4 leaves 2.3x), the optax.adam float32 defect 22x;
the results statistic needed at most 3.1x the spread (RESULT_FACTOR 10).
"""

from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7, one float32 ulp at 1.0
FLOAT64_REL_TOL = 1e-10
STAGE_FACTOR, STAGE_FLOOR = 4.0, 8.0
RESULT_FACTOR, RESULT_LOSS_FLOOR = 10.0, 16.0
RUN_DRIFT_LEVEL = 1e-6
ZERO_IN_EXACT_MATH = 1e-6  # a tensor this small against its stage is rounding noise of a zero
LOCAL_FACTOR = 1e3  # a float64 stage must differ this much more than the step's starting parameters


# --------------------------------------------------------------------------- tensor comparisons


def rel_max_diff(a, b) -> float:
    """max |a - b| over max |b|: a difference relative to the magnitude of what is compared."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def rounding_error(x32, x64) -> float:
    """Median over elements of |x32 - x64| / |x64| (elements with x64 == 0 left out)."""
    x32, x64 = np.asarray(x32, np.float64).ravel(), np.asarray(x64, np.float64).ravel()
    nonzero = x64 != 0
    if not nonzero.any():
        return float(np.max(np.abs(x32))) if x32.size else 0.0
    return float(np.median(np.abs(x32[nonzero] - x64[nonzero]) / np.abs(x64[nonzero])))


def stage_tensors(stages: dict):
    """(stage, layer, tensor, value) in the order a step computes them, torch's names: each
    layer's output (in call order), the model output, loss, gradients, updates, buffers."""
    for layer, value in stages.get("layers", {}).items():
        yield "forward", layer, f"{layer} (output)", value
    yield "forward", None, "output", stages["forward"]
    yield "loss", None, "loss", stages["loss"]
    for stage in ("grads", "updates", "buffers"):
        for name, value in stages[stage].items():
            yield stage, name.rsplit(".", 1)[0], name, value


def _stage_scales(stages: dict) -> dict:
    """The magnitude of each stage: the largest |value| over all its tensors."""
    scales: dict = {}
    for stage, _, _, value in stage_tensors(stages):
        scales[stage] = max(scales.get(stage, 0.0), float(np.max(np.abs(value))) if np.size(value) else 0.0)
    return scales


def _robust_max(diff: np.ndarray) -> float:
    """The largest difference, ignoring the top 1% of elements of a tensor of 100 or more: one
    element whose value is pure rounding (a ReLU input at 0, an RMSprop/Adam step on a
    gradient at rounding level) may flip in one framework; a wrong formula moves them all."""
    diff = np.asarray(diff, np.float64).ravel()
    if diff.size == 0:
        return 0.0
    return float(np.quantile(diff, 0.99) if diff.size >= 100 else diff.max())


def params_difference(jax_params: dict, torch_params: dict) -> float:
    """How far apart two sets of parameters are, relative to the largest parameter."""
    scale = max(float(np.max(np.abs(v))) for v in torch_params.values())
    return max(_robust_max(np.abs(np.asarray(jax_params[k]) - v)) for k, v in torch_params.items()) / scale


def first_math_difference(step: int, jax_stages: dict, torch_stages: dict, params_in: float = 0.0) -> dict | None:
    """The first stage tensor of a float64 step that differs beyond 1e-10 of its stage's magnitude,
    and by more than LOCAL_FACTOR x the difference of the parameters the step started from
    (`params_in`): a stage that differs only as much as its inputs do inherited it (drift).

    (Relative to the stage, not the tensor: the gradient of a bias right before a
    BatchNorm is zero in exact arithmetic, so its computed value is pure rounding.)"""
    jax_tensors = {(s, t): v for s, _, t, v in stage_tensors(jax_stages)}
    scales = _stage_scales(torch_stages)
    tolerance = max(FLOAT64_REL_TOL, LOCAL_FACTOR * params_in)
    for stage, layer, tensor, ref in stage_tensors(torch_stages):
        if (stage, tensor) not in jax_tensors:
            continue  # a layer whose output the port does not produce on its own
        ref, value = np.asarray(ref, np.float64), np.asarray(jax_tensors[(stage, tensor)], np.float64)
        if value.shape != ref.shape:
            rel = float("inf")
        elif ref.size and max(np.max(np.abs(ref)), np.max(np.abs(value))) < ZERO_IN_EXACT_MATH * scales[stage]:
            continue  # both rounding noise of a zero (e.g. Adam's step on a bias right before a BatchNorm)
        else:
            diff = _robust_max(np.abs(value - ref))
            rel = diff / scales[stage] if scales[stage] > 0 else (0.0 if diff == 0 else float("inf"))
        if rel > tolerance:
            return {"step": step, "stage": stage, "layer": layer, "tensor": tensor, "rel_diff": rel,
                    "tolerance": tolerance}
    return None


def precision_findings(step: int, jax32: dict, torch32: dict, ref64: dict) -> list[dict]:
    """Every stage tensor of one float32 step: JAX's and torch's rounding error against float64.
    Tensors that are zero in exact arithmetic (see ZERO_IN_EXACT_MATH) are left out."""
    t32 = {(s, t): v for s, _, t, v in stage_tensors(torch32)}
    j32 = {(s, t): v for s, _, t, v in stage_tensors(jax32)}
    scales = _stage_scales(ref64)
    out = []
    for stage, layer, tensor, ref in stage_tensors(ref64):
        if (stage, tensor) not in j32 or (
                np.size(ref) and float(np.max(np.abs(ref))) < ZERO_IN_EXACT_MATH * scales[stage]):
            continue
        value = j32[(stage, tensor)]
        if np.shape(value) != np.shape(ref):
            err_jax = float("inf")
        else:
            err_jax = rounding_error(value, ref)
        err_torch = rounding_error(t32[(stage, tensor)], ref)
        allowed = STAGE_FACTOR * err_torch + STAGE_FLOOR * EPS32
        out.append({"step": step, "stage": stage, "layer": layer, "tensor": tensor, "jax_error": err_jax,
                    "torch_error": err_torch, "allowed": allowed, "passed": err_jax <= allowed})
    return out


def first_eval_difference(jax_eval: dict, torch_eval: dict) -> dict | None:
    """model.eval() on one test batch from the same weights: the first layer output (torch's
    call order), or the model output, differing beyond 1e-10 of its own magnitude (float64)."""
    named = [(layer, f"{layer} (output)", value) for layer, value in torch_eval["layers"].items()]
    for layer, tensor, ref in named + [(None, "output", torch_eval["forward"])]:
        value = jax_eval["forward"] if layer is None else jax_eval["layers"].get(layer)
        if value is None:
            continue
        rel = rel_max_diff(value, ref)
        if rel > FLOAT64_REL_TOL:
            return {"stage": "eval", "layer": layer, "tensor": tensor, "rel_diff": rel}
    return None


# --------------------------------------------------------------------------- the three parts


def math_differences(jax64, torch64) -> dict:
    """float64 runs: where step losses, test losses, accuracies or buffers differ beyond 1e-10."""
    lj, lt = jax64.losses, torch64.losses
    step_rel = np.abs(lj - lt) / np.maximum(np.abs(lt), np.finfo(np.float64).tiny)
    bad_steps = np.flatnonzero(step_rel > FLOAT64_REL_TOL)
    test_rel = abs_diff(jax64.test_losses, torch64.test_losses) / np.where(
        np.isnan(torch64.test_losses), 1.0, np.abs(torch64.test_losses))
    acc_equal = abs_diff(jax64.accuracies, torch64.accuracies) == 0
    buffer_rel = [max((rel_max_diff(bj[k], bt[k]) for k in bt), default=0.0)
                  for bj, bt in zip(jax64.buffers, torch64.buffers)]
    bad_epochs = [e for e in range(len(test_rel))
                  if test_rel[e] > FLOAT64_REL_TOL or not acc_equal[e] or buffer_rel[e] > FLOAT64_REL_TOL]
    return {
        "within_tolerance": bool(not bad_steps.size and not bad_epochs),
        "steps": int(len(lj)), "epochs": int(len(test_rel)),
        "max_rel_step_loss_diff": float(step_rel.max(initial=0.0)),
        "max_rel_test_loss_diff": float(test_rel.max(initial=0.0)),
        "accuracy_equal": bool(acc_equal.all()),
        "max_rel_buffer_diff": float(max(buffer_rel, default=0.0)),
        "has_buffers": bool(jax64.buffers and jax64.buffers[0]),
        "first_failing_step": int(bad_steps[0]) + 1 if bad_steps.size else None,
        "first_failing_epoch": bad_epochs[0] + 1 if bad_epochs else None,
        "tolerance": FLOAT64_REL_TOL,
    }


def same_math(result: dict, localised: dict | None) -> dict:
    """The float64 verdict. A difference beyond 1e-10 fails when the replay names a stage (or the
    evaluation) that differs; when no stage of any step differs beyond float64 rounding, the
    difference is rounding amplified by an unstable run, which is reported, not failed."""
    result = dict(result)
    amplified = localised is not None and localised.get("stage") == "drift"
    result["passed"] = result["within_tolerance"] or amplified
    result["localised"] = localised if not result["within_tolerance"] else None
    numbers = (f"step losses within {result['max_rel_step_loss_diff']:.1e} relative over {result['steps']} steps, "
               f"test losses within {result['max_rel_test_loss_diff']:.1e}, "
               f"test accuracy {'equal' if result['accuracy_equal'] else 'DIFFERENT'} in all {result['epochs']} epochs")
    if result["has_buffers"]:
        numbers += f", buffers within {result['max_rel_buffer_diff']:.1e}"
    if amplified:
        numbers += (f"; beyond 1e-10 from step {localised['step']}, but no stage of any step differs beyond float64 "
                    "rounding: an unstable run amplified it")
    verdict = "holds" if result["passed"] else "FAILED"
    result["sentence"] = f"Same math (float64, tolerance 1e-10 relative): {verdict}: {numbers}."
    return result


def loss_errors(run32, ref64) -> np.ndarray:
    """Per step: |loss32 - loss64| / |loss64|."""
    return np.abs(run32.losses - ref64.losses) / np.maximum(np.abs(ref64.losses), np.finfo(np.float64).tiny)


def abs_diff(a, b) -> np.ndarray:
    """|a - b|, where NaN on both sides (no test set; no accuracy for regression targets) is no
    difference and NaN on one side is an infinite one."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both = np.isnan(a) & np.isnan(b)
    diff = np.where(both, 0.0, np.abs(np.where(both, 0.0, a) - np.where(both, 0.0, b)))
    return np.where(np.isnan(diff), np.inf, diff)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0


def jax_onset(jax32, ref64) -> int | None:
    """The first step where JAX's float32 loss strays RUN_DRIFT_LEVEL from float64."""
    strayed = np.flatnonzero(loss_errors(jax32, ref64) > RUN_DRIFT_LEVEL)
    return int(strayed[0]) + 1 if strayed.size else None


def same_precision(jax32, torch32, ref64, findings: list[dict]) -> dict:
    """float32 judged against float64: at step 1, from identical weights, every stage tensor's
    JAX rounding error within STAGE_FACTOR x torch's + STAGE_FLOOR ulps. Drift is information."""
    ej, et = loss_errors(jax32, ref64), loss_errors(torch32, ref64)
    onset = jax_onset(jax32, ref64)
    strayed_torch = np.flatnonzero(et > RUN_DRIFT_LEVEL)
    bad = [f for f in findings if not f["passed"]]
    result = {
        "passed": not bad,
        "first_failure": bad[0] if bad else None,
        "step1_worst": max(findings, key=lambda f: f["jax_error"] / f["allowed"]) if findings else None,
        "step1_tensors": len(findings),
        "first_failing_step": bad[0]["step"] if bad else None,
        "drift_onset_step": onset,
        "torch_drift_onset_step": int(strayed_torch[0]) + 1 if strayed_torch.size else None,
        "rms_rel_loss_error_jax": _rms(ej), "rms_rel_loss_error_torch": _rms(et),
        "final_rel_loss_error_jax": float(ej[-1]) if len(ej) else 0.0,
        "final_rel_loss_error_torch": float(et[-1]) if len(et) else 0.0,
        "constants": {"stage_factor": STAGE_FACTOR, "stage_floor_ulps": STAGE_FLOOR, "drift_level": RUN_DRIFT_LEVEL},
    }
    if bad:
        f = bad[0]
        stages_text = (f"at step 1 {f['stage']} {f['tensor']} has JAX float32 error {f['jax_error']:.1e}, "
                       f"torch's {f['torch_error']:.1e} (allowed {f['allowed']:.1e})")
    else:
        worst = result["step1_worst"]
        stages_text = (f"at step 1 all {len(findings)} stage tensors are within {STAGE_FACTOR:g}x torch's float32 "
                       f"error + {STAGE_FLOOR:g} ulps" + (f" (closest: {worst['tensor']}, {worst['jax_error']:.1e} vs "
                                                          f"{worst['torch_error']:.1e})" if worst else ""))
    onset_text = (f"drift onset at step {onset} (JAX's loss strays {RUN_DRIFT_LEVEL:.0e} from float64; torch's "
                  + (f"at step {result['torch_drift_onset_step']}" if strayed_torch.size else "does not")
                  + ")" if onset else f"no drift onset (JAX's loss stays within {RUN_DRIFT_LEVEL:.0e} of float64)")
    verdict = "holds" if result["passed"] else "FAILED"
    result["sentence"] = (f"Same precision (float32 against float64): {verdict}: {stages_text}; {onset_text}; "
                          f"RMS relative loss error over {len(ej)} steps: JAX {_rms(ej):.1e}, torch {_rms(et):.1e}.")
    return result


def same_results(jax32, torch32, ref64, num_test: int) -> dict:
    """Both float32 runs' test results are as close to float64's as rounding puts them on this run.

    Over the epochs, the RMS of JAX's float32-vs-float64 test-loss error (relative) must be
    within RESULT_FACTOR x the spread (+ RESULT_LOSS_FLOOR ulps), and the RMS of its accuracy
    error within RESULT_FACTOR x the spread + 2 test samples. The spread is the larger of
    torch's own float32-vs-float64 error in that result and the training-loss drift of either
    float32 run by the end of each epoch (a chaotic run spreads test results that way)."""
    loss64, acc64 = ref64.test_losses, ref64.accuracies
    ends = np.asarray(ref64.epoch_ends) - 1
    drift = np.maximum.accumulate(np.maximum(loss_errors(torch32, ref64), loss_errors(jax32, ref64)))[ends]
    scale64 = np.where(np.isnan(loss64), 1.0, np.abs(loss64))
    err_loss_jax, err_loss_torch = (abs_diff(r.test_losses, loss64) / scale64 for r in (jax32, torch32))
    err_acc_jax, err_acc_torch = (abs_diff(r.accuracies, acc64) for r in (jax32, torch32))
    spread_loss = max(_rms(err_loss_torch), _rms(drift))
    spread_acc = max(_rms(err_acc_torch), _rms(drift))
    loss_allowed = RESULT_FACTOR * spread_loss + RESULT_LOSS_FLOOR * EPS32
    acc_allowed = RESULT_FACTOR * spread_acc + 2.0 / max(num_test, 1)
    loss_ok, acc_ok = _rms(err_loss_jax) <= loss_allowed, _rms(err_acc_jax) <= acc_allowed
    per_epoch_bad = np.flatnonzero((err_loss_jax > loss_allowed) | (err_acc_jax > acc_allowed))
    result = {
        "passed": bool(loss_ok and acc_ok),
        "rms_rel_test_loss_error_jax": _rms(err_loss_jax), "rms_rel_test_loss_error_torch": _rms(err_loss_torch),
        "rms_accuracy_error_jax": _rms(err_acc_jax), "rms_accuracy_error_torch": _rms(err_acc_torch),
        "rms_training_drift": _rms(drift),
        "test_loss_allowed": loss_allowed, "accuracy_allowed": acc_allowed,
        "max_test_loss_diff": float(abs_diff(jax32.test_losses, torch32.test_losses).max(initial=0.0)),
        "max_accuracy_diff": float(abs_diff(jax32.accuracies, torch32.accuracies).max(initial=0.0)),
        "needed_factor_loss": max(_rms(err_loss_jax) - RESULT_LOSS_FLOOR * EPS32, 0.0) / max(spread_loss, 1e-300),
        "needed_factor_accuracy": max(_rms(err_acc_jax) - 2.0 / max(num_test, 1), 0.0) / max(spread_acc, 1e-300),
        "first_failing_epoch": (int(per_epoch_bad[0]) + 1 if per_epoch_bad.size else len(loss64))
        if not (loss_ok and acc_ok) else None,
    }
    verdict = "hold" if result["passed"] else "FAILED"
    result["sentence"] = (
        f"Same results (float32): {verdict}: over {len(loss64)} epochs JAX's test loss is within {_rms(err_loss_jax):.1e} "
        f"(RMS, relative) of float64's, torch's within {_rms(err_loss_torch):.1e} (allowed {loss_allowed:.1e}); "
        f"test accuracy within {100 * _rms(err_acc_jax):.2f} points, torch's {100 * _rms(err_acc_torch):.2f} "
        f"(allowed {100 * acc_allowed:.2f}); test results of the two differ by at most "
        f"{result['max_test_loss_diff']:.1e} in loss, {100 * result['max_accuracy_diff']:.2f} points in accuracy.")
    return result
