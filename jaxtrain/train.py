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
- Every batch has the same shape: the last partial batch is padded and masked,
  so neither the step nor the epoch is ever recompiled.
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
from jaxtrain.losses import make_loss
from jaxtrain.models import make_model
from jaxtrain.optim import make_optimizer


class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, opt_state, apply_fn, tx) plus what the tutorial's
    models and loss need: BatchNorm statistics, the dropout RNG, the loss function."""

    batch_stats: Any = None
    rng: jax.Array | None = None
    loss_fn: Callable = struct.field(pytree_node=False, default=None)


def configure_jax(dtype: str = "float32") -> None:
    """float64 needs x64 mode; float32 matmuls run at full precision (no TF32), as torch's do."""
    jax.config.update("jax_enable_x64", dtype == "float64")
    jax.config.update("jax_default_matmul_precision", "highest")


def device_kind() -> str:
    backend = jax.default_backend()
    return backend if backend in ("cpu", "gpu", "tpu") else ("gpu" if backend in ("cuda", "rocm") else backend)


def create_state(config, steps_per_epoch: int, params=None, batch_stats=None) -> TrainState:
    """Initialise the model (or take given weights), the optimizer and the RNG."""
    model = make_model(config)
    dtype = jnp.dtype(config.dtype)
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    if params is None:
        variables = model.init(init_key, jnp.zeros((1, 28 * 28), jnp.float32), train=False)
        params, batch_stats = variables["params"], variables.get("batch_stats", {})
    cast = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)  # noqa: E731
    return TrainState.create(
        apply_fn=model.apply, params=cast(params), tx=make_optimizer(config, steps_per_epoch),
        batch_stats=cast(batch_stats or {}), rng=dropout_key, loss_fn=make_loss(config))


def _variables(state: TrainState, params) -> dict:
    return {"params": params, "batch_stats": state.batch_stats} if state.batch_stats else {"params": params}


def forward_and_grad(state: TrainState, batch: dict):
    """model.train(); pred = model(X); loss = loss_fn(pred, y); loss.backward()."""

    def loss_of(params):
        outputs, mutated = state.apply_fn(
            _variables(state, params), batch["x"], train=True, mask=batch["mask"],
            dropout_masks=batch.get("dropout"), rngs={"dropout": jax.random.fold_in(state.rng, state.step)},
            mutable=["batch_stats"])
        return state.loss_fn(outputs, batch["y"], batch["mask"]), (outputs, mutated.get("batch_stats", {}))

    (loss, (outputs, batch_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    return loss, outputs, batch_stats, grads


def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One step of the tutorial's train_loop: forward, loss, backward, optimizer.step()."""
    loss, _, batch_stats, grads = forward_and_grad(state, batch)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, {"loss": loss}


def eval_step(state: TrainState, batch: dict) -> dict:
    """One batch of the tutorial's test_loop (model.eval(), no gradients): batch-mean loss, #correct."""
    outputs = state.apply_fn(_variables(state, state.params), batch["x"], train=False)
    loss = state.loss_fn(outputs, batch["y"], batch["mask"])
    correct = jnp.sum((jnp.argmax(outputs, axis=-1) == batch["y"]) * batch["mask"])
    return {"loss": loss, "correct": correct}


def _gather(images, labels, index, mask) -> dict:
    return {"x": images[index], "y": labels[index], "mask": mask.astype(images.dtype)}


def train_epoch(state: TrainState, images, labels, index, mask, dropout=None) -> tuple[TrainState, jax.Array]:
    """All steps of one epoch in a `lax.scan`; returns every step's loss.

    `dropout` (optional, one (steps, batch, features) keep-mask array per dropout
    layer) replaces the random draws: the parity check injects the masks torch uses."""

    def body(state, step_inputs):
        index_row, mask_row, dropout_row = step_inputs
        batch = _gather(images, labels, index_row, mask_row)
        if dropout_row is not None:
            batch["dropout"] = dropout_row
        state, metrics = train_step(state, batch)
        return state, metrics["loss"]

    return jax.lax.scan(body, state, (index, mask, dropout))


def eval_epoch(state: TrainState, images, labels, index, mask) -> dict:
    """eval_step over every test batch in a `lax.scan`; per-batch loss and #correct."""
    return jax.lax.map(lambda batch_index: eval_step(state, _gather(images, labels, *batch_index)), (index, mask))


class Trainer:
    """Keeps the data on the device, compiles the epoch functions once, runs epochs.

    `compile_seconds` is the time spent tracing and compiling (ahead of time, so
    it is not mixed into the first epoch's time).
    """

    def __init__(self, config, train: data_lib.Split, test: data_lib.Split, state: TrainState | None = None,
                 precompile: bool = True):
        self.config = config
        dtype = jnp.dtype(config.dtype)
        self.train_split, self.test_split = train, test
        self.train_images = jnp.asarray(train.images.reshape(len(train), -1), dtype)
        self.train_labels = jnp.asarray(train.labels)
        self.test_images = jnp.asarray(test.images.reshape(len(test), -1), dtype)
        self.test_labels = jnp.asarray(test.labels)
        self.steps_per_epoch = -(-len(train) // config.batch_size)
        self.state = state if state is not None else create_state(config, self.steps_per_epoch)
        test_batches = data_lib.epoch_batches(len(test), config.batch_size)
        self.test_index, self.test_mask = jnp.asarray(test_batches.index), jnp.asarray(test_batches.mask)
        self.test_sizes = test_batches.sizes

        self._any_epoch = jax.jit(train_epoch, donate_argnums=0)  # compiled per input shape, on first use
        self._train_epoch, self._eval_epoch = self._any_epoch, jax.jit(eval_epoch)
        self.compile_seconds = 0.0
        if precompile:  # ahead of time, so compilation is not mixed into the first epoch's time
            start = time.perf_counter()
            probe = data_lib.epoch_batches(len(train), config.batch_size)
            self._train_epoch = self._train_epoch.lower(
                self.state, self.train_images, self.train_labels, probe.index, probe.mask).compile()
            self._eval_epoch = self._eval_epoch.lower(
                self.state, self.test_images, self.test_labels, self.test_index, self.test_mask).compile()
            self.compile_seconds = time.perf_counter() - start

    def batches(self, epoch: int) -> data_lib.EpochBatches:
        c = self.config
        return data_lib.epoch_batches(len(self.train_split), c.batch_size, c.shuffle, c.seed, epoch)

    def train_one_epoch(self, epoch: int, num_steps: int | None = None, dropout=None) -> np.ndarray:
        """Run epoch `epoch` (0-based), or its first `num_steps` steps; returns the loss of every
        step, as float64 numpy. `dropout`: injected keep-masks (see `train_epoch`)."""
        batches = self.batches(epoch)
        if dropout is None and num_steps in (None, len(batches)):
            self.state, losses = self._train_epoch(
                self.state, self.train_images, self.train_labels, batches.index, batches.mask)
        else:
            self.state, losses = self._any_epoch(self.state, self.train_images, self.train_labels,
                                                 batches.index[:num_steps], batches.mask[:num_steps], dropout)
        return np.asarray(losses, dtype=np.float64)

    def evaluate(self) -> tuple[float, float]:
        """(avg test loss as the tutorial computes it: mean of batch means, accuracy in [0, 1])."""
        out = jax.device_get(self._eval_epoch(
            self.state, self.test_images, self.test_labels, self.test_index, self.test_mask))
        return float(np.mean(out["loss"], dtype=np.float64)), float(np.sum(out["correct"])) / len(self.test_split)


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
        seconds = time.perf_counter() - start
        append_epoch(record, epoch, losses, test_loss, accuracy, seconds)
        report("epoch_end", epoch=epoch, test_loss=test_loss, accuracy=accuracy,
               train_seconds=train_seconds, seconds=seconds)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, trainer.state, record)
    report("done", record=record, compile_seconds=trainer.compile_seconds)
    return record
