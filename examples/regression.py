"""The random-data regression: N=64, D_in=1000, H=100, D_out=10, MSELoss(reduction="sum"),
Adam lr=1e-4, 500 steps. PyTorch on the left, JAX on the right; same initial
weights, same data; the step losses must agree (float64 to 1e-10 relative,
float32 within 2x torch's own float32-vs-float64 gap + 1e-6 relative: the loss starts near 600, where
an absolute 1e-6 is below float32 resolution).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from jaxtrain.losses import mse
from jaxtrain.optim import adam
from jaxtrain.train import configure_jax
from jaxtrain.transfer import torch_to_flax

N, D_in, H, D_out, STEPS, LR = 64, 1000, 100, 10, 500, 1e-4

rng = np.random.default_rng(0)
x_np, y_np = rng.standard_normal((N, D_in)), rng.standard_normal((N, D_out))
torch.manual_seed(0)
initial = {k: v.numpy() for k, v in torch.nn.Sequential(
    torch.nn.Linear(D_in, H), torch.nn.ReLU(), torch.nn.Linear(H, D_out)).state_dict().items()}


def run_torch(dtype):
    model = torch.nn.Sequential(torch.nn.Linear(D_in, H), torch.nn.ReLU(), torch.nn.Linear(H, D_out)).to(dtype)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in initial.items()})
    x, y = torch.from_numpy(x_np).to(dtype), torch.from_numpy(y_np).to(dtype)
    loss_fn = torch.nn.MSELoss(reduction="sum")
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    losses = []
    for t in range(STEPS):
        y_pred = model(x)
        loss = loss_fn(y_pred, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return np.array(losses)


class TwoLayerNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(H, name="0")(x))
        return nn.Dense(D_out, name="2")(x)


def run_jax(dtype):
    configure_jax(dtype)
    params, _ = torch_to_flax({f"layers.{k}": v.astype(dtype) for k, v in initial.items()})
    params = {name.split("_")[1]: leaves for name, leaves in params.items()}  # "layers_0" -> "0"
    x, y = jnp.asarray(x_np, dtype), jnp.asarray(y_np, dtype)
    tx = adam(optax.constant_schedule(LR))
    model = TwoLayerNet()

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(
            lambda p: mse(model.apply({"params": p}, x), y, jnp.ones(N, dtype), "sum"))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = tx.init(params), []
    for t in range(STEPS):
        params, opt_state, loss = step(params, opt_state)
        losses.append(loss)
    return np.array(jax.device_get(losses), np.float64)


torch32, torch64 = run_torch(torch.float32), run_torch(torch.float64)
jax32, jax64 = run_jax("float32"), run_jax("float64")
ok64 = np.abs(jax64 - torch64) <= 1e-10 * np.abs(torch64)
ok32 = np.abs(jax32 - torch32) <= 2 * np.maximum.accumulate(np.abs(torch32 - torch64)) + 1e-6 * np.abs(torch32)
for t in (0, 99, 199, 299, 399, 499):
    print(f"step {t + 1:>3}  torch {torch32[t]:.6f}  jax {jax32[t]:.6f}  |Δ| float32 {abs(jax32[t] - torch32[t]):.1e}"
          f"  float64 {abs(jax64[t] - torch64[t]):.1e}")
print(f"float64: {'PASS' if ok64.all() else 'FAIL'} (max relative |Δ| {np.max(np.abs(jax64 - torch64) / torch64):.1e})")
print(f"float32: {'PASS' if ok32.all() else 'FAIL'} (max |Δ| {np.max(np.abs(jax32 - torch32)):.1e})")
raise SystemExit(0 if ok64.all() and ok32.all() else 1)
