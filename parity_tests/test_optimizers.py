"""Each jaxtrain optimizer and scheduler against torch.optim on one tensor, in float64.

Same starting parameter, same gradient sequence (the gradient of a fixed
quadratic at the current parameter), 12 steps with a per-"epoch" scheduler step
every 3: the parameters must agree to 1e-12 relative.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from jaxtrain import config as config_lib
from jaxtrain.optim import lr_schedule, make_optimizer
from torchref.optim import make_optimizer as make_torch_optimizer
from torchref.optim import make_scheduler

STEPS, STEPS_PER_EPOCH = 12, 3

CASES = {
    "sgd": dict(optimizer="sgd", lr=0.1),
    "sgd_momentum": dict(optimizer="sgd", lr=0.1, momentum=0.9),
    "sgd_nesterov_wd": dict(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "sgd_dampening": dict(optimizer="sgd", lr=0.1, momentum=0.8, dampening=0.3),
    "adam": dict(optimizer="adam", lr=0.01),
    "adam_wd_amsgrad": dict(optimizer="adam", lr=0.01, weight_decay=0.1, amsgrad=True, betas=(0.8, 0.99)),
    "adamw": dict(optimizer="adamw", lr=0.01),
    "adamw_amsgrad": dict(optimizer="adamw", lr=0.01, weight_decay=0.05, amsgrad=True),
    "rmsprop": dict(optimizer="rmsprop", lr=0.01),
    "rmsprop_centered_momentum": dict(optimizer="rmsprop", lr=0.01, momentum=0.9, centered=True, alpha=0.9,
                                      weight_decay=0.01),
    "adagrad": dict(optimizer="adagrad", lr=0.1),
    "adagrad_decay": dict(optimizer="adagrad", lr=0.1, lr_decay=0.05, initial_accumulator_value=0.2,
                          weight_decay=0.01, eps=1e-6),
}
SCHEDULES = {
    "none": dict(),
    "step": dict(scheduler="step", step_size=2, gamma=0.5),
    "multistep": dict(scheduler="multistep", milestones=(1, 3), gamma=0.3),
    "multistep_repeated": dict(scheduler="multistep", milestones=(1, 1, 3), gamma=0.3),  # gamma twice at 1
    "exponential": dict(scheduler="exponential", gamma=0.7),
    "cosine": dict(scheduler="cosine", t_max=2, eta_min=0.001),  # runs past T_max: torch keeps oscillating
}


def make_config(**kw):
    return config_lib.make_config(dtype="float64", **kw)


def quadratic_grad(p):
    scale = np.linspace(0.5, 3.0, p.size).reshape(p.shape)
    return scale * (p - 0.3) + 0.05 * np.sin(7 * p)


def run_torch(config, p0):
    param = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    optimizer = make_torch_optimizer(config, [param])
    scheduler = make_scheduler(config, optimizer)
    history = []
    for step in range(STEPS):
        param.grad = torch.tensor(quadratic_grad(param.detach().numpy()))
        optimizer.step()
        optimizer.zero_grad()
        history.append(param.detach().numpy().copy())
        if scheduler is not None and (step + 1) % STEPS_PER_EPOCH == 0:
            scheduler.step()
    return np.array(history)


def run_jax(config, p0):
    tx = make_optimizer(config, STEPS_PER_EPOCH)
    param = jnp.asarray(p0)
    state = tx.init(param)
    history = []
    for _ in range(STEPS):
        grad = jnp.asarray(quadratic_grad(np.asarray(param)))
        updates, state = tx.update(grad, state, param)
        param = optax.apply_updates(param, updates)
        history.append(np.asarray(param))
    return np.array(history)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("case", list(CASES))
def test_optimizer_and_scheduler_match_torch_in_float64(case, schedule):
    jax.config.update("jax_enable_x64", True)
    config = make_config(**CASES[case], **SCHEDULES[schedule])
    p0 = np.random.default_rng(0).normal(size=(4, 5))
    np.testing.assert_allclose(run_jax(config, p0), run_torch(config, p0), rtol=1e-12, atol=1e-14)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_schedules_give_torchs_lr_for_every_epoch(schedule):
    jax.config.update("jax_enable_x64", True)
    config = make_config(optimizer="sgd", lr=0.1, **SCHEDULES[schedule])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = make_scheduler(config, optimizer)
    fn = lr_schedule(config, STEPS_PER_EPOCH)
    for epoch in range(8):
        for count in range(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH):
            assert float(fn(jnp.asarray(count))) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-13)
        if scheduler is not None:
            scheduler.step()


def test_float32_adam_follows_torch_like_torch_follows_itself():
    """optax.adam's float32 `1 - 0.999**t` drifts; ours stays within torch's own float32 error."""
    jax.config.update("jax_enable_x64", False)
    config = dataclasses.replace(make_config(optimizer="adam", lr=1e-3), dtype="float32")
    p0 = np.random.default_rng(1).normal(size=(64,)).astype(np.float32)
    steps = 300

    def trajectory(tx):
        param, state = jnp.asarray(p0), tx.init(jnp.asarray(p0))
        for _ in range(steps):
            updates, state = tx.update(jnp.asarray(quadratic_grad(np.asarray(param)), jnp.float32), state, param)
            param = optax.apply_updates(param, updates)
        return np.asarray(param, np.float64)

    def torch_trajectory(dtype):
        param = torch.nn.Parameter(torch.tensor(p0, dtype=dtype))
        opt = torch.optim.Adam([param], lr=1e-3)
        for _ in range(steps):
            param.grad = torch.tensor(quadratic_grad(param.detach().numpy()), dtype=dtype)
            opt.step()
        return param.detach().double().numpy()

    torch32, torch64 = torch_trajectory(torch.float32), torch_trajectory(torch.float64)
    ours = trajectory(make_optimizer(config, 1))
    own_error = np.abs(torch32 - torch64).max()
    assert np.abs(ours - torch32).max() <= 2 * own_error + 1e-7
