"""`python -m jaxtrain.bench.scaling`: the 1 -> 2 device/process figures of the README, measured in one run.

Runs the same training (full FashionMNIST unless limited, the tutorial's MLP, batch 64)
five ways, one after the other, each a fresh process group:
    jax 1 device | jax --devices 2 | jax launch --nproc 2 | torch 1 process | torchrun DDP 2 ranks
and reads each run's steady-state training-epoch time (median over the epochs after the
first) from what rank 0 prints. Then the arithmetic of data parallel for this model: the
bytes a step's gradient all-reduce moves, what that costs at 25/100/400 Gb/s, and the
per-device batch above which splitting the batch saves more compute than the all-reduce
costs, from the one-device step time measured here.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from jaxtrain.bench import LAYERS, cpu_name
from jaxtrain.data import batches_per_epoch

RUNS = {
    "jax, 1 device": ["-m", "jaxtrain", "train"],
    "jax, 2 devices (--devices 2)": ["-m", "jaxtrain", "train", "--devices", "2"],
    "jax, 2 processes (launch --nproc 2)": ["-m", "jaxtrain", "launch", "--nproc", "2", "--", "train"],
    "torch, 1 process": ["-m", "torchref", "train"],
    "torch DDP, 2 ranks (torchrun)": ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                                      "-m", "torchref", "train"],
}
BANDWIDTHS_GBIT = (25, 100, 400)
BATCH = 64  # the tutorial's batch size, which every run here uses
TIMING = re.compile(r"train epoch \(steady state, median of \d+\): ([0-9.]+) s")


def num_params(layers=LAYERS) -> int:
    return sum(i * o + o for i, o in layers)


def allreduce_seconds(num_bytes: float, devices: int, gbit_per_s: float) -> float:
    """A ring all-reduce sends and receives 2(N-1)/N of the buffer per device."""
    return 2 * (devices - 1) / devices * num_bytes * 8 / (gbit_per_s * 1e9)


def measure(name: str, argv: list[str], flags: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "m.json"
        done = subprocess.run([sys.executable, *argv, *flags, "--quiet", "--metrics-out", str(out)],
                              capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise SystemExit(f"{name}: exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
        timing = TIMING.findall(done.stderr)
        record = json.loads(out.read_text())
    epoch = record["epochs"][-1]
    return {"name": name, "command": " ".join(["python", *argv, *flags]), "train_epoch_seconds": float(timing[-1]),
            "final_test_loss": epoch["test_loss"], "final_accuracy": epoch["test_accuracy"]}


def run(epochs: int, train_limit: int | None = None, log=print) -> dict:
    flags = ["--epochs", str(epochs)] + (["--train-limit", str(train_limit)] if train_limit else [])
    runs = []
    for name, argv in RUNS.items():
        runs.append(measure(name, argv, flags))
        log(f"{name}: {runs[-1]['train_epoch_seconds']:.3f} s per training epoch")
    params = num_params()
    grad_bytes = 4 * params  # float32 gradients
    step_seconds = runs[0]["train_epoch_seconds"] / batches_per_epoch(train_limit or 60000, BATCH)  # one device
    network = []
    for gbit in BANDWIDTHS_GBIT:
        t = allreduce_seconds(grad_bytes, 2, gbit)
        # two devices save half of a step's compute (BATCH rows take step_seconds) and pay t
        network.append({"gbit_per_s": gbit, "allreduce_seconds": t, "fraction_of_step": t / step_seconds,
                        "break_even_rows_per_device": t / (step_seconds / BATCH * (1 - 1 / 2))})
    return {"flags": flags, "cpu": cpu_name(), "runs": runs, "params": params, "allreduce_bytes_float32": grad_bytes,
            "one_device_step_seconds": step_seconds, "network_2_devices": network}


def markdown(result: dict) -> str:
    base = result["runs"][0]["train_epoch_seconds"]
    torch_base = result["runs"][3]["train_epoch_seconds"]
    lines = [f"Measured on {result['cpu']} with `{' '.join(result['flags'])}` (float32, batch 64).", "",
             "| run | training epoch (s, median) | vs its 1-process run | final test loss |", "|---|---|---|---|"]
    for r in result["runs"]:
        ref = torch_base if r["name"].startswith("torch") else base
        lines.append(f"| {r['name']} | {r['train_epoch_seconds']:.3f} | {r['train_epoch_seconds'] / ref:.2f}x | "
                     f"{r['final_test_loss']:.6f} |")
    lines += ["", f"All-reduce per step: {result['params']:,} float32 gradients = "
              f"{result['allreduce_bytes_float32'] / 1e6:.2f} MB; one-device step here: "
              f"{1e3 * result['one_device_step_seconds']:.2f} ms.", "",
              "| link | all-reduce, 2 devices (ms) | share of one step here | batch rows per device where 2-way "
              "data parallel starts to pay |", "|---|---|---|---|"]
    for n in result["network_2_devices"]:
        lines.append(f"| {n['gbit_per_s']} Gb/s | {1e3 * n['allreduce_seconds']:.3f} | "
                     f"{100 * n['fraction_of_step']:.1f}% | {n['break_even_rows_per_device']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r["name"] for r in result["runs"]]
    ax.barh(names, [r["train_epoch_seconds"] for r in result["runs"]],
            color=["#4c72b0", "#55a868", "#8172b3", "#c44e52", "#dd8452"])
    ax.invert_yaxis()
    ax.set_xlabel("training epoch, seconds (median of the epochs after the first)")
    ax.set_title(f"1 -> 2 devices/processes on {result['cpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxtrain.bench.scaling", description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--json", default="results/scaling.json")
    parser.add_argument("--markdown", default="results/scaling.md")
    parser.add_argument("--plot", default="results/scaling.png")
    args = parser.parse_args(argv)
    result = run(args.epochs, args.train_limit, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    Path(args.markdown).write_text(markdown(result))
    plot(result, args.plot)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
