"""The docs build's hook (mkdocs `hooks:`): measured figures come from `results/*.json`, never from prose.

- `<!-- results: NAME -->` becomes a table rendered from `results/NAME.json`, headed by the command that
  produced it, the machine kind it ran on and its date (the file's own date field, else the date of the
  commit that last wrote it).
- `<!-- cli -->` becomes the help of every `jaxtrain` subcommand, from the argument parsers themselves.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!--\s*results:\s*([a-z0-9_]+)\s*-->")

COMMANDS = {  # the command that writes each results file
    "corpus": "make corpus (python -m jaxtrain.parity.corpus --json results/corpus.json)",
    "port_writer": "python -m jaxtrain.parity.corpus.written --json results/port_writer.json",
    "port_written_vs_hand": "python -m jaxtrain.bench.port --written",
    "bench_cpu": "jaxtrain bench",
    "bench_port": "python -m jaxtrain.bench.port --suite --json results/bench_port.json",
    "scaling": "python -m jaxtrain.bench.scaling",
    "suite": "d=$(mktemp -d) && git clone . \"$d\" && cd \"$d\" && time bash .ci/run",
    "parity_tutorial": "jaxtrain parity --report results/parity_tutorial.json",
}


def on_page_markdown(markdown: str, page, config, files) -> str:
    markdown = MARKER.sub(lambda m: render(m.group(1)), markdown)
    return markdown.replace("<!-- cli -->", cli_reference())


def render(name: str) -> str:
    path = ROOT / "results" / f"{name}.json"
    if name not in RENDERERS or not path.exists():
        raise ValueError(f"no results renderer or file for {name!r} (results/{name}.json)")
    data = json.loads(path.read_text())
    body = RENDERERS[name](data)
    return (f"*Measured by `{data.get('command') or COMMANDS[name]}` on {_machine(data)}, {_date(data, path)} "
            f"(`results/{name}.json`).*\n\n{body}\n")


def _machine(data: dict) -> str:
    for key in ("machine", "device", "cpu"):
        if isinstance(data.get(key), str):
            return data[key]
    runs = data.get("runs") or []
    if runs and isinstance(runs[-1], dict) and runs[-1].get("machine"):
        return runs[-1]["machine"]
    device = (data.get("jax") or {}).get("device")  # a parity report: its runs' device
    if isinstance(device, str):
        return device
    models = data.get("models") or {}
    first = next(iter(models.values()), {})
    return first.get("device", "the machine of the run")


def _date(data: dict, path: Path) -> str:
    if data.get("date"):
        return data["date"]
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%cs", "--", str(path)], cwd=ROOT, capture_output=True,
                             text=True, timeout=30)
        return out.stdout.strip() or "date unknown"
    except (OSError, subprocess.SubprocessError):
        return "date unknown"


def _table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _mark(value) -> str:
    return {True: "pass", False: "FAIL", None: "n/a"}.get(value, str(value))


def _corpus(data: dict) -> str:
    rows = data["rows"]
    healthy = [r for r in rows if r["kind"] == "healthy"]
    bugs = [r for r in rows if r["kind"] == "bug"]
    summary = (f"{len(healthy)} healthy cases: {sum(not r.get('ok') for r in healthy)} false alarms, "
               f"{sum(bool(r.get('finding')) for r in healthy)} findings that are not the port's (named). "
               f"{len(bugs)} planted bugs: {sum(not r.get('caught') for r in bugs)} missed, "
               f"{sum(bool(r.get('caught')) and not r.get('localised_right') for r in bugs)} localised wrongly."
               + ("" if data.get("complete", True) else " (An incomplete run.)"))
    table = _table(["case", "kind", "steps", "float64", "float32", "results", "where", "right?"],
                   [[r["case"], r["kind"], r["steps"], _mark(r["parts"]["same_math"]),
                     _mark(r["parts"]["same_precision"]), _mark(r["parts"]["same_results"]), r.get("where") or "-",
                     "yes" if r.get("ok") else "NO"] for r in rows])
    return summary + "\n\n" + table


def _port_writer(data: dict) -> str:
    summary = (f"{data['written_and_passed']} of {data['candidates']} models written with no edits and passing "
               f"check_port ({data['written']} written whole).")
    return summary + "\n\n" + _table(["model", "written", "check"], [
        [r["case"], "yes" if r["written"] else "no: " + r["untranslated"][0][0], _mark(r["passed"])]
        for r in data["rows"]])


def _written_vs_hand(data: dict) -> str:
    median = data["median"]
    return _table(["port", "median seconds per step (jax scan)"],
                  [["hand-written", f"{median['hand']:.4f}"], ["written by jaxtrain.port", f"{median['written']:.4f}"]]) + \
        f"\n\nRatio written / hand: {data['written_over_hand']:.2f} ({data['rounds']} rounds of {data['steps']} steps)."


def _bench_cpu(data: dict) -> str:
    return _table(["variant", "epoch seconds (median)", "ratio to torch tutorial", "samples/s", "peak RSS MB"], [
        [v["name"], f"{v['epoch_seconds']['median']:.2f}", f"{v.get('ratio_to_torch_tutorial', float('nan')):.2f}",
         f"{v.get('samples_per_second', 0):.0f}", f"{v.get('peak_rss_mb', 0):.0f}"] for v in data["variants"]])


def _bench_port(data: dict) -> str:
    parts = []
    for name, model in data["models"].items():
        variants = model.get("variants", [])
        base = next((v for v in variants if v["name"] == "torch_eager"), None)
        rows = [[v["name"], f"{v['step_seconds']['median'] * 1e3:.1f}",
                 f"{base['step_seconds']['median'] / v['step_seconds']['median']:.2f}" if base else "-"]
                for v in variants if v.get("step_seconds")]
        parts.append(f"**{name}** ({model['torch_model']} / {model['flax_model']}, batch {model['batch_size']}, "
                     f"{model['dtype']}, {model['device']})\n\n" + _table(["variant", "ms per step (median)",
                                                                            "speed vs torch eager"], rows))
    return "\n\n".join(parts)


def _scaling(data: dict) -> str:
    return _table(["run", "command", "train epoch seconds", "final accuracy"], [
        [r["name"], f"`{r['command']}`", r.get("train_epoch_seconds"), f"{100 * r.get('final_accuracy', 0):.1f}%"]
        for r in data["runs"]])


def _suite(data: dict) -> str:
    return f"Budget: {data['budget_minutes']} minutes.\n\n" + _table(
        ["date", "machine", "commit", "passed", "failed", "tests (s)", "all (s)"],
        [[r["date"], r["machine"], r.get("commit", "-"), r.get("passed"), r.get("failed"), r.get("test_seconds"),
          r.get("total_seconds")] for r in data["runs"]])


def _parity_tutorial(data: dict) -> str:
    rows = [[c["dtype"], c["steps"], _mark(c["passed"]), f"{c.get('max_rel_loss_diff', float('nan')):.1e}"]
            for c in data["checks"]]
    verdict = "; ".join(f"{part}: {_mark(v.get('passed') if isinstance(v, dict) else v)}"
                        for part, v in data["verdict"].items())
    return _table(["dtype", "steps", "passed", "max relative loss difference"], rows) + f"\n\nVerdict: {verdict}."


RENDERERS = {"corpus": _corpus, "port_writer": _port_writer, "port_written_vs_hand": _written_vs_hand,
             "bench_cpu": _bench_cpu, "bench_port": _bench_port, "scaling": _scaling, "suite": _suite,
             "parity_tutorial": _parity_tutorial}


def cli_reference() -> str:
    """Every subcommand's `--help`, from `jaxtrain.cli.build_parser()`."""
    import argparse

    from jaxtrain.cli import build_parser

    parser = build_parser()
    out = ["```text", parser.format_help().rstrip(), "```"]
    for action in parser._actions:  # argparse keeps its subparsers here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += ["", f"## jaxtrain {name}", "", "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(out)
