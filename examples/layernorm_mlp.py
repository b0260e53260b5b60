"""An MLP with LayerNorm and its Flax NNX port, checked with `check_port` (Adam, 30 steps).

    python examples/layernorm_mlp.py

Flax's LayerNorm defaults to epsilon=1e-6 where torch's uses 1e-5: the port says 1e-5.
"""

import torch
from flax import nnx
from torch import nn as tnn


class TorchLayerNormMLP(tnn.Module):
    def __init__(self):
        super().__init__()
        self.net = tnn.Sequential(tnn.Flatten(), tnn.Linear(784, 128), tnn.LayerNorm(128), tnn.GELU(),
                                  tnn.Linear(128, 10))

    def forward(self, x):
        return self.net(x)


class NnxLayerNormMLP(nnx.Module):
    def __init__(self, epsilon: float = 1e-5, rngs: nnx.Rngs | None = None):
        rngs = rngs or nnx.Rngs(0)
        self.hidden = nnx.Linear(784, 128, rngs=rngs)
        self.norm = nnx.LayerNorm(128, epsilon=epsilon, rngs=rngs)
        self.out = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
        x = self.norm(self.hidden(x.reshape(x.shape[0], -1)))
        return self.out(nnx.gelu(x, approximate=False))  # torch's nn.GELU() is the exact erf form


def main() -> int:
    from jaxtrain.data import load_fashion_mnist
    from jaxtrain.parity import check_port

    train, test = load_fashion_mnist()
    torch.manual_seed(0)
    report = check_port(TorchLayerNormMLP(), NnxLayerNormMLP(), train=(train.images[:1280], train.labels[:1280]),
                        test=(test.images[:1000], test.labels[:1000]), optimizer="adam",
                        optimizer_kwargs={"lr": 1e-3}, steps=30)
    print(report)
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
