"""A BatchNorm CNN and its Flax ports (NNX and linen; `jaxtrain/bench/models.py`, the pair the port bench
times), checked with `check_port`.

    python examples/cnn.py              # NNX port, 40 steps, float32 and float64
    python examples/cnn.py --linen      # the linen port
    python examples/cnn.py --bug flatten   # a port that flattens NHWC: the report names fc

Also what `jaxtrain parity --torch-model examples.cnn:TorchCNN --flax-model examples.cnn:NnxCNN
--flax-input nhwc` loads.
"""

import argparse

import torch

from jaxtrain.bench.models import LinenCNN, NnxCNN, TorchCNN


def nnx_flatten_bug():
    return NnxCNN(flatten_nhwc=True)


def main() -> int:
    from jaxtrain.data import load_fashion_mnist
    from jaxtrain.parity import check_port

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--linen", action="store_true")
    parser.add_argument("--bug", choices=("flatten",), default=None)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    train, test = load_fashion_mnist()
    torch.manual_seed(0)
    flax_model = LinenCNN() if args.linen else NnxCNN(flatten_nhwc=args.bug == "flatten")
    report = check_port(TorchCNN(), flax_model,
                        train=(train.images[:1280, None], train.labels[:1280]),
                        test=(test.images[:1000, None], test.labels[:1000]),
                        optimizer="sgd", optimizer_kwargs={"lr": 0.05, "momentum": 0.9},
                        batch_size=64, steps=args.steps, flax_input="nhwc")
    print(report)
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
