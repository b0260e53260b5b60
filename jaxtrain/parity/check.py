"""`check_parity`: run both frameworks on one plan, judge the runs, localise what failed."""

from __future__ import annotations

from jaxtrain import data as data_lib
from jaxtrain.parity import criteria
from jaxtrain.parity.localise import JAX32, JAX64, TORCH32, TORCH64, localise_math, step1_precision
from jaxtrain.parity.report import ParityReport
from jaxtrain.parity.runners import JaxPort, run_trajectories


def _loss_numbers(jax_run, torch_run) -> dict:
    diff = abs(jax_run.losses - torch_run.losses)
    return {"steps": int(len(diff)), "max_abs_loss_diff": float(diff.max(initial=0.0)),
            "max_rel_loss_diff": float((diff / abs(torch_run.losses)).max(initial=0.0))}


def check_parity(config, dtypes=("float32", "float64"), train=None, test=None, max_steps=None,
                 port: JaxPort | None = None) -> ParityReport:
    """Both frameworks from the same weights on the same batches; the three-part verdict."""
    from jaxtrain import devices

    devices.parity_mode()
    data_lib.check_training_batches(config, len(train))
    runs = run_trajectories(config, tuple(dtypes), train, test, max_steps, port)
    verdict: dict = {part: None for part in ("same_math", "same_precision", "same_results")}
    checks = []
    if "float64" in dtypes:
        differences = criteria.math_differences(runs[JAX64], runs[TORCH64])
        localised = (None if differences["within_tolerance"]
                     else localise_math(config, train, test, port, differences, max_steps))
        verdict["same_math"] = math = criteria.same_math(differences, localised)
        checks.append(_check("float64", math["passed"], runs[JAX64], runs[TORCH64], math["localised"] if not
                             math["passed"] else None, math["first_failing_step"], math["first_failing_epoch"]))
    if "float32" in dtypes:
        precision = criteria.same_precision(runs[JAX32], runs[TORCH32], runs[TORCH64],
                                            step1_precision(config, train, test, port))
        results = criteria.same_results(runs[JAX32], runs[TORCH32], runs[TORCH64], len(test))
        if not precision["passed"]:
            precision["localised"] = precision["first_failure"]
        if not results["passed"]:
            results["localised"] = {"step": None, "epoch": results["first_failing_epoch"], "stage": "eval",
                                    "layer": None, "tensor": None,
                                    "note": "the float32 test results differ more than rounding spreads them"}
        verdict["same_precision"], verdict["same_results"] = precision, results
        localised = precision.get("localised") or results.get("localised")
        checks.insert(0, _check("float32", precision["passed"] and results["passed"], runs[JAX32], runs[TORCH32],
                                localised, precision["first_failing_step"],
                                None if localised is None else results["first_failing_epoch"]))
    return ParityReport(passed=all(c["passed"] for c in checks), config=config.to_json(), checks=checks,
                        verdict=verdict, trajectories=runs)


def _check(dtype, passed, jax_run, torch_run, localised, first_step, first_epoch) -> dict:
    """One entry of the report's `checks`: a dtype, its verdict, where it failed (torch's names)."""
    check = {"dtype": dtype, "passed": bool(passed), **_loss_numbers(jax_run, torch_run),
             "first_failing_step": None if passed else first_step,
             "first_failing_epoch": None if passed else first_epoch,
             "stage": None, "layer": None, "tensor": None}
    if localised is not None:
        check.update({k: localised.get(k) for k in ("stage", "layer", "tensor")}, localised=localised)
        if localised.get("step") and check["first_failing_step"] is None:
            check["first_failing_step"] = localised["step"]
    return check


def run_and_print(config, dtypes, data_dir=None, train_limit=None) -> int:
    """Load the data, check parity, print the report; the exit code (0 pass, 1 fail). For the examples."""
    train, test = data_lib.load_fashion_mnist(data_dir)
    report = check_parity(config, tuple(dtypes), train.take(train_limit), test)
    print(report)
    return 0 if report.passed else 1
