"""The pure training math: state, `train_step`, `eval_step`, and whole epochs on device.

Read this file next to `torchref/train.py`: `train_step` is the body of the
tutorial's `train_loop` (forward, loss, backward, optimizer.step()), and
`eval_step` the body of its `test_loop`. Nothing here prints or reads files.

- `train_step(state, batch) -> (state, metrics)` and `eval_step(state, batch) -> metrics`
  are pure functions of a pytree state, compiled once with `jax.jit` (the state
  donated).
- `train_epoch` runs every step of an epoch inside one `lax.scan` over the
  training set kept on the device; the batch order comes in as an index matrix
  from `jaxtrain.data.epoch_batches`, so it is the order torch sees too.
- The last partial batch of an epoch runs as one `train_step` at its own shape
  (compiled once), so it is the batch torch sees, row for row.
- Data parallel is the same program over a mesh (`jaxtrain.distributed`): the
  index matrix is split over the devices, everything else replicated; XLA adds
  the all-reduce. One device is the mesh of one.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from flax.training import train_state

from jaxtrain import data as data_lib
from jaxtrain.distributed import DataParallel
from jaxtrain.flax_model import PureModel, cast_floats, pure_model
from jaxtrain.inputs import is_integer, map_leaves, rows
from jaxtrain.losses import make_loss
from jaxtrain.models import make_model
from jaxtrain.optim import has_plateau, make_optimizer, plateau_step


class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, opt_state, apply_fn, tx) plus the model's buffers
    (BatchNorm statistics: what torch calls buffers), the dropout RNG and the loss function.
    `apply_fn` is a `jaxtrain.flax_model.PureModel`'s `apply`: NNX or linen alike."""

    buffers: Any = None
    rng: jax.Array | None = None
    loss_fn: Callable = struct.field(pytree_node=False, default=None)


def configure_jax(dtype: str = "float32") -> None:
    """float64 needs x64 mode; float32 matmuls run at full precision (no TF32), as torch's do."""
    jax.config.update("jax_enable_x64", dtype == "float64")
    jax.config.update("jax_default_matmul_precision", "highest")


def device_kind() -> str:
    backend = jax.default_backend()
    return backend if backend in ("cpu", "gpu", "tpu") else ("gpu" if backend in ("cuda", "rocm") else backend)


def create_state(config, steps_per_epoch: int, model: PureModel | None = None, params=None, buffers=None,
                 tx=None, loss_fn=None) -> TrainState:
    """The model (jaxtrain's own for the config unless given), its weights (its own unless
    given), the optimizer (from the config unless given), the loss and the dropout RNG."""
    model = model or pure_model(make_model(config))
    dtype = jnp.dtype(config.dtype)
    params = cast_floats(model.params if params is None else params, dtype)
    buffers = cast_floats(model.buffers if buffers is None else buffers, dtype)
    return TrainState.create(
        apply_fn=model.apply, params=params, tx=tx or make_optimizer(config, steps_per_epoch), buffers=buffers,
        rng=jax.random.fold_in(jax.random.key(config.seed), 1), loss_fn=loss_fn or make_loss(config))


def forward_and_grad(state: TrainState, batch: dict, record: bool = False):
    """model.train(); pred = model(X); loss = loss_fn(pred, y); loss.backward().
    With `record`, also every layer's (input, output) in call order (for the parity check)."""
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_of(params, buffers):  # buffers an argument too: NNX mutates them at this trace level
        outputs, buffers, recorded = state.apply_fn(params, buffers, batch["x"], True, batch.get("dropout"), rng,
                                                    record)
        return state.loss_fn(outputs, batch["y"]), (outputs, buffers, recorded)

    (loss, (outputs, buffers, recorded)), grads = jax.value_and_grad(loss_of, has_aux=True)(
        state.params, state.buffers)
    return loss, outputs, buffers, grads, recorded


def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One step of the tutorial's train_loop: forward, loss, backward, optimizer.step()."""
    loss, _, buffers, grads, _ = forward_and_grad(state, batch)
    state = state.apply_gradients(grads=grads, buffers=buffers)
    return state, {"loss": loss}


def eval_step(state: TrainState, batch: dict) -> dict:
    """One batch of the tutorial's test_loop (model.eval(), no gradients): batch-mean loss, #correct
    (for integer class labels; 0 for regression targets)."""
    outputs, _, _ = state.apply_fn(state.params, state.buffers, batch["x"], False)
    loss = state.loss_fn(outputs, batch["y"])
    if jnp.issubdtype(batch["y"].dtype, jnp.integer):
        correct = jnp.sum(jnp.argmax(outputs, axis=-1) == batch["y"])  # every position of sequence targets
    else:
        correct = jnp.zeros((), jnp.int32)
    return {"loss": loss, "correct": correct}


def _gather(inputs, targets, index) -> dict:
    return {"x": rows(inputs, index), "y": targets[index]}


def train_epoch(state: TrainState, inputs, targets, index, dropout=None) -> tuple[TrainState, jax.Array]:
    """Steps over the full batches of an epoch (`index`: one row of sample indices per step)
    in a `lax.scan`; returns every step's loss.

    `dropout` (optional, one (steps, *shape) keep-mask array per dropout call of a step)
    replaces the random draws: the parity check injects the masks torch uses."""

    def body(state, step_inputs):
        index_row, dropout_row = step_inputs
        batch = _gather(inputs, targets, index_row)
        if dropout_row is not None:
            batch["dropout"] = dropout_row
        state, metrics = train_step(state, batch)
        return state, metrics["loss"]

    return jax.lax.scan(body, state, (index, dropout))


def eval_epoch(state: TrainState, inputs, targets, index) -> dict:
    """eval_step over the full test batches in a `lax.map`; per-batch loss and #correct."""
    return jax.lax.map(lambda batch_index: eval_step(state, _gather(inputs, targets, batch_index)), index)


def _stack_masks(per_step: list):
    """Per-step mask tuples -> one stacked array per dropout call; None when there are none."""
    if not per_step or not per_step[0]:
        return None
    return tuple(np.stack(call) for call in zip(*per_step))


class Trainer:
    """Keeps the data on the device, compiles the epoch functions once, runs epochs.

    The full batches of an epoch run in one scanned program; a last partial batch
    (as `DataLoader(drop_last=False)` yields it) runs as one `train_step` at its own
    shape, compiled once too. `compile_seconds` is the time spent tracing and
    compiling (ahead of time, so it is not mixed into the first epoch's time).
    """

    def __init__(self, config, train: data_lib.Split, test: data_lib.Split, state: TrainState | None = None,
                 precompile: bool = True):
        self.config = config
        self.parallel = DataParallel(config.devices, config.batch_size)
        dtype = jnp.dtype(config.dtype)
        self.train_split, self.test_split = train, test
        self.train_x, self.train_y = self.parallel.replicate(_host_arrays(train, dtype))
        self.test_x, self.test_y = self.parallel.replicate(_host_arrays(test, dtype))
        self.steps_per_epoch = data_lib.batches_per_epoch(len(train), config.batch_size)
        self.state = self.parallel.replicate(state if state is not None else create_state(config, self.steps_per_epoch))
        test_plan = data_lib.epoch_batches(len(test), config.batch_size)  # the same every epoch: on the devices once
        self.test_batches = self._split_plan(test_plan, len(test_plan))

        self._epoch = jax.jit(train_epoch, donate_argnums=0)  # compiled per input shape, on first use
        self._step = jax.jit(train_step, donate_argnums=0)
        self._eval_epoch, self._eval_step = jax.jit(eval_epoch), jax.jit(eval_step)
        self.compile_seconds = 0.0
        if precompile:  # ahead of time, so compilation is not mixed into the first epoch's time
            start = time.perf_counter()
            plan = self.batches(0)
            full, last = self._split_plan(plan, len(plan))
            if full is not None:
                self._epoch = self._epoch.lower(self.state, self.train_x, self.train_y, full, None).compile()
            if last is not None:
                self._step = self._step.lower(self.state, _gather(self.train_x, self.train_y, last)).compile()
            full, last = self.test_batches
            if full is not None:
                self._eval_epoch = self._eval_epoch.lower(self.state, self.test_x, self.test_y, full).compile()
            if last is not None:
                self._eval_step = self._eval_step.lower(self.state, _gather(self.test_x, self.test_y, last)).compile()
            self.compile_seconds = time.perf_counter() - start

    def batches(self, epoch: int) -> data_lib.EpochBatches:
        c = self.config
        return data_lib.epoch_batches(len(self.train_split), c.batch_size, c.shuffle, c.seed, epoch)

    def train_one_epoch(self, epoch: int, num_steps: int | None = None, dropout: list | None = None) -> np.ndarray:
        """Run epoch `epoch` (0-based), or its first `num_steps` steps; returns the loss of every
        step, as float64 numpy. `dropout`: injected keep-masks, one tuple per step (see `train_epoch`)."""
        plan = self.batches(epoch)
        num_steps = len(plan) if num_steps is None else num_steps
        full, last = self._split_plan(plan, num_steps)
        losses = []
        if full is not None:
            masks = None if dropout is None else self._shard(_stack_masks(dropout[: full.shape[0]]), axis=1)
            self.state, epoch_losses = self._epoch(self.state, self.train_x, self.train_y, full, masks)
            losses.append(epoch_losses)
        if last is not None:
            batch = _gather(self.train_x, self.train_y, last)
            if dropout is not None and dropout[-1]:
                batch["dropout"] = self._shard(tuple(dropout[-1]), axis=0)
            self.state, metrics = self._step(self.state, batch)
            losses.append(metrics["loss"][None])
        losses = self.parallel.to_host(losses)
        return np.concatenate([np.asarray(x, dtype=np.float64) for x in losses]) if losses else np.zeros(0)

    def evaluate(self) -> tuple[float, float]:
        """(avg test loss as the tutorial computes it: mean of batch means, accuracy in [0, 1]; NaN
        for targets that are not class labels)."""
        full, last = self.test_batches
        losses, correct = [], 0
        if full is not None:
            out = self.parallel.to_host(self._eval_epoch(self.state, self.test_x, self.test_y, full))
            losses += list(out["loss"])
            correct += int(np.sum(out["correct"]))
        if last is not None:
            out = self.parallel.to_host(self._eval_step(self.state, _gather(self.test_x, self.test_y, last)))
            losses.append(out["loss"])
            correct += int(out["correct"])
        positions = self.test_split.labels.size  # samples, or every position of sequence targets
        accuracy = correct / positions if data_lib.is_classification(self.test_split) else float("nan")
        return float(np.mean(np.asarray(losses, dtype=np.float64))), accuracy


    def _shard(self, arrays, axis: int):
        """Host arrays with the batch on `axis`, split over the devices (see jaxtrain.distributed)."""
        return None if arrays is None else tuple(self.parallel.shard_rows(a, axis) for a in arrays)

    def _split_plan(self, plan: data_lib.EpochBatches, num_steps: int):
        """The first `num_steps` batches of a plan on the devices: the full ones (an index matrix,
        each row split over the devices; None if there are none) and the partial last one's
        indices (or None)."""
        full, last = plan.index[:num_steps], None
        if num_steps and plan.sizes[num_steps - 1] < plan.index.shape[1]:
            full, last = plan.index[: num_steps - 1], plan.index[num_steps - 1, : plan.sizes[num_steps - 1]]
        full = self.parallel.shard_rows(full, axis=1) if len(full) else None
        return full, (None if last is None else self.parallel.shard_rows(last, axis=0))


def _host_arrays(split: data_lib.Split, dtype) -> tuple:
    """Float inputs in the run's dtype, integer inputs (token ids, masks) kept as integers, in the
    inputs' structure (an array, tuple or dict); integer class labels kept as integers, float targets cast."""
    targets = split.labels if data_lib.is_classification(split) else split.labels.astype(dtype)
    inputs = map_leaves(lambda a: np.asarray(a) if is_integer(a) else np.asarray(a, dtype), split.images)
    return inputs, np.asarray(targets)


def fit(config, train: data_lib.Split, test: data_lib.Split, report=None, trainer: Trainer | None = None,
        start_epoch: int = 0, record: dict | None = None, on_epoch_end=None) -> dict:
    """The tutorial's `for t in range(epochs): train_loop(...); test_loop(...)`, returning
    the metrics record (jaxtrain.metrics schema). `report` receives progress events;
    `on_epoch_end(epochs_done, state, record)` runs after each epoch (checkpoints, interrupts);
    `start_epoch`/`record` continue a resumed run."""
    from jaxtrain.metrics import append_epoch, check_finite, new_record

    report = report or (lambda event, **kw: None)
    trainer = trainer or Trainer(config, train, test)
    record = record or new_record("jax", config, device_kind())
    report("compiled", seconds=trainer.compile_seconds)
    for epoch in range(start_epoch, config.epochs):
        report("epoch_start", epoch=epoch)
        start = time.perf_counter()
        losses = trainer.train_one_epoch(epoch)
        train_seconds = time.perf_counter() - start
        if config.nan_guard:
            check_finite(losses, epoch, len(record["steps"]))
        report("train_losses", epoch=epoch, losses=losses, batches=trainer.batches(epoch), size=len(train))
        test_loss, accuracy = trainer.evaluate()
        if has_plateau(trainer.state.opt_state):  # ReduceLROnPlateau: scheduler.step(test_loss)
            trainer.state = trainer.state.replace(opt_state=plateau_step(trainer.state.opt_state, test_loss))
        seconds = time.perf_counter() - start
        append_epoch(record, epoch, losses, test_loss, accuracy, seconds)
        report("epoch_end", epoch=epoch, test_loss=test_loss, accuracy=accuracy,
               train_seconds=train_seconds, seconds=seconds)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, trainer.state, record)
    report("done", record=record, compile_seconds=trainer.compile_seconds)
    return record
