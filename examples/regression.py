"""A regression network checked with `check_port` and the user's own optimizer pair: random data,
N=64, D_in=1000, H=100, D_out=10, MSELoss(reduction="sum"), AdamW lr=1e-4, 500 steps (one batch
of 64, so one step an epoch), no test set.

    python examples/regression.py

The optimizer is given as the user wrote it on both sides: torch.optim.AdamW(lr=1e-4) and
optax.adamw(1e-4, weight_decay=1e-2) (optax's default decay is 1e-4: the checker catches that).
Adam's bias correction in optax runs in float32, so the float32 part may name it.
"""

import numpy as np
import optax
import torch
from flax import nnx

N, D_in, H, D_out, STEPS, LR = 64, 1000, 100, 10, 500, 1e-4


def torch_net():
    return torch.nn.Sequential(torch.nn.Linear(D_in, H), torch.nn.ReLU(), torch.nn.Linear(H, D_out))


class TwoLayerNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs | None = None):
        rngs = rngs or nnx.Rngs(0)
        self.hidden, self.out = nnx.Linear(D_in, H, rngs=rngs), nnx.Linear(H, D_out, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


def check(weight_decay=1e-2, steps=STEPS, dtypes=("float64",)):
    from jaxtrain.parity import check_port

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((N, D_in)), rng.standard_normal((N, D_out))
    torch.manual_seed(0)
    return check_port(torch_net(), TwoLayerNet(), train=(x, y), test=None, loss="mse", mse_reduction="sum",
                      optimizer=(lambda params: torch.optim.AdamW(params, lr=LR), optax.adamw(LR, weight_decay=weight_decay)),
                      batch_size=N, steps=steps, dtypes=dtypes)


if __name__ == "__main__":
    report = check()
    print(report)
    raise SystemExit(0 if report.passed else 1)
