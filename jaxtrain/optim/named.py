"""The optimizers `jaxtrain train` names, as torch.optim rules (rules.py) with a Config's schedule.

make_optimizer builds each from torch's class name and torch's argument names, and the aliases
below are the same for code that writes optax chains; so the built-in optimizers are instances of
the general mechanism `from_torch` uses for a user's own torch optimizer.
"""

from __future__ import annotations

from typing import Callable

import optax

from jaxtrain.flax_model import leaves_by_path, replace_leaves
from jaxtrain.optim.clip import clip_grad_norm
from jaxtrain.optim.rules import transform
from jaxtrain.optim.schedules import for_config


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


TORCH_CLASS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "adagrad": "Adagrad",
               "adamax": "Adamax", "nadam": "NAdam", "radam": "RAdam", "adadelta": "Adadelta", "rprop": "Rprop",
               "asgd": "ASGD", "adafactor": "Adafactor"}


def no_decay_labels(kinds) -> Callable:
    """params -> the same tree of "decay"/"no_decay": biases (leaves named bias) and/or every leaf of a
    normalisation layer (a module with a `scale`), as torchref's --no-decay-on groups them."""

    def labels(params):
        paths = leaves_by_path(params)
        norms = {p.rsplit(".", 1)[0] for p in paths if p.rsplit(".", 1)[-1] == "scale"}

        def label(path):
            module, leaf = path.rsplit(".", 1) if "." in path else ("", path)
            skip = ("bias" in kinds and leaf == "bias") or ("norm" in kinds and module in norms)
            return "no_decay" if skip else "decay"

        return replace_leaves(params, {p: label(p) for p in paths})

    return labels


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optax twin of what `torchref train` builds from the same flags: the torch optimizer's rule with
    the scheduler's values (schedules.for_config), the --no-decay-on groups, clip_grad_norm_ before the
    step, and --accumulate batches per step (optax.MultiSteps, summing in the run's dtype).
    `steps_per_epoch`: batches per epoch."""
    name = TORCH_CLASS.get(config.optimizer)
    if name is None:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    hyper = {"lr": config.lr, **config.torch_optimizer_kwargs(), **for_config(config, steps_per_epoch)}
    tx = transform(name, **hyper)
    if config.no_decay_on:
        tx = optax.multi_transform({"decay": tx, "no_decay": transform(name, **{**hyper, "weight_decay": 0.0})},
                                   no_decay_labels(config.no_decay_on))
    if config.clip_grad_norm is not None:
        tx = optax.chain(clip_grad_norm(config.clip_grad_norm), tx)
    if config.accumulate > 1:
        tx = optax.MultiSteps(tx, config.accumulate, accumulator_dtype=config.dtype).gradient_transformation()
    return tx
