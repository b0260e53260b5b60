"""The tutorial itself (SGD lr 1e-3, batch 64), in JAX and PyTorch, with a parity check.

    python examples/tutorial.py              # 10 epochs, float32 (what the tutorial runs)
    python examples/tutorial.py --epochs 2   # shorter
"""

import argparse

from jaxtrain import parity
from jaxtrain.config import Config, exit_on_user_error
from jaxtrain.train import configure_jax


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    configure_jax(args.dtype)
    config = Config(epochs=args.epochs)  # the tutorial's hyperparameters are Config's defaults
    return parity.run_and_print(config, (args.dtype,), args.data_dir)


if __name__ == "__main__":
    raise SystemExit(main())
