"""The parity report as one self-contained HTML page (no network): the verdict in words, both frameworks'
trajectories in float32 and float64, and at step 1 each layer's float32 difference against its allowance,
the first layer beyond it standing out. `ParityReport.save_html(path)`, `jaxtrain parity --html PATH`."""

from __future__ import annotations

import html
import io
from pathlib import Path

import numpy as np

from jaxtrain.parity.report import ParityReport, format_verdict, plot

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}.pass{color:#1a7f37}.fail{color:#c62828}pre{background:#f6f8fa;padding:1em;white-space:pre-wrap;
font-size:.85em}figure{margin:1.5em 0}figcaption{color:#555;font-size:.9em}svg{max-width:100%;height:auto}"""


def save_html(report: ParityReport, path) -> Path:
    """Write the page; returns its path."""
    path = Path(path)
    path.write_text(render(report))
    return path


def render(report: ParityReport) -> str:
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
