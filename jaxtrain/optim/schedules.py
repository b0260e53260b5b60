"""Learning-rate schedules: the ones a Config names, torch schedulers read off, and ReduceLROnPlateau.

Three ways a torch scheduler becomes a schedule of the optax update count:

- `tabulate(optimizer, scheduler, ...)`: any torch scheduler a user built (LambdaLR with their own
  function, SequentialLR, ChainedScheduler, OneCycleLR with momentum cycling, ...) is stepped on a
  copy, never on the user's object, and every group's lr (and momentum or beta1, where the
  scheduler cycles them) is recorded after each step. The schedule looks the value up by update
  count: count // steps_per_epoch per epoch, count per batch. Exact by construction, quirks
  included, since torch's own code computes every value. The schedulers `jaxtrain train` names
  (`for_config`) are the same mechanism on the scheduler torchref builds from the same flags.
- `plateau(scheduler, group)`: ReduceLROnPlateau depends on a metric, so it cannot be tabulated; its
  lr is held in the optimizer state and `plateau_step(opt_state, metric)` moves it as
  `scheduler.step(metric)` does, once per epoch, after the loop has the epoch's metric.
"""

from __future__ import annotations

import copy
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxtrain.optim.rules import Held

# --------------------------------------------------------------------------- the Config's schedulers


def for_config(config, batches_per_epoch: int) -> dict:
    """{hyperparameter: schedule or Held} of the scheduler `config` names, for a run of config.epochs
    epochs of `batches_per_epoch` batches (config.accumulate batches per optimizer step): torch's own
    scheduler (torchref builds it as `torchref train` does) tabulated on a one-tensor copy. {} without one."""
    if config.scheduler == "none":
        return {}
    import dataclasses

    import torch

    from torchref.optim import make_optimizer, make_scheduler

    optimizer = make_optimizer(dataclasses.replace(config, no_decay_on=()), [torch.nn.Parameter(torch.zeros(1))])
    scheduler = make_scheduler(config, optimizer, batches_per_epoch)
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return {"lr": plateau(scheduler, 0)}
    steps_per_epoch = max(1, batches_per_epoch // config.accumulate)
    per = steps_per_epoch if config.scheduler_interval == "epoch" else 1
    table = tabulate(optimizer, scheduler, math.ceil(config.epochs * steps_per_epoch / per))[0]
    return {key: lookup(values, per) for key, values in table.items()}


def lr_schedule(config, batches_per_epoch: int) -> optax.Schedule:
    """The config's learning rate as a function of the optimizer step count."""
    schedule = for_config(config, batches_per_epoch).get("lr")
    return schedule if callable(schedule) and not isinstance(schedule, Held) else optax.constant_schedule(config.lr)


# --------------------------------------------------------------------------- any torch scheduler

SCHEDULED = ("lr", "momentum", "betas")  # what torch's schedulers write into a param group


def tabulate(optimizer, scheduler, scheduler_steps: int) -> list[dict]:
    """For each param group, {hyperparameter: values after 0, 1, ..., scheduler_steps steps} of the
    ones that change; the user's optimizer and scheduler are copied, not stepped."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    memo = {id(p): p.new_empty(0) for p in params}  # the copy needs no parameter values
    opt, sched = copy.deepcopy((optimizer, scheduler), memo)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": nothing is trained here
        for k in range(scheduler_steps + 1):
            if k:
                sched.step()
            rows.append([{key: _read(g[key]) for key in SCHEDULED if key in g} for g in opt.param_groups])
    tables = []
    for i in range(len(opt.param_groups)):
        values = {key: np.array([row[i][key] for row in rows], np.float64) for key in rows[0][i]}
        tables.append({key: v for key, v in values.items() if not np.all(v == v[0])})
    return tables


def _read(value):
    return [float(v) for v in value] if isinstance(value, (tuple, list)) else float(value)


def lookup(values: np.ndarray, per: int):
    """count -> values[count // per], holding the last value past the table's end."""
    # kept as Python floats: a numpy table traced once in a float32 run came back float32 in a later
    # float64 run of the same transformation (a converted constant reused), rounding the lr by 2e-9
    table, last = tuple(np.asarray(values, np.float64).tolist()), len(values) - 1

    def schedule(count):
        return jnp.asarray(table, jnp.result_type(float))[jnp.minimum(count // per, last)]

    return schedule


# --------------------------------------------------------------------------- ReduceLROnPlateau


@struct.dataclass
class PlateauState:
    lr: jax.Array
    best: jax.Array
    num_bad_epochs: jax.Array
    cooldown_counter: jax.Array
    min_lr: jax.Array
    # the scheduler's settings, static, kept with the state so that plateau_step needs nothing else
    factor: float = struct.field(pytree_node=False)
    patience: int = struct.field(pytree_node=False)
    threshold: float = struct.field(pytree_node=False)
    cooldown: int = struct.field(pytree_node=False)
    eps: float = struct.field(pytree_node=False)
    mode_max: bool = struct.field(pytree_node=False)
    rel: bool = struct.field(pytree_node=False)


def plateau(scheduler, group: int) -> Held:
    """group's lr as ReduceLROnPlateau moves it, held in the optimizer state."""
    s, lr = scheduler, float(scheduler.optimizer.param_groups[group]["lr"])
    scalar = lambda x: jnp.asarray(x, jnp.result_type(float))  # noqa: E731

    def init():
        return PlateauState(scalar(lr), scalar(s.best), jnp.asarray(s.num_bad_epochs), jnp.asarray(s.cooldown_counter),
                            scalar(s.min_lrs[group]), s.factor, s.patience, s.threshold, s.cooldown, s.eps,
                            s.mode == "max", s.threshold_mode == "rel")

    return Held(init, lambda state: state.lr)


def _plateau_step(s: PlateauState, metric) -> PlateauState:
    """ReduceLROnPlateau.step(metric), for one group."""
    a = jnp.asarray(metric, s.best.dtype)
    if s.mode_max:
        better = a > (s.best * (s.threshold + 1.0) if s.rel else s.best + s.threshold)
    else:
        better = a < (s.best * (1.0 - s.threshold) if s.rel else s.best - s.threshold)
    best = jnp.where(better, a, s.best)
    bad = jnp.where(better, 0, s.num_bad_epochs + 1)
    cooling = s.cooldown_counter > 0
    cooldown_counter = jnp.where(cooling, s.cooldown_counter - 1, s.cooldown_counter)
    bad = jnp.where(cooling, 0, bad)
    reduce = bad > s.patience
    new_lr = jnp.maximum(s.lr * s.factor, s.min_lr)
    lr = jnp.where(reduce & (s.lr - new_lr > s.eps), new_lr, s.lr)
    return s.replace(lr=lr, best=best, num_bad_epochs=jnp.where(reduce, 0, bad),
                      cooldown_counter=jnp.where(reduce, s.cooldown, cooldown_counter))


def plateau_step(opt_state, metric):
    """The optimizer state after `scheduler.step(metric)` of every ReduceLROnPlateau in it (once per
    epoch, with the metric the torch loop passes, e.g. the epoch's test loss). Without one: unchanged."""
    is_plateau = lambda x: isinstance(x, PlateauState)  # noqa: E731
    return jax.tree.map(lambda x: _plateau_step(x, metric) if is_plateau(x) else x, opt_state, is_leaf=is_plateau)


def has_plateau(opt_state) -> bool:
    is_plateau = lambda x: isinstance(x, PlateauState)  # noqa: E731
    return any(is_plateau(x) for x in jax.tree.leaves(opt_state, is_leaf=is_plateau))
