"""The parity report: its JSON, its printed table and verdict, its picture."""

from __future__ import annotations

import dataclasses

import numpy as np

PARTS = ("same_math", "same_precision", "same_results")


@dataclasses.dataclass
class ParityReport:
    """`passed` is all three parts of the verdict that were checked; `checks` one entry per dtype."""

    passed: bool
    config: dict
    checks: list
    verdict: dict  # part -> its result (criteria.same_*), or None when its dtype was not run
    trajectories: dict  # (framework, dtype) -> runners.Trajectory
    diagnosis: dict | None = None  # {"trap", "sentence"} for the first failure with a known signature
    layers: list = dataclasses.field(default_factory=list)  # the torch layers mapped, in call order
    mapping_notes: list = dataclasses.field(default_factory=list)  # what the mapping could not pair, or guessed
    findings: list = dataclasses.field(default_factory=list)  # what is not the port's and does not fail it

    def to_dict(self) -> dict:
        first = self.checks[0]["dtype"]
        return {"passed": self.passed, "config": self.config, "checks": self.checks, "verdict": self.verdict,
                "diagnosis": self.diagnosis, "layers": self.layers, "mapping_notes": self.mapping_notes,
                "findings": self.findings,
                "jax": self.trajectories[("jax", first)].record, "torch": self.trajectories[("torch", first)].record}

    def __str__(self) -> str:
        return format_report(self)

    def save_html(self, path):
        """One self-contained page: the verdict, the trajectories, step 1 layer by layer (`parity.html`)."""
        from jaxtrain.parity.html import save_html

        return save_html(self, path)


def _where(found: dict | None) -> str:
    if not found:
        return ""
    if found["stage"] == "drift":
        return f"  localised: {'step ' + str(found['step']) + ': ' if found.get('step') else ''}{found['note']}"
    if found["stage"] == "eval":
        return f"  localised: epoch {found.get('epoch')}, stage eval: {found.get('note', '')}"
    element = f"element {list(found['element'])}, " if found.get("element") else ""
    if "jax_error" in found:
        size = (f"{element}JAX float32 error {found.get('element_error', float('inf')):.2e}, torch's "
                f"{found.get('element_torch_error', 0.0):.2e}, allowed {found['allowed']:.2e}")
    else:
        size = (f"{element}relative difference {found['rel_diff']:.2e}, {found['beyond_rounding']:.3g}x what torch's "
                "own rounding spread allows")
    layer = f" (layer {found['layer']})" if found.get("layer") else ""
    return (f"  localised: first difference at step {found['step']}, stage {found['stage']}, {found['tensor']}{layer} "
            f"({size})")


def format_report(report: ParityReport) -> str:
    """Side-by-side per-epoch table for each dtype, the three-part verdict, the localisation."""
    lines = []
    for check in report.checks:
        dtype = check["dtype"]
        j, t = report.trajectories[("jax", dtype)].record, report.trajectories[("torch", dtype)].record
        lines.append(f"{dtype}: {check['steps']} steps")
        lines.append(f"{'epoch':>5} {'jax loss':>12} {'torch loss':>12} {'|Δ loss|':>9} "
                     f"{'jax acc':>8} {'torch acc':>9} {'|Δ acc|':>8}")
        for a, b in zip(j["epochs"], t["epochs"]):
            lines.append(f"{a['epoch']:>5} {a['test_loss']:>12.6f} {b['test_loss']:>12.6f} "
                         f"{abs(a['test_loss'] - b['test_loss']):>9.1e} {100 * a['test_accuracy']:>7.2f}% "
                         f"{100 * b['test_accuracy']:>8.2f}% {100 * abs(a['test_accuracy'] - b['test_accuracy']):>7.2f}")
        lines.append("")
    lines.append(format_verdict(report))
    return "\n".join(lines)


def format_verdict(report: ParityReport) -> str:
    """The three-part verdict, where the first failure is, the diagnosis and the mapping's notes: the report
    without its tables (what `jaxtrain.testing.assert_port` raises)."""
    lines = []
    for part in PARTS:
        result = report.verdict.get(part)
        if result is None:
            continue
        lines.append({True: "PASS ", False: "FAIL ", None: "N/A  "}[result["passed"]] + result["sentence"])
        if result["passed"] is False:
            lines.append(_where(result.get("localised")))
    if report.diagnosis:
        lines.append(f"DIAGNOSIS ({report.diagnosis['trap']}): {report.diagnosis['sentence']}")
    for finding in report.findings:
        lines.append(f"FINDING (not the port's): {finding}")
    lines.append("")
    for note in report.mapping_notes:
        lines.append(f"MAPPING: {note}")
    lines.append("PARITY " + ("PASSED" if report.passed else "FAILED"))
    return "\n".join(lines)


def plot(report: ParityReport, path, format: str | None = None) -> None:
    """Per-step loss of both frameworks; |float32 - float64| / |float64| of each on a log scale
    (the two envelopes); the first failing step and the drift onset marked. `path`: a file name or a binary
    file (then `format`, e.g. "svg")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxtrain.parity.criteria import EPS32, loss_errors

    runs = report.trajectories
    has32, has64 = ("jax", "float32") in runs, ("jax", "float64") in runs
    fig, axes = plt.subplots(2 if has32 else 1, 1, figsize=(9, 7 if has32 else 4), sharex=True, squeeze=False)
    top = axes[0, 0]
    styles = {("jax", "float32"): ("tab:blue", "-"), ("torch", "float32"): ("tab:orange", "--"),
              ("jax", "float64"): ("tab:green", "-"), ("torch", "float64"): ("black", ":")}
    for key, (color, style) in styles.items():
        if key in runs:
            losses = runs[key].losses
            top.plot(np.arange(1, len(losses) + 1), losses, style, color=color, lw=1, label=f"{key[0]} {key[1]}")
    top.set_ylabel("training loss")
    top.set_title(f"parity: {'PASSED' if report.passed else 'FAILED'}")
    failing = [c["first_failing_step"] for c in report.checks if c.get("first_failing_step")]
    if has32:
        bottom = axes[1, 0]
        ref = runs[("torch", "float64")]
        for framework, color in (("jax", "tab:blue"), ("torch", "tab:orange")):
            err = np.maximum(loss_errors(runs[(framework, "float32")], ref), EPS32 / 16)
            steps = np.arange(1, len(err) + 1)
            label = f"{framework} float32: |loss32 − loss64| / |loss64|"
            window = len(err) // 150
            if window > 1:  # a long run: the raw errors faintly, their running maximum (the envelope) on top
                bottom.semilogy(steps, err, color=color, lw=0.5, alpha=0.2)
                padded = np.concatenate([np.full(window - 1, err[0]), err])
                envelope = np.lib.stride_tricks.sliding_window_view(padded, window).max(axis=1)
                bottom.semilogy(steps, envelope, color=color, lw=1.5, label=label + f" (max over {window} steps)")
            else:
                bottom.semilogy(steps, err, color=color, lw=1, label=label)
        bottom.axhline(EPS32, color="gray", lw=0.8, ls=":", label="one float32 ulp (relative)")
        onset = (report.verdict.get("same_precision") or {}).get("drift_onset_step")
        if onset:
            bottom.axvline(onset, color="gray", ls="--", lw=0.8, label=f"drift onset (step {onset})")
        bottom.set_xlabel("step")
        bottom.set_ylabel("relative float32 error")
        bottom.legend(fontsize=8, loc="lower right")
    else:
        top.set_xlabel("step")
    for ax in axes[:, 0]:
        for step in failing:
            ax.axvline(step, color="red", lw=1.2, label=f"first failing step ({step})" if ax is top else None)
    top.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format=format)
    plt.close(fig)
