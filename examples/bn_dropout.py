"""BatchNorm1d + Dropout: model.train() and model.eval() differ, and both frameworks must agree.

Dropout masks cannot come from the two RNGs alike, so the parity check draws
them once in numpy and injects them into both (a forward hook on torch's
nn.Dropout; an explicit mask in the Flax model). Evaluation runs in eval mode
(running statistics, no dropout) in both.
"""

import argparse

from jaxtrain import parity
from jaxtrain.config import Config, exit_on_user_error


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-limit", type=int, default=3200)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    config = Config(epochs=args.epochs, model="mlp_bn_dropout", dropout=0.2, lr=0.01, optimizer="sgd", momentum=0.9,
                    train_limit=args.train_limit)
    return parity.run_and_print(config, ("float32", "float64"), args.data_dir, args.train_limit)


if __name__ == "__main__":
    raise SystemExit(main())
