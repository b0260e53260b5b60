"""The optimizers `jaxtrain train` names, as torch.optim rules (rules.py) with a Config's schedule.

Each alias is torch's class with torch's argument names, so the built-in optimizers are instances
of the general mechanism `from_torch` uses for a user's own torch optimizer.
"""

from __future__ import annotations

import optax

from jaxtrain.optim.rules import transform
from jaxtrain.optim.schedules import lr_schedule


def sgd(schedule, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD."""
    return transform("SGD", lr=schedule, momentum=momentum, dampening=dampening, nesterov=nesterov,
                     weight_decay=weight_decay)


def adam(schedule, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
    """torch.optim.Adam (weight_decay is L2 on the gradient)."""
    return transform("Adam", lr=schedule, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


def adamw(schedule, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
    """torch.optim.AdamW: param *= 1 - lr * weight_decay (decoupled, scheduled lr), then Adam."""
    return transform("AdamW", lr=schedule, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


def rmsprop(schedule, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
    """torch.optim.RMSprop: buf = momentum * buf + g / (sqrt(v) + eps); param -= lr * buf."""
    return transform("RMSprop", lr=schedule, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                     centered=centered)


def adagrad(schedule, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10):
    """torch.optim.Adagrad: param -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(sum g^2) + eps)."""
    return transform("Adagrad", lr=schedule, lr_decay=lr_decay, weight_decay=weight_decay,
                     initial_accumulator_value=initial_accumulator_value, eps=eps)


ALIASES = {"sgd": sgd, "adam": adam, "adamw": adamw, "rmsprop": rmsprop, "adagrad": adagrad}


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optax twin of the torch optimizer + scheduler that `config` names."""
    if config.optimizer not in ALIASES:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    kwargs = {k: v for k, v in config.optimizer_kwargs().items() if k != "lr"}  # the lr comes with the schedule
    return ALIASES[config.optimizer](lr_schedule(config, steps_per_epoch), **kwargs)
