"""`from_torch`: a live torch optimizer (and scheduler, and the loop's clipping) -> one optax transformation.

The torch objects are read, never stepped: each param group becomes the rule of its optimizer's
class (rules.py) with that group's hyperparameters, the scheduler is tabulated on a copy (or held in
the state for ReduceLROnPlateau, schedules.py), and the groups are put together with
`optax.multi_transform` over a flat `{name: array}` dict keyed by `model.named_parameters()`.
"""

from __future__ import annotations

import math

import optax

from jaxtrain.errors import ConfigError, first_line
from jaxtrain.optim import clip, rules, schedules

NOT_SUPPORTED = {
    "LBFGS": "it re-evaluates the loss through a closure several times per step; an optax twin needs a "
             "line search of its own (optax.lbfgs has different defaults)",
    "SparseAdam": "it updates sparse gradients (nn.Embedding(sparse=True)); JAX's gradients are dense",
}
# group entries that choose an implementation, not the math
IMPLEMENTATION = ("foreach", "fused", "differentiable", "capturable")


def torch_class(optimizer) -> str:
    """The torch.optim class whose rule `optimizer` follows; a subclass with its own step() has none."""
    import torch

    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"from_torch needs a torch.optim optimizer, got {type(optimizer).__name__}")
    for cls in type(optimizer).__mro__:
        if cls.__module__.startswith("torch.optim") and cls.__name__ in NOT_SUPPORTED:
            raise ConfigError(f"torch.optim.{cls.__name__} has no optax twin: {NOT_SUPPORTED[cls.__name__]}")
        if cls.__module__.startswith("torch.optim") and cls.__name__ in rules.RULES:
            if type(optimizer).step is not cls.step:
                raise ConfigError(f"{type(optimizer).__name__} overrides step() of torch.optim.{cls.__name__}: "
                                  "its update rule is its own, and from_torch knows torch's only")
            return cls.__name__
    raise ConfigError(f"{type(optimizer).__name__} is not a torch.optim optimizer from_torch knows "
                      f"(it knows {', '.join(sorted(rules.RULES))})")


def _group_hyper(optimizer, group) -> dict:
    hyper = {}
    for key in optimizer.defaults:
        if key in group and key not in IMPLEMENTATION:
            value = group[key]
            hyper[key] = float(value) if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value
    return hyper


def _schedules(optimizer, scheduler, interval, steps_per_epoch, steps) -> list[dict]:
    """Per group, {hyperparameter: schedule or Held} for what the scheduler changes."""
    import torch

    if scheduler is None:
        return [{} for _ in optimizer.param_groups]
    if getattr(scheduler, "optimizer", None) is not optimizer:
        raise ConfigError("the scheduler steps another optimizer than the one given to from_torch")
    if interval not in ("epoch", "step"):
        raise ConfigError(f"interval must be 'epoch' or 'step', got {interval!r}")
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if interval != "epoch":
            raise ConfigError("ReduceLROnPlateau steps with a metric once per epoch: interval='epoch'")
        return [{"lr": schedules.plateau(scheduler, i)} for i in range(len(optimizer.param_groups))]
    if interval == "epoch" and not steps_per_epoch:
        raise ConfigError("interval='epoch' needs steps_per_epoch (optimizer steps in one epoch)")
    if steps is None or steps < 1:
        raise ConfigError("a scheduler needs steps=, the number of optimizer steps to tabulate it for")
    per = steps_per_epoch if interval == "epoch" else 1
    try:
        tables = schedules.tabulate(optimizer, scheduler, math.ceil(steps / per))
    except Exception as e:  # the user's scheduler (or their lr_lambda) failed on a copy
        raise ConfigError(f"stepping a copy of {type(scheduler).__name__} failed: {type(e).__name__}: {first_line(e)}") from None
    return [{key: schedules.lookup(values, per) for key, values in table.items()} for table in tables]


class TorchTwin(optax.GradientTransformation):
    """What `from_torch` returns: an optax transformation over `{torch name: array}` that keeps its
    parts, so that `retarget` can carry it onto another tree of the same tensors (a Flax port's)."""

    rule: str
    parts: dict


def _assemble(transforms: dict, labels, no_grad, clips: list) -> optax.GradientTransformation:
    chain = [optax.masked(optax.set_to_zero(), no_grad)] if no_grad is not None else []
    return optax.chain(*chain, *clips, optax.multi_transform(transforms, labels))


def retarget(twin: TorchTwin, relabel) -> optax.GradientTransformation:
    """`twin` acting on another tree: `relabel({torch name: value}, default)` gives a function of that
    tree's params -> the same tree with each leaf's value (its torch tensor's; `default` for leaves
    no torch tensor names)."""
    p = twin.parts
    no_grad = relabel(p["no_grad"], False) if any(p["no_grad"].values()) else None
    return _assemble(p["transforms"], relabel(p["labels"], "untrained"), no_grad, p["clips"])


def from_torch(optimizer, scheduler=None, *, model, interval: str = "epoch", steps_per_epoch: int | None = None,
               steps: int | None = None, clip_grad_norm: float | None = None, norm_type: float = 2.0,
               clip_grad_value: float | None = None) -> TorchTwin:
    """The optax transformation that does what `optimizer` (and `scheduler`) do to `model`'s parameters.

    It acts on `{name: array}` keyed by `model.named_parameters()`; parameters in no param group are
    left as they are, and the gradients of those with requires_grad=False are left out of clipping
    (torch has none for them). Clipping comes first, as a loop clips between backward() and step():
    clip_grad_norm_ (over all gradients, norm_type, torch's + 1e-6), then clip_grad_value_.
    `interval`: when the loop calls scheduler.step(), after each "epoch" (steps_per_epoch optimizer
    steps) or each "step"; the schedule is tabulated for `steps` optimizer steps and holds its last
    value after them. ReduceLROnPlateau: call `plateau_step(opt_state, metric)` once per epoch.
    """
    name = torch_class(optimizer)
    if any(float(s["step"]) > 0 if "step" in s else s for s in optimizer.state.values()):
        raise ConfigError("the optimizer has already stepped; from_torch reproduces one from its first step")
    names = {id(p): n for n, p in model.named_parameters()}
    labels = {n: "untrained" for n in names.values()}
    transforms = {"untrained": optax.set_to_zero()}
    for i, (group, scheduled) in enumerate(zip(optimizer.param_groups,
                                               _schedules(optimizer, scheduler, interval, steps_per_epoch, steps))):
        for p in group["params"]:
            if id(p) not in names:
                raise ConfigError(f"param_groups[{i}] holds a tensor of shape {tuple(p.shape)} that is not among "
                                  "model.named_parameters()")
            if p.is_complex():
                raise ConfigError(f"{names[id(p)]} is complex; from_torch knows real parameters only")
            labels[names[id(p)]] = f"group {i}"
        transforms[f"group {i}"] = rules.transform(name, **{**_group_hyper(optimizer, group), **scheduled})
    no_grad = {n: not p.requires_grad for n, p in model.named_parameters()}
    clips = []
    if clip_grad_norm is not None:
        clips.append(clip.clip_grad_norm(clip_grad_norm, norm_type))
    if clip_grad_value is not None:
        clips.append(clip.clip_grad_value(clip_grad_value))
    tx = _assemble(transforms, labels, no_grad if any(no_grad.values()) else None, clips)
    twin = TorchTwin(tx.init, tx.update)
    twin.rule, twin.parts = name, {"transforms": transforms, "labels": labels, "no_grad": no_grad, "clips": clips}
    return twin
