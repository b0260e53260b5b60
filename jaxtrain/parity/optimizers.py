"""The training loop check_port runs on both sides: optimizers, schedulers, clipping, accumulation.

`optimizer=` takes three forms:
- a torch.optim name with torch's keyword arguments (and `scheduler=` one of jaxtrain's names):
  torchref builds torch's objects, jaxtrain.optim their twins;
- `torch_factory` alone, `params -> optimizer` or `-> (optimizer, scheduler)`: the JAX side is
  `jaxtrain.optim.from_torch` of what the factory returns, carried onto the port's tree;
- `(torch_factory, tx)`: tx is the user's optax transformation over the port's params (or a
  `from_torch` twin over torch names, carried onto the port's tree likewise).

The loop around them (torchref.train.Loop on the torch side): `accumulate` micro-batches per
optimizer step (optax.MultiSteps on the JAX side), `torch_step(model, optimizer)` after backward,
check_port's clipping arguments (clip_grad_norm_ / clip_grad_value_ in torch's loop, from_torch's
twins in front of a JAX side jaxtrain builds), and the scheduler stepped per epoch or per batch.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable

import numpy as np

from jaxtrain.errors import ConfigError, first_line
from jaxtrain.flax_model import leaves_by_path

# rules whose update depends on a tensor's layout (they factor or orthogonalise a matrix), not only its elements
LAYOUT_BOUND = ("Adafactor", "Muon")


@dataclasses.dataclass
class Optimizers:
    """Both sides' optimizer for one check. `make_torch(config, model, batches_per_epoch) -> (optimizer, scheduler)`,
    `make_tx(config, steps_per_epoch, steps, mapping, params, torch_model) -> optax`, counting optimizer steps
    (an accumulation's micro-batches make one)."""

    make_torch: Callable
    make_tx: Callable
    interval: str = "epoch"
    accumulate: int = 1
    torch_step: Callable | None = None
    clip: dict = dataclasses.field(default_factory=dict)
    twin_of_factory: bool = False  # the JAX side is from_torch of the factory's optimizer
    users_tx: bool = False  # the JAX side is the user's own optax transformation

    def probe(self, config, torch_model, batches_per_epoch: int) -> None:
        """Make torch's optimizer once on a copy, before anything trains: a factory that fails, returns
        something else, or makes an optimizer from_torch cannot twin is reported now, in one line."""
        from jaxtrain.optim.from_torch import torch_class

        optimizer, _ = self.make_torch(config, copy.deepcopy(torch_model), batches_per_epoch)
        if self.twin_of_factory:
            torch_class(optimizer)

    def torch_loop(self, module, scheduler):
        """torchref's Loop for a run training `module` (the user's nn.Module) with `scheduler`."""
        from torchref.train import Loop

        steps = [self.torch_step] if self.torch_step is not None else []
        steps += [_torch_clip(self.clip)] if self.clip else []
        torch_step = (lambda model, optimizer: [f(module, optimizer) for f in steps]) if steps else None
        return Loop(self.accumulate, torch_step, scheduler if self.interval == "step" else None)


def _torch_clip(clip: dict) -> Callable:
    def clip_grads(model, optimizer):
        import torch

        if clip.get("clip_grad_norm") is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip["clip_grad_norm"], clip.get("norm_type", 2.0))
        if clip.get("clip_grad_value") is not None:
            torch.nn.utils.clip_grad_value_(model.parameters(), clip["clip_grad_value"])

    return clip_grads


def _jax_clip(clip: dict) -> list:
    from jaxtrain import optim

    out = []
    if clip.get("clip_grad_norm") is not None:
        out.append(optim.clip_grad_norm(clip["clip_grad_norm"], clip.get("norm_type", 2.0)))
    if clip.get("clip_grad_value") is not None:
        out.append(optim.clip_grad_value(clip["clip_grad_value"]))
    return out


def _pair(made, what: str):
    """A factory's return value -> (optimizer, scheduler or None)."""
    import torch

    optimizer, scheduler = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"{what} must return a torch.optim optimizer or an (optimizer, scheduler) pair, "
                          f"got {type(made).__name__}")
    return optimizer, scheduler


def build(optimizer, interval: str, accumulate, torch_step, clip: dict, norm_type=None) -> Optimizers:
    """check_port's optimizer arguments -> Optimizers (bad ones: one ConfigError)."""
    if interval not in ("epoch", "step"):
        raise ConfigError(f"scheduler_interval must be 'epoch' or 'step', got {interval!r}")
    if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
        raise ConfigError(f"accumulate must be a whole number of micro-batches >= 1, got {accumulate!r}")
    if torch_step is not None and not callable(torch_step):
        raise ConfigError("torch_step must be a function (model, optimizer) -> None, run after backward()")
    for key in ("clip_grad_norm", "clip_grad_value"):
        if clip.get(key) is not None and not clip[key] > 0:
            raise ConfigError(f"{key} must be > 0, got {clip[key]!r}")
    clip = {k: clip[k] for k in ("clip_grad_norm", "clip_grad_value") if clip.get(k) is not None}
    if "clip_grad_norm" in clip:
        clip["norm_type"] = clip.get("norm_type", 2.0) if norm_type is None else norm_type
    common = dict(interval=interval, accumulate=accumulate, torch_step=torch_step, clip=clip)
    if isinstance(optimizer, str):
        return Optimizers(_named_torch, _named_tx(clip), **common)
    if callable(optimizer):
        return Optimizers(_factory_torch(optimizer), _from_torch_tx(optimizer, interval, clip), **common,
                          twin_of_factory=True)
    try:
        factory, tx = optimizer
    except (TypeError, ValueError):
        raise ConfigError("optimizer must be a torch.optim name, a factory params -> torch optimizer "
                          "(or (optimizer, scheduler)), or a (factory, optax transformation) pair") from None
    if not callable(factory) or not hasattr(tx, "update"):
        raise ConfigError("optimizer=(factory, tx): factory(params) makes the torch optimizer, tx is an optax "
                          "GradientTransformation")
    return Optimizers(_factory_torch(factory), _given_tx(tx), **common, users_tx=True)


def _named_torch(config, module, batches_per_epoch=1):
    from torchref.optim import make_optimizer, make_scheduler

    try:
        optimizer = make_optimizer(config, module)
        return optimizer, make_scheduler(config, optimizer, batches_per_epoch)
    except (ValueError, TypeError) as e:  # what torch rejects and the config's checks did not
        raise ConfigError(f"torch.optim rejects the settings: {first_line(e)}") from None


def _named_tx(clip: dict):
    def make_tx(config, steps_per_epoch, steps, mapping, params, torch_model):
        import optax

        from jaxtrain.optim import make_optimizer

        # counting optimizer steps: the accumulation and the clipping are the harness's (Optimizers)
        plain = dataclasses.replace(config, accumulate=1, clip_grad_norm=None)
        return optax.chain(*_jax_clip(clip), make_optimizer(plain, steps_per_epoch))

    return make_tx


def _factory_torch(factory):
    def make_torch(config, module, batches_per_epoch=1):
        try:
            made = factory(module.parameters())
        except Exception as e:
            raise ConfigError(f"the optimizer factory fails: {type(e).__name__}: {first_line(e)}") from None
        return _pair(made, "the optimizer factory")

    return make_torch


def _from_torch_tx(factory, interval: str, clip: dict):
    def make_tx(config, steps_per_epoch, steps, mapping, params, torch_model):
        from jaxtrain.optim import from_torch

        model = copy.deepcopy(torch_model)
        optimizer, scheduler = _pair(factory(model.parameters()), "the optimizer factory")
        twin = from_torch(optimizer, scheduler, model=model, interval=interval, steps_per_epoch=steps_per_epoch,
                          steps=steps, **{k: v for k, v in clip.items() if v is not None})
        return on_port(twin, mapping, params, model)

    return make_tx


def _given_tx(tx):
    from jaxtrain.optim.from_torch import TorchTwin

    def make_tx(config, steps_per_epoch, steps, mapping, params, torch_model):
        return on_port(tx, mapping, params, torch_model) if isinstance(tx, TorchTwin) else tx

    return make_tx


def on_port(twin, mapping, params, torch_model):
    """A from_torch twin over torch names, acting on the port's params tree through the mapping: each
    Flax leaf takes its torch tensor's group (layout-free rules act element by element, so a transposed
    or split tensor is updated alike)."""
    from jaxtrain.flax_model import replace_leaves
    from jaxtrain.optim.from_torch import retarget

    shapes = {path: np.shape(leaf) for path, leaf in leaves_by_path(params).items()}
    leaf_of: dict[str, list] = {}
    for move, torch_names, flax_paths, buffer in mapping.moves:
        if buffer:
            continue
        for t in torch_names.values():
            leaf_of.setdefault(t, []).extend(flax_paths.values())
    if twin.rule in LAYOUT_BOUND:
        _check_layouts(twin.rule, leaf_of, shapes, {n: tuple(p.shape) for n, p in torch_model.named_parameters()})

    def relabel(by_torch_name: dict, default):
        by_path: dict = {}
        for name, value in by_torch_name.items():
            for path in leaf_of.get(name, []):
                if by_path.setdefault(path, value) != value:
                    raise ConfigError(f"the port keeps {name} in {path} with a tensor of another param group; "
                                      "from_torch cannot give one leaf two groups' settings")
        return lambda tree: replace_leaves(tree, {p: by_path.get(p, default) for p in shapes})

    return retarget(twin, relabel)


def _check_layouts(rule: str, leaf_of: dict, shapes: dict, torch_shapes: dict) -> None:
    for name, paths in leaf_of.items():
        for path in paths:
            flax_shape = shapes.get(path)
            torch_shape = torch_shapes.get(name, flax_shape)
            if flax_shape is None or len(flax_shape) < 2:
                continue
            if tuple(flax_shape) != tuple(torch_shape) and not (
                    len(flax_shape) == 2 and tuple(flax_shape) == tuple(torch_shape)[::-1]):
                raise ConfigError(f"torch.optim.{rule} works on a tensor's matrix layout, and the port stores {name} "
                                  f"{tuple(torch_shape)} as {path} {tuple(flax_shape)}: their updates differ by "
                                  "construction")
