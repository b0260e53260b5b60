"""Load a PyTorch checkpoint into its Flax port, and the port's weights back into PyTorch.

    .venv/bin/python examples/load_torch_weights.py

A "pretrained" torch CNN (a few SGD steps on random images, so its BatchNorm statistics are not
the initial ones) is saved with torch.save, loaded into the linen port with `torch_to_flax`, and
both give the same eval outputs; `flax_to_torch` then fills a fresh torch model with the port's
weights.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.cnn import LinenCNN, TorchCNN  # noqa: E402
from jaxtrain.convert import flax_to_torch, torch_to_flax  # noqa: E402


def pretrained(path: Path) -> None:
    torch.manual_seed(0)
    model, x = TorchCNN(), torch.randn(64, 1, 28, 28)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), torch.randint(0, 10, (64,))).backward()
        opt.step()
    torch.save(model.state_dict(), path)


def main() -> int:
    path = Path(tempfile.mkdtemp()) / "cnn.pt"
    pretrained(path)

    state = torch.load(path, map_location="cpu")
    images = np.random.default_rng(0).normal(size=(8, 1, 28, 28)).astype(np.float32)   # torch's layout
    variables = torch_to_flax(state, LinenCNN(), images, torch_model=TorchCNN(), flax_input="nhwc")
    logits = LinenCNN().apply(variables, images.transpose(0, 2, 3, 1), train=False)     # NHWC in Flax

    torch_model = TorchCNN()
    torch_model.load_state_dict(state)
    with torch.no_grad():
        expected = torch_model.eval()(torch.from_numpy(images)).numpy()
    print(f"torch -> Flax: eval outputs agree to {np.abs(np.asarray(logits) - expected).max():.1e} (float32)")

    back = flax_to_torch(variables, TorchCNN(), images, flax_model=LinenCNN(), flax_input="nhwc")
    same = all(torch.equal(back.state_dict()[k], v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    print(f"Flax -> torch: every tensor equal to the checkpoint's: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
