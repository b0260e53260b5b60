"""Run every entry point on bad input and print a markdown table of what each says.

    python examples/bad_inputs_table.py > bad_inputs.md

Crafted data goes into a temporary folder (copies of the real files, damaged).
Each row: the input, the command's exit code, its stderr (one line expected).
"""

import gzip
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from jaxtrain.data import locate


def damaged_copies(root: Path) -> dict:
    real = locate(None)
    cases = {}

    def copy(name):
        d = root / name
        d.mkdir()
        for f in real.iterdir():
            shutil.copy(f, d / f.name)
        cases[name] = d
        return d

    labels = "train-labels-idx1-ubyte.gz"
    d = copy("missing_file")
    (d / labels).unlink()
    d = copy("wrong_magic")
    raw = gzip.decompress((d / labels).read_bytes())
    (d / labels).write_bytes(gzip.compress(struct.pack(">I", 2051) + raw[4:]))
    d = copy("truncated")
    (d / labels).write_bytes(gzip.compress(raw[:-10]))
    d = copy("count_mismatch")
    (d / labels).write_bytes(gzip.compress(struct.pack(">II", 2049, 59999) + raw[8:-1]))
    d = copy("label_out_of_range")
    (d / labels).write_bytes(gzip.compress(raw[:8] + bytes([11]) + raw[9:]))
    d = copy("not_gzip")
    (d / labels).write_bytes(b"plain text, not gzip")
    d = copy("empty_file")
    (d / labels).write_bytes(b"")
    return cases


def main():
    root = Path(tempfile.mkdtemp())
    data = damaged_copies(root)
    (root / "ck").mkdir()
    train = [sys.executable, "-m", "jaxtrain", "train", "--epochs", "1", "--quiet"]
    rows = [(f"data: {name.replace('_', ' ')}", train + ["--data-dir", str(d)]) for name, d in data.items()]
    rows += [
        ("data: --data-dir does not exist", train + ["--data-dir", "/no/such/dir"]),
        ("--lr 0", train + ["--lr", "0"]),
        ("--lr nan", train + ["--lr", "nan"]),
        ("--batch-size 0", train + ["--batch-size", "0"]),
        ("--epochs 0", train + ["--epochs", "0"]),
        ("--optimizer lbfgs", train + ["--optimizer", "lbfgs"]),
        ("--scheduler warmup", train + ["--scheduler", "warmup"]),
        ("--betas 0.9 1.0", train + ["--optimizer", "adam", "--betas", "0.9", "1.0"]),
        ("--weight-decay -1", train + ["--weight-decay", "-1"]),
        ("--nesterov without momentum", train + ["--nesterov"]),
        ("--amsgrad with sgd", train + ["--amsgrad"]),
        ("--scheduler multistep without --milestones", train + ["--scheduler", "multistep"]),
        ("--metrics-out in a missing folder", train + ["--metrics-out", "/no/such/dir/m.json"]),
        ("--checkpoint-dir is a file", train + ["--checkpoint-dir", "/etc/hostname"]),
        ("--resume without --checkpoint-dir", train + ["--resume"]),
        ("--resume with an empty --checkpoint-dir", train + ["--resume", "--checkpoint-dir", str(root / "ck")]),
        ("torchref: --betas 0.9 1.0", [sys.executable, "-m", "torchref", "train", "--optimizer", "adam",
                                        "--betas", "0.9", "1.0"]),
        ("parity: --dtype float16", [sys.executable, "-m", "jaxtrain", "parity", "--dtype", "float16"]),
        ("a batch of 1 row through BatchNorm", train + ["--model", "mlp_bn_dropout", "--train-limit", "65"]),
        ("parity: --plot in a missing folder", [sys.executable, "-m", "jaxtrain", "parity", "--plot", "/no/dir/p.png"]),
        ("parity: damaged data", [sys.executable, "-m", "jaxtrain", "parity", "--data-dir", str(data["truncated"])]),
        ("bench: --batch-sizes 16,0", [sys.executable, "-m", "jaxtrain", "bench", "--batch-sizes", "16,0"]),
        ("bench: --plot in a missing folder", [sys.executable, "-m", "jaxtrain", "bench", "--plot", "/no/dir/b.png"]),
        ("example: missing data", [sys.executable, "examples/tutorial.py", "--data-dir", "/no/such/dir"]),
        ("--devices 3 with --batch-size 64", train + ["--devices", "3"]),
        ("--num-processes without --coordinator", train + ["--num-processes", "2"]),
        ("--coordinator that is not HOST:PORT", train + ["--coordinator", "nowhere"]),
        ("launch: a command other than train", [sys.executable, "-m", "jaxtrain", "launch", "--nproc", "2", "--",
                                                "parity"]),
        ("launch: --process-id given", [sys.executable, "-m", "jaxtrain", "launch", "--nproc", "2", "--", "train",
                                        "--process-id", "1"]),
    ]
    print("| bad input | exit | message (stderr) |")
    print("| --- | --- | --- |")
    for label, command in rows:
        run = subprocess.run(command, capture_output=True, text=True, timeout=300)
        message = run.stderr.strip().replace(str(root), "DIR").replace("|", "\\|")
        print(f"| {label} | {run.returncode} | `{message}` |")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
