"""The parity report: its JSON, its printed table and verdict, its picture, its page."""

from __future__ import annotations

import dataclasses
import html
import io
from pathlib import Path

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

    def save_html(self, path) -> Path:
        """One self-contained page (`render_html`): the verdict, the trajectories, step 1 layer by layer."""
        path = Path(path)
        path.write_text(render_html(self))
        return path


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


# --------------------------------------------------------------------------- the page

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}.pass{color:#1a7f37}.fail{color:#c62828}pre{background:#f6f8fa;padding:1em;white-space:pre-wrap;
font-size:.85em}figure{margin:1.5em 0}figcaption{color:#555;font-size:.9em}svg{max-width:100%;height:auto}"""


def render_html(report: ParityReport) -> str:
    """The report as one self-contained HTML page (no network): the verdict in words, both frameworks'
    trajectories in float32 and float64, and at step 1 each layer's float32 difference against its allowance,
    the first layer beyond it standing out."""
    verdict = "PASSED" if report.passed else "FAILED"
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>jaxtrain parity: {verdict}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>Parity <span class='{'pass' if report.passed else 'fail'}' id='verdict'>{verdict}</span></h1>",
             f"<p>{html.escape(_summary(report))}</p>",
             f"<pre id='report'>{html.escape(format_verdict(report))}</pre>",
             "<figure id='trajectories'>", _svg(lambda buffer: plot(report, buffer, format="svg")),
             "<figcaption>Every step's training loss, both frameworks, float32 and float64; below, each float32 "
             "run's relative distance from float64 (the rounding envelopes). A red line: the first failing "
             "step.</figcaption></figure>",
             "<figure id='epochs'>", _svg(lambda buffer: _plot_epochs(report, buffer)),
             "<figcaption>Each epoch's test loss and accuracy.</figcaption></figure>"]
    layers = (report.verdict.get("same_precision") or {}).get("step1_excess") or []
    if layers:
        parts += ["<figure id='layers'>", _svg(lambda buffer: _plot_layers(layers, buffer)),
                  "<figcaption>Step 1 in float32, from identical weights: each stage tensor's difference from "
                  "float64 as a share of what torch's own float32 error allows (1 = at the limit), in the order "
                  "the step computes them. The first beyond the allowance is red.</figcaption></figure>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def _summary(report: ParityReport) -> str:
    said = {True: "holds", False: "fails", None: "could not be decided"}
    names = {"same_math": "Same math (float64)", "same_precision": "Same precision (float32)",
             "same_results": "Same results (float32)"}
    words = [f"{names[p]} {said[v['passed']]}" for p, v in report.verdict.items() if v is not None]
    where = next((v.get("localised") for v in report.verdict.values() if v and v.get("passed") is False
                  and isinstance(v.get("localised"), dict) and v["localised"].get("stage") not in (None, "drift")), None)
    sentence = "; ".join(words) + "."
    if where:
        sentence += (f" The runs part at step {where['step']}, stage {where['stage']}, "
                     f"{where.get('layer') or where.get('tensor')}.")
    if report.diagnosis:
        sentence += f" Diagnosis: {report.diagnosis['trap']}."
    return sentence


def _svg(draw) -> str:
    buffer = io.BytesIO()
    draw(buffer)
    text = buffer.getvalue().decode()
    return text[text.index("<svg"):]  # drop the XML prologue: the SVG sits inside the page


def _plot_epochs(report: ParityReport, target) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss, accuracy) = plt.subplots(1, 2, figsize=(10, 3.5))
    for (framework, dtype), run in sorted(report.trajectories.items()):
        epochs = run.record["epochs"]
        x = [e["epoch"] for e in epochs]
        style = "-" if framework == "jax" else "--"
        loss.plot(x, [e["test_loss"] for e in epochs], style, marker="o", label=f"{framework} {dtype}")
        accuracy.plot(x, [100 * e["test_accuracy"] for e in epochs], style, marker="o", label=f"{framework} {dtype}")
    loss.set_xlabel("epoch"), loss.set_ylabel("test loss"), accuracy.set_xlabel("epoch")
    accuracy.set_ylabel("test accuracy (%)")
    loss.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, format="svg")
    plt.close(fig)


def _plot_layers(layers: list, target) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    excess = np.array([min(max(float(e), 1e-6), 1e6) for _, _, e in layers])  # drawn on a log axis
    beyond = np.flatnonzero(excess > 1)
    colors = ["tab:blue"] * len(layers)
    if beyond.size:
        colors[int(beyond[0])] = "tab:red"
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.22 * len(layers))))
    y = np.arange(len(layers))[::-1]
    ax.barh(y, excess, color=colors)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", lw=1, ls="--", label="the allowance")
    ax.set_yticks(y, [f"{stage}: {tensor}" for stage, tensor, _ in layers], fontsize=7)
    ax.set_xlabel("float32 difference / allowance (step 1)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, format="svg")
    plt.close(fig)
