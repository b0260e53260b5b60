"""The verdict's rules on made-up runs and stages (no training): what rounding may do passes, a
difference beyond it fails where it starts, whatever share of a tensor it touches."""

import numpy as np

from jaxtrain.parity import criteria
from jaxtrain.parity.diagnose import _precision
from jaxtrain.parity.runners import Trajectory


def run(losses, test_losses, accuracies, buffers=None):
    record = {"steps": [{"loss": float(v)} for v in losses],
              "epochs": [{"test_loss": float(t), "test_accuracy": float(a)} for t, a in zip(test_losses, accuracies)]}
    ends = list(np.linspace(0, len(losses), len(test_losses) + 1).astype(int)[1:])
    return Trajectory(record, buffers or [{} for _ in test_losses], ends)


def stages(layer, loss=1.0, grads=None, updates=None):
    return {"layers": {"fc": np.asarray(layer, np.float64)}, "forward": np.asarray(layer, np.float64),
            "loss": np.float64(loss), "grads": grads or {}, "updates": updates or {}, "buffers": {}}


LOSSES = np.linspace(2.3, 1.0, 40)


def test_float64_differences_within_torchs_own_rounding_spread_pass_and_beyond_fail():
    torch = run(LOSSES, [1.5, 1.2], [0.5, 0.6])
    spread = LOSSES * np.geomspace(1e-15, 1e-6, 40)  # a chaotic run: rounding grows to 1e-6
    rounding = run(LOSSES + spread, [1.5 + 1e-9, 1.2 + 1e-7], [0.5, 0.6])
    healthy = run(LOSSES - 30 * spread, [1.5 - 2e-8, 1.2 + 3e-6], [0.5, 0.6])
    assert criteria.math_differences(healthy, torch, rounding)["within_tolerance"]
    bug = LOSSES.copy()
    bug[3] += 1e-9 * LOSSES[3]  # 1e-9 where rounding had moved the loss by ~1e-14
    result = criteria.math_differences(run(bug, [1.5, 1.2], [0.5, 0.6]), torch, rounding)
    assert not result["within_tolerance"] and result["first_failing_step"] == 4


def test_a_stable_run_is_held_to_1e10():
    torch = run(LOSSES, [1.5], [0.5])
    assert criteria.math_differences(run(LOSSES * (1 + 5e-11), [1.5], [0.5]), torch, torch)["within_tolerance"]
    assert not criteria.math_differences(run(LOSSES * (1 + 5e-10), [1.5], [0.5]), torch, torch)["within_tolerance"]


def test_one_row_of_a_large_tensor_is_caught_with_its_index():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(10_000, 8))
    rounding = ref * (1 + 1e-15 * rng.normal(size=ref.shape))
    value = ref * (1 + 1e-15 * rng.normal(size=ref.shape))
    assert criteria.beyond_rounding(value, ref, rounding, 1e-10 * np.abs(ref).max())[0] <= 1
    value[0] += 1e-6  # one row of 10,000 (a padding row that should not move)
    ratio, element = criteria.beyond_rounding(value, ref, rounding, 1e-10 * np.abs(ref).max())
    assert ratio > 1 and element[0] == 0


def test_stage_replay_names_the_first_tensor_beyond_rounding():
    ref = np.linspace(-1, 1, 64).reshape(8, 8)
    torch, rounding = stages(ref), stages(ref * (1 + 1e-16))
    shifted = ref.copy()
    shifted[7, 7] += 1e-8
    found = criteria.first_math_difference(3, stages(shifted), torch, rounding, {})
    assert (found["step"], found["stage"], found["layer"], found["element"]) == (3, "forward", "fc", [7, 7])
    assert criteria.first_math_difference(3, stages(ref * (1 + 1e-15)), torch, rounding, {}) is None


def test_float32_exact_zeros_count_and_a_localised_error_is_not_called_precision():
    rng = np.random.default_rng(1)
    grad64 = rng.normal(size=(1000, 4))
    grad64[0] = 0.0  # the padding row: zero in float64 and in torch's float32
    torch32 = grad64.astype(np.float32).astype(np.float64)
    jax32 = torch32.copy()
    assert all(f["passed"] for f in criteria.precision_findings(1, stages(jax32, grads={"e.weight": jax32}),
                                                               stages(torch32, grads={"e.weight": torch32}),
                                                               stages(grad64, grads={"e.weight": grad64})))
    jax32[0] = 0.3  # the port trains it
    findings = criteria.precision_findings(1, stages(torch32, grads={"e.weight": jax32}),
                                           stages(torch32, grads={"e.weight": torch32}),
                                           stages(grad64, grads={"e.weight": grad64}))
    bad = [f for f in findings if not f["passed"]]
    assert [(f["stage"], f["tensor"], f["element"][0]) for f in bad] == [("grads", "e.weight", 0)]
    assert _precision(bad[0])["trap"] == "localized difference"


def test_float32_precision_pattern_is_diagnosed_as_such():
    rng = np.random.default_rng(2)
    out64 = rng.normal(size=(64, 32))
    torch32 = out64.astype(np.float32).astype(np.float64)
    low = out64 * (1 + 2e-3 * rng.choice([-1, 1], size=out64.shape))  # bfloat16-like: every element
    finding = next(f for f in criteria.precision_findings(1, stages(low), stages(torch32), stages(out64))
                   if not f["passed"])
    assert finding["pattern_excess"] > 1 and _precision(finding)["trap"] == "matmul precision below float32"


def test_update_elements_on_unresolved_gradients_are_not_judged():
    """Adagrad's first step is lr * sign(g): where float32 cannot resolve g, either sign is rounding."""
    grad64 = np.array([1.0, -2.0, 1e-12, 3.0])
    grad32 = np.array([1.0, -2.0, -3e-8, 3.0])  # torch's float32 gets the tiny one wrong by more than itself
    update64, torch_update = -0.01 * np.sign(grad64), -0.01 * np.sign(grad32)
    jax_update = torch_update.copy()
    jax_update[2] *= -1  # JAX's float32 rounding landed on the other sign
    findings = criteria.precision_findings(
        1, stages([1.0], grads={"b": grad32}, updates={"b": jax_update}),
        stages([1.0], grads={"b": grad32}, updates={"b": torch_update}),
        stages([1.0], grads={"b": grad64}, updates={"b": update64}))
    assert all(f["passed"] for f in findings)
    jax_update[0] *= -1  # a resolved gradient stepped the wrong way is a difference
    findings = criteria.precision_findings(
        1, stages([1.0], grads={"b": grad32}, updates={"b": jax_update}),
        stages([1.0], grads={"b": grad32}, updates={"b": torch_update}),
        stages([1.0], grads={"b": grad64}, updates={"b": update64}))
    assert [f["element"] for f in findings if not f["passed"]] == [[0]]


def test_the_update_of_a_gradient_zero_in_exact_math_is_not_judged():
    """A key projection's bias before a softmax has no gradient in exact math; Adam scales each run's rounding
    noise of it to a step of its own (OPT's k_proj.bias on AMD Zen 4). Its update is no evidence; a gradient that
    is not zero keeps its update judged."""
    def findings(grad64, weight_grad=1.0):
        grads = {"w": np.array([weight_grad, -weight_grad]), "k.bias": grad64}
        update64 = -1e-3 * np.array([1.0, 0.3, -0.8])
        torch_update, jax_update = update64 * (1 + 0.02), update64 * (1 - 0.25)  # JAX's noise 12x torch's
        return criteria.precision_findings(
            1, stages([1.0], grads=grads, updates={"k.bias": jax_update}),
            stages([1.0], grads=grads, updates={"k.bias": torch_update}),
            stages([1.0], grads=grads, updates={"k.bias": update64}))

    assert all(f["passed"] for f in findings(np.array([3e-13, -1e-13, 2e-13])))
    assert [f["tensor"] for f in findings(np.array([3e-2, -1e-2, 2e-2])) if not f["passed"]] == ["k.bias"]


def test_the_judged_float32_run_cannot_widen_its_own_allowance():
    ref64 = run(LOSSES, [1.5, 1.2], [0.5, 0.6])
    torch32 = run(LOSSES * (1 + 1e-7), [1.5 * (1 + 1e-7), 1.2 * (1 + 1e-7)], [0.5, 0.6])
    # a port whose training loss drifts 2% from float64 and whose test loss is 1.9e-2 off
    jax32 = run(LOSSES * 1.02, [1.5 * 1.019, 1.2 * 1.019], [0.5, 0.6])
    assert not criteria.same_results(jax32, torch32, ref64, 1000, rounding64=ref64)["passed"]
    healthy = run(LOSSES * (1 - 2e-7), [1.5 * (1 - 3e-7), 1.2 * (1 + 2e-7)], [0.5, 0.6])
    assert criteria.same_results(healthy, torch32, ref64, 1000, rounding64=ref64)["passed"]


def test_a_chaotic_float64_run_widens_the_float32_allowance_by_the_ulp_ratio():
    ref64 = run(LOSSES, [1.5, 1.2], [0.5, 0.6])
    torch32 = run(LOSSES * (1 + 1e-7), [1.5 * (1 + 1e-7), 1.2 * (1 + 1e-7)], [0.5, 0.6])
    jax32 = run(LOSSES * (1 + 1e-4), [1.5 * (1 + 1e-4), 1.2 * (1 - 1e-4)], [0.5, 0.6])
    calm = run(LOSSES * (1 + 1e-16), [1.5, 1.2], [0.5, 0.6])
    chaotic = run(LOSSES * (1 + 1e-13), [1.5 * (1 + 1e-13), 1.2], [0.5, 0.6])  # x 2^29 = 5e-5 in float32
    assert not criteria.same_results(jax32, torch32, ref64, 1000, rounding64=calm)["passed"]
    assert criteria.same_results(jax32, torch32, ref64, 1000, rounding64=chaotic)["passed"]


def _step1(jax_grad_error, forward_error=0.0, outlier=False, seed=3):
    """Step-1 findings of a conv-like weight gradient: torch's float32 at float32's rounding, JAX's with every
    element `jax_grad_error` relative off float64 (a summation order's pattern), its forward `forward_error` off."""
    rng = np.random.default_rng(seed)
    out64, grad64 = rng.normal(size=(64, 32)), rng.normal(size=(16, 25))
    signs = lambda shape: rng.choice([-1, 1], size=shape)  # noqa: E731
    torch_out, torch_grad = out64 * (1 + 6e-8 * signs(out64.shape)), grad64 * (1 + 6e-8 * signs(grad64.shape))
    jax_out = out64 * (1 + (forward_error or 6e-8) * signs(out64.shape))
    jax_grad = grad64 * (1 + jax_grad_error * signs(grad64.shape))
    if outlier:
        jax_grad[3, 4] += 0.5  # one element far off: no arithmetic does that to one element alone
    return criteria.precision_findings(1, stages(jax_out, grads={"conv1.weight": jax_grad}),
                                       stages(torch_out, grads={"conv1.weight": torch_grad}),
                                       stages(out64, grads={"conv1.weight": grad64}))


def test_a_gradient_pattern_no_reduced_format_explains_is_the_librarys_arithmetic_when_float64_holds():
    findings = _step1(1.5e-5)  # the Zen 3 case: JAX's conv weight gradient 1.5e-5, torch's ~5e-8
    assert not all(f["passed"] for f in findings)  # beyond what a port is allowed on its own
    held = criteria.same_precision(run(LOSSES, [1.5], [0.5]), run(LOSSES, [1.5], [0.5]), run(LOSSES, [1.5], [0.5]),
                                   findings, math_holds=True)
    assert held["passed"] and held["library_float32"]["tensor"] == "conv1.weight"
    assert "not the port" in held["sentence"] and "1.5e-05" in held["sentence"]
    unknown = criteria.same_precision(run(LOSSES, [1.5], [0.5]), run(LOSSES, [1.5], [0.5]),
                                      run(LOSSES, [1.5], [0.5]), findings, math_holds=False)
    assert not unknown["passed"] and unknown["library_float32"] is None  # float64 did not show torch's math


def test_what_a_port_or_a_reduced_format_does_is_never_the_librarys_arithmetic():
    assert criteria.library_float32(_step1(1.5e-5), True) is not None
    assert criteria.library_float32(_step1(2e-3), True) is None  # bfloat16/TF32-sized: a precision setting
    assert criteria.library_float32(_step1(1.5e-5, forward_error=1.5e-5), True) is None  # the port's formula
    assert criteria.library_float32(_step1(1.5e-5, outlier=True), True) is None  # some elements: a bug


def test_float32_results_straying_with_the_librarys_arithmetic_measured_is_a_finding_unless_not_finite():
    ref64 = run(LOSSES, [1.5, 1.2], [0.5, 0.6])
    torch32 = run(LOSSES * (1 + 1e-7), [1.5 * (1 + 1e-7), 1.2 * (1 + 1e-7)], [0.5, 0.6])
    strayed = run(LOSSES * 1.002, [1.5 * 1.003, 1.2 * 1.003], [0.5, 0.6])
    assert not criteria.same_results(strayed, torch32, ref64, 1000, rounding64=ref64)["passed"]
    found = criteria.same_results(strayed, torch32, ref64, 1000, rounding64=ref64, arithmetic_explained="library")
    assert found["passed"] and "amplified by training" in found["float32_arithmetic"]
    diverged = run(LOSSES * 1.002, [1.5 * 1.003, np.inf], [0.5, 0.6])
    assert not criteria.same_results(diverged, torch32, ref64, 1000, rounding64=ref64,
                                     arithmetic_explained="library")["passed"]
    misclassified = run(LOSSES * 1.002, [1.5 * 1.003, 1.2 * 1.003], [0.5, 0.66])  # 60 of 1000 test samples
    assert not criteria.same_results(misclassified, torch32, ref64, 1000, rounding64=ref64,
                                     arithmetic_explained="library")["passed"]


def test_float32_results_straying_after_a_step_1_as_precise_as_torchs_is_a_finding_only_below_reduced_formats():
    """XLA's float32 sums on one CPU kind (AMD Zen 3), accumulated over the steps of a port whose step 1 is as
    precise as torch's: a finding while the excess stays below a reduced-precision product's error."""
    ref64 = run(LOSSES, [1.5, 1.2], [0.5, 0.6])
    torch32 = run(LOSSES * (1 + 1e-8), [1.5 * (1 + 1e-8), 1.2 * (1 + 1e-8)], [0.5, 0.6])
    summed = run(LOSSES * (1 + 8e-6), [1.5 * (1 + 8e-6), 1.2 * (1 + 8e-6)], [0.5, 0.6])
    assert not criteria.same_results(summed, torch32, ref64, 1000, rounding64=ref64)["passed"]
    found = criteria.same_results(summed, torch32, ref64, 1000, rounding64=ref64, arithmetic_explained="step1")
    assert found["passed"] and "as precise as torch's everywhere" in found["float32_arithmetic"]
    reduced = run(LOSSES * 1.002, [1.5 * 1.003, 1.2 * 1.003], [0.5, 0.6])  # bfloat16-sized: a precision setting
    assert not criteria.same_results(reduced, torch32, ref64, 1000, rounding64=ref64,
                                     arithmetic_explained="step1")["passed"]


def test_a_bfloat16_cast_inside_the_float64_run_leaves_float64_to_the_float32_parts_and_float32_one_does_not():
    """A port casting a Linear's input to bfloat16 is found with its format; bfloat16 rounding explains any stage
    difference (float64 undecided: the float32 parts decide and diagnose it), float32 rounding only ~1e-4."""
    from jaxtrain.flax_model import pure_model
    from jaxtrain.parity.check import _lowered
    from jaxtrain.parity.corpus.float32 import FEATURES, NnxSensorNet

    x = np.ones((2, FEATURES), np.float64)
    model = pure_model(NnxSensorNet(bf16_fc1=True), x).computing_in(np.float64)
    casts = model.lower_precision(x)
    assert casts == [(("model",), "bfloat16")], casts  # cast in the model's __call__, before fc1
    assert pure_model(NnxSensorNet(), x).computing_in(np.float64).lower_precision(x) == []

    failed = {"passed": False, "within_tolerance": False, "max_rel_step_loss_diff": 3e-3,
              "sentence": "Same math (float64): FAIL.",
              "localised": {"step": 1, "stage": "forward", "tensor": "fc1 (output)", "tensor_rel_diff": 3e-3}}
    bfloat16 = _lowered(failed, [("fc1", "bfloat16")])
    assert bfloat16["passed"] is None and bfloat16["localised"] is None and "fc1 computes in bfloat16" in bfloat16["sentence"]
    float32 = _lowered(failed, [("torch attn", "float32")])
    assert float32["passed"] is False and "beyond what float32 rounding gives" in float32["sentence"]
    assert criteria.cast_explains("float32") < 3e-3 < criteria.cast_explains("bfloat16")
