"""SGD with momentum 0.9 and StepLR(step_size=2, gamma=0.5), both frameworks, parity checked.

    torch: optimizer = SGD(params, lr=0.01, momentum=0.9); scheduler = StepLR(optimizer, 2, 0.5)
           ... scheduler.step() after each epoch
    jax:   optax.chain(optax.trace(0.9), optax.scale_by_learning_rate(lr * 0.5 ** (count // (2 * steps_per_epoch))))
"""

import argparse

from jaxtrain import parity
from jaxtrain.config import Config, exit_on_user_error


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-limit", type=int, default=6400)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    config = Config(epochs=args.epochs, lr=0.01, optimizer="sgd", momentum=0.9, scheduler="step", step_size=2,
                    gamma=0.5, train_limit=args.train_limit)
    return parity.run_and_print(config, ("float32", "float64"), args.data_dir, args.train_limit)


if __name__ == "__main__":
    raise SystemExit(main())
