"""torch.optim optimizers and per-epoch LR schedulers as optax compositions.

Each optimizer is a short chain, as optax's own aliases are written:
weight decay (torch's L2: `grad + wd * param`), a scaling of the gradient,
then the learning rate from a schedule. Where optax has a transform with
torch's exact semantics it is used (`optax.add_decayed_weights`, `optax.trace`,
`optax.scale_by_learning_rate`); where it does not, the transform below
follows torch's update formula and its order of operations:

- SGD dampening != 0: torch's first momentum buffer is the raw gradient.
- Adam/AdamW: torch computes the bias corrections `1 - beta**t` in float64;
  optax's float32 `1 - 0.999**t` is off by ~1e-5 relative, enough to move a
  float32 loss by 5.7e-3 in 21 steps. `scale_by_torch_adam` computes them as
  `-expm1(t * log(beta))` with the logarithm taken in float64, so a float32 run
  stays within rounding of torch. AMSGrad keeps the max of the raw second
  moment (optax.amsgrad keeps the max of the bias-corrected one).
- RMSprop: torch's alpha and eps outside the sqrt; momentum is applied before
  the learning rate (optax.rmsprop applies it after, different under a schedule).
- Adagrad: eps outside the sqrt, initial accumulator 0, lr / (1 + (t-1) lr_decay).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# --------------------------------------------------------------------------- schedules


def lr_schedule(config, steps_per_epoch: int) -> optax.Schedule:
    """A torch scheduler stepped once per epoch, as a function of the update count.

    torch's lr during epoch e (0-based) is f(e); optax evaluates a schedule at the
    0-based count of updates so far, so the epoch is count // steps_per_epoch.
    """
    lr, gamma, spe = config.lr, config.gamma, steps_per_epoch
    if config.scheduler == "none":
        return optax.constant_schedule(lr)
    # (optax.exponential_decay computes in float32 even under x64, so the staircases are written out)
    if config.scheduler == "step":  # StepLR(step_size, gamma)
        return lambda count: lr * gamma ** (count // (config.step_size * spe))
    if config.scheduler == "multistep":  # MultiStepLR(milestones, gamma)
        # a milestone listed k times multiplies by gamma**k, as torch's Counter of milestones does
        counts = {m: config.milestones.count(m) for m in config.milestones}
        return optax.piecewise_constant_schedule(lr, {m * spe: gamma ** k for m, k in counts.items()})
    if config.scheduler == "exponential":  # ExponentialLR(gamma)
        return lambda count: lr * gamma ** (count // spe)
    if config.scheduler == "cosine":  # CosineAnnealingLR(T_max, eta_min): periodic past T_max, unlike optax's
        t_max, eta_min = config.t_max, config.eta_min

        def cosine(count):
            epoch = count // spe
            return eta_min + (lr - eta_min) * (1 + jnp.cos(math.pi * epoch / t_max)) / 2

        return cosine
    raise ValueError(f"unknown scheduler {config.scheduler!r}")


# --------------------------------------------------------------------------- transforms


class DampenedTraceState(NamedTuple):
    count: jax.Array
    trace: optax.Params


def trace_with_dampening(momentum: float, dampening: float) -> optax.GradientTransformation:
    """torch SGD momentum with dampening: b1 = g; b_t = momentum * b_{t-1} + (1 - dampening) * g."""

    def init_fn(params):
        return DampenedTraceState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        first = state.count == 0
        trace = jax.tree.map(
            lambda g, b: jnp.where(first, g, momentum * b + (1 - dampening) * g), updates, state.trace)
        return trace, DampenedTraceState(state.count + 1, trace)

    return optax.GradientTransformation(init_fn, update_fn)


def _one_minus_pow(beta: float, count):
    """1 - beta**count, accurate in float32: log(beta) is taken in float64 on the host."""
    return -jnp.expm1(count * math.log(beta)) if beta > 0 else jnp.ones_like(count)


class TorchAdamState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    nu_max: optax.Updates


def scale_by_torch_adam(b1: float, b2: float, eps: float, amsgrad: bool = False) -> optax.GradientTransformation:
    """torch Adam's direction, op for op: m/bc1 / (sqrt(v)/sqrt(bc2) + eps)."""

    def init_fn(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return TorchAdamState(jnp.zeros([], jnp.int32), zeros(), zeros(), zeros() if amsgrad else None)

    def update_fn(updates, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: m + (1 - b1) * (g - m), state.mu, updates)  # exp_avg.lerp_(g, 1-b1)
        nu = jax.tree.map(lambda v, g: v * b2 + (1 - b2) * g * g, state.nu, updates)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu) if amsgrad else None
        t = count.astype(jnp.result_type(float))
        dtype = jax.tree.leaves(updates)[0].dtype
        bc1 = _one_minus_pow(b1, t).astype(dtype)
        bc2_sqrt = jnp.sqrt(_one_minus_pow(b2, t)).astype(dtype)
        second = nu_max if amsgrad else nu
        direction = jax.tree.map(lambda m, v: (m / (jnp.sqrt(v) / bc2_sqrt + eps)) / bc1, mu, second)
        return direction, TorchAdamState(count, mu, nu, nu_max)

    return optax.GradientTransformation(init_fn, update_fn)


class TorchRMSState(NamedTuple):
    square_avg: optax.Updates
    grad_avg: optax.Updates


def scale_by_torch_rms(alpha: float, eps: float, centered: bool) -> optax.GradientTransformation:
    """torch RMSprop's direction: g / (sqrt(v) + eps), or g / (sqrt(v - mean(g)^2) + eps) centered."""

    def init_fn(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return TorchRMSState(zeros(), zeros() if centered else None)

    def update_fn(updates, state, params=None):
        del params
        square_avg = jax.tree.map(lambda v, g: v * alpha + (1 - alpha) * g * g, state.square_avg, updates)
        if centered:
            grad_avg = jax.tree.map(lambda a, g: a + (1 - alpha) * (g - a), state.grad_avg, updates)
            denom = jax.tree.map(lambda v, a: jnp.sqrt(v - a * a) + eps, square_avg, grad_avg)
        else:
            grad_avg = None
            denom = jax.tree.map(lambda v: jnp.sqrt(v) + eps, square_avg)
        return jax.tree.map(jnp.divide, updates, denom), TorchRMSState(square_avg, grad_avg)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_torch_adagrad(eps: float, initial_accumulator_value: float) -> optax.GradientTransformation:
    """torch Adagrad's direction: g / (sqrt(sum of g^2) + eps)."""

    def init_fn(params):
        return jax.tree.map(lambda p: jnp.full_like(p, initial_accumulator_value), params)

    def update_fn(updates, state, params=None):
        del params
        state_sum = jax.tree.map(lambda s, g: s + g * g, state, updates)
        return jax.tree.map(lambda g, s: g / (jnp.sqrt(s) + eps), updates, state_sum), state_sum

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- optimizers


def _l2(weight_decay: float) -> list[optax.GradientTransformation]:
    """torch's weight_decay for SGD/Adam/RMSprop/Adagrad: grad += weight_decay * param."""
    return [optax.add_decayed_weights(weight_decay)] if weight_decay else []


def sgd(schedule, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD. With dampening 0, optax.trace is torch's momentum exactly."""
    if momentum == 0:
        scaling = []
    elif dampening == 0:
        scaling = [optax.trace(decay=momentum, nesterov=nesterov)]
    else:
        scaling = [trace_with_dampening(momentum, dampening)]
    return optax.chain(*_l2(weight_decay), *scaling, optax.scale_by_learning_rate(schedule))


def adam(schedule, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
    """torch.optim.Adam (weight_decay is L2 on the gradient)."""
    return optax.chain(*_l2(weight_decay), scale_by_torch_adam(*betas, eps, amsgrad),
                       optax.scale_by_learning_rate(schedule))


def adamw(schedule, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
    """torch.optim.AdamW: param *= 1 - lr * weight_decay (decoupled, scheduled lr), then Adam."""
    return optax.chain(scale_by_torch_adam(*betas, eps, amsgrad), optax.add_decayed_weights(weight_decay),
                       optax.scale_by_learning_rate(schedule))


def rmsprop(schedule, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
    """torch.optim.RMSprop: buf = momentum * buf + g / (sqrt(v) + eps); param -= lr * buf."""
    scaling = [optax.trace(decay=momentum)] if momentum else []
    return optax.chain(*_l2(weight_decay), scale_by_torch_rms(alpha, eps, centered), *scaling,
                       optax.scale_by_learning_rate(schedule))


def adagrad(schedule, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10):
    """torch.optim.Adagrad: param -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(sum g^2) + eps)."""
    decayed = lambda count: schedule(count) / (1 + count * lr_decay)  # noqa: E731
    return optax.chain(*_l2(weight_decay), scale_by_torch_adagrad(eps, initial_accumulator_value),
                       optax.scale_by_learning_rate(decayed if lr_decay else schedule))


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optax twin of the torch optimizer + scheduler that `config` names."""
    schedule = lr_schedule(config, steps_per_epoch)
    c = config
    if c.optimizer == "sgd":
        return sgd(schedule, c.momentum, c.dampening, c.nesterov, c.weight_decay)
    if c.optimizer == "adam":
        return adam(schedule, c.betas, c.eps, c.weight_decay, c.amsgrad)
    if c.optimizer == "adamw":
        return adamw(schedule, c.betas, c.eps, c.weight_decay, c.amsgrad)
    if c.optimizer == "rmsprop":
        return rmsprop(schedule, c.alpha, c.eps, c.weight_decay, c.momentum, c.centered)
    if c.optimizer == "adagrad":
        return adagrad(schedule, c.lr_decay, c.weight_decay, c.initial_accumulator_value, c.eps)
    raise ValueError(f"unknown optimizer {c.optimizer!r}")
