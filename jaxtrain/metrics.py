"""The metrics record both trainers write (`--metrics-out`), and the tutorial's printed lines.

Schema, exactly these keys:
    {"framework": "jax" | "torch", "config": {...every flag...}, "device": "cpu" | "gpu" | "tpu",
     "steps": [{"step": 1, "loss": float}, ...],
     "epochs": [{"epoch": 1, "train_loss": float, "test_loss": float,
                 "test_accuracy": float in [0, 1], "seconds": float}, ...]}
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from jaxtrain.errors import UserError

RECORD_KEYS = ("framework", "config", "device", "steps", "epochs")
EPOCH_KEYS = ("epoch", "train_loss", "test_loss", "test_accuracy", "seconds")


def new_record(framework: str, config, device: str) -> dict:
    return {"framework": framework, "config": config.to_json(), "device": device, "steps": [], "epochs": []}


def check_writable(path: str | None, flag: str = "--metrics-out") -> None:
    """Fail before training, not after it, when an output file cannot be written."""
    if path is None:
        return
    parent = Path(path).resolve().parent
    if Path(path).is_dir():
        raise UserError(f"{path}: {flag} is a directory; give a file path")
    if not parent.is_dir():
        raise UserError(f"{path}: {flag} directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{path}: {flag} directory {parent} is not writable")


def write_json(path: str, payload: dict) -> None:
    """Write atomically: a temporary file in the same directory, then rename over `path`."""
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.resolve().parent)
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1)
            f.write("\n")
        os.replace(tmp, target)
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror})") from None


def append_epoch(record: dict, epoch: int, losses, test_loss: float, accuracy: float, seconds: float) -> None:
    """Add one epoch's step losses and summary to a record."""
    import numpy as np

    first = len(record["steps"]) + 1
    record["steps"] += [{"step": first + i, "loss": float(v)} for i, v in enumerate(losses)]
    record["epochs"].append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "test_loss": test_loss,
                             "test_accuracy": accuracy, "seconds": seconds})


def check_finite(losses, epoch: int, steps_before: int) -> None:
    """Stop on the first NaN/Inf loss, naming its step and epoch."""
    import numpy as np

    from jaxtrain.errors import DivergedError

    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        step = steps_before + int(bad[0]) + 1
        raise DivergedError(
            f"loss became {losses[bad[0]]} at step {step} (epoch {epoch + 1}); lower --lr or check the data")


# --------------------------------------------------------------------------- tutorial output


def train_progress_line(loss: float, current: int, size: int) -> str:
    """`print(f"loss: {loss:>7f}  [{current:>5d}/{size:>5d}]")` from the tutorial's train_loop."""
    return f"loss: {loss:>7f}  [{current:>5d}/{size:>5d}]"


def test_summary_lines(accuracy: float, test_loss: float) -> str:
    """The tutorial's test_loop summary (accuracy as a fraction)."""
    return f"Test Error: \n Accuracy: {(100 * accuracy):>0.1f}%, Avg loss: {test_loss:>8f} \n"


def epoch_header(epoch: int) -> str:
    return f"Epoch {epoch + 1}\n-------------------------------"
