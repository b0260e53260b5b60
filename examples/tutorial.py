"""The tutorial itself (SGD lr 1e-3, batch 64), in JAX and PyTorch, with a parity check.

    python examples/tutorial.py              # 10 epochs, float32 (what the tutorial runs)
    python examples/tutorial.py --epochs 2   # shorter
"""

import argparse

from jaxtrain import data, parity
from jaxtrain.config import Config
from jaxtrain.train import configure_jax

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
args = parser.parse_args()

configure_jax(args.dtype)
config = Config(epochs=args.epochs)  # the tutorial's hyperparameters are Config's defaults
train, test = data.load_fashion_mnist()
report = parity.check_parity(config, (args.dtype,), train, test)
print(parity.format_table(report))
raise SystemExit(0 if report["passed"] else 1)
