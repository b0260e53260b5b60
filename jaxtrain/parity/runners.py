"""The runs a parity check compares: JAX and torch, each in float32 and float64.

Every run starts from the same weights (torch's seeded init, in float32, cast
up for float64) and takes the same batches from the shared plan. Dropout masks
cannot come from the two RNGs alike, so they are drawn once in numpy from
(seed, step) and injected into both sides.

Each side trains through the code its users run:
- JAX: `jaxtrain.train.Trainer`'s scanned epoch (`lax.scan` over `train_step`),
  with the dropout masks passed in as scan inputs;
- torch: `torchref.train.train_loop` / `test_loop` over the DataLoader, with the
  masks put in place of `nn.Dropout`'s draw by forward hooks.

For localisation both also replay single steps (`capture_step`), returning every
stage of the step: forward (logits), loss, grads, updates, buffers, and the
parameters after it, keyed by torch's names.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from jaxtrain import data as data_lib
from jaxtrain.metrics import append_epoch, new_record

BUFFER_SUFFIXES = (".running_mean", ".running_var")


@dataclasses.dataclass(frozen=True)
class JaxPort:
    """What the JAX side trains when it is not jaxtrain's own port of the config.

    The verdict corpus plants porting bugs this way: a Flax module with the
    interface of `jaxtrain.models` (same parameter names), an optimizer factory
    `(config, steps_per_epoch) -> optax.GradientTransformation`, or a loss
    `(outputs, labels, weight) -> scalar`.
    """

    model: Any = None
    make_tx: Callable | None = None
    loss_fn: Callable | None = None


def dropout_masks(config, step: int, batch_size: int) -> list[np.ndarray]:
    """Keep-masks for one step (0-based), drawn from (seed, step): both frameworks apply these."""
    from jaxtrain.models import dropout_shapes

    rng = np.random.default_rng([config.seed, 7919, step])
    return [rng.random(shape) >= config.dropout for shape in dropout_shapes(config, batch_size)]


def padded_dropout_masks(config, plan: data_lib.EpochBatches, b: int, step: int) -> list[np.ndarray]:
    """Step `step`'s masks for batch b of `plan`, padded to the full batch (padded rows kept)."""
    pad = config.batch_size - int(plan.sizes[b])
    return [np.pad(m, ((0, pad), (0, 0)), constant_values=True)
            for m in dropout_masks(config, step, int(plan.sizes[b]))]


def epoch_dropout_masks(config, plan: data_lib.EpochBatches, num_steps: int, first_step: int):
    """The masks of `num_steps` steps, one (steps, batch, features) array per dropout layer;
    None for a model without dropout."""
    per_step = [padded_dropout_masks(config, plan, b, first_step + b) for b in range(num_steps)]
    if not per_step or not per_step[0]:
        return None
    return tuple(np.stack(layer) for layer in zip(*per_step))


def _named_buffers(params, batch_stats) -> dict:
    """The running statistics of Flax (params, batch_stats), under torch's buffer names."""
    from jaxtrain.transfer import flax_to_torch

    named = flax_to_torch(params, batch_stats)
    return {k: np.asarray(v, np.float64) for k, v in named.items() if k.endswith(BUFFER_SUFFIXES)}


def initial_weights(config) -> dict:
    """torch's seeded init (float32, as `torchref train` does), as numpy."""
    from torchref.models import make_model

    model = make_model(dataclasses.replace(config, dtype="float32"))
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def _cast(weights: dict, dtype: str) -> dict:
    return {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in weights.items()}


class JaxRunner:
    """jaxtrain's Trainer in one dtype."""

    framework = "jax"

    def __init__(self, config, weights, train: data_lib.Split, test: data_lib.Split, port: JaxPort):
        import jax

        from jaxtrain import train as train_lib
        from jaxtrain.transfer import torch_to_flax

        self.config, self.train_split, self.jax = config, train, jax
        train_lib.configure_jax(config.dtype)
        params, stats = torch_to_flax(_cast(weights, config.dtype))
        steps_per_epoch = -(-len(train) // config.batch_size)
        state = train_lib.create_state(config, steps_per_epoch, params=params, batch_stats=stats)
        if port.model is not None:
            state = state.replace(apply_fn=port.model.apply)
        if port.loss_fn is not None:
            state = state.replace(loss_fn=port.loss_fn)
        if port.make_tx is not None:
            tx = port.make_tx(config, steps_per_epoch)
            state = state.replace(tx=tx, opt_state=tx.init(state.params))
        self.trainer = train_lib.Trainer(config, train, test, state=state, precompile=False)
        self._capture = jax.jit(_capture_step)

    def _configure(self):
        from jaxtrain.train import configure_jax

        configure_jax(self.config.dtype)

    def train_epoch(self, epoch: int, num_steps: int, first_step: int) -> np.ndarray:
        self._configure()
        plan = self.trainer.batches(epoch)
        dropout = epoch_dropout_masks(self.config, plan, num_steps, first_step)
        return self.trainer.train_one_epoch(epoch, num_steps, dropout)

    def evaluate(self) -> tuple[float, float]:
        self._configure()
        return self.trainer.evaluate()

    def end_epoch(self) -> None:
        """Nothing to do: the optax schedule follows the step count."""

    def buffers(self) -> dict:
        state = self.jax.device_get(self.trainer.state)
        return _named_buffers(state.params, state.batch_stats)

    def capture_step(self, plan: data_lib.EpochBatches, b: int, step: int) -> dict:
        """Step `step` (0-based; batch b of `plan`) through train_step's parts; every stage."""
        from jaxtrain.transfer import flax_to_torch

        self._configure()
        jnp, images = self.jax.numpy, self.trainer.train_images
        index = plan.index[b]
        batch = {"x": images[index], "y": self.trainer.train_labels[index],
                 "mask": jnp.asarray(plan.mask[b], images.dtype)}
        masks = padded_dropout_masks(self.config, plan, b, step)
        if masks:
            batch["dropout"] = tuple(jnp.asarray(m) for m in masks)
        self.trainer.state, out = self._capture(self.trainer.state, batch)
        out = self.jax.device_get(out)
        as64 = lambda tree: {k: np.asarray(v, np.float64) for k, v in flax_to_torch(tree).items()}  # noqa: E731
        return {"forward": np.asarray(out["logits"][: plan.sizes[b]], np.float64),
                "loss": np.float64(out["loss"]), "grads": as64(out["grads"]), "updates": as64(out["updates"]),
                "buffers": _named_buffers(out["params"], out["batch_stats"]), "params": as64(out["params"])}


def _capture_step(state, batch):
    """train_step, keeping what it computes on the way: logits, loss, gradients, updates."""
    import jax

    from jaxtrain.train import forward_and_grad

    loss, outputs, batch_stats, grads = forward_and_grad(state, batch)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    updates = jax.tree.map(lambda new, old: new - old, new_state.params, state.params)
    return new_state, {"logits": outputs, "loss": loss, "grads": grads, "updates": updates,
                       "params": new_state.params, "batch_stats": new_state.batch_stats}


class TorchRunner:
    """torchref's train_loop/test_loop in one dtype, dropout masks injected by forward hooks."""

    framework = "torch"

    def __init__(self, config, weights, train: data_lib.Split, test: data_lib.Split):
        import torch

        from torchref import train as torch_train
        from torchref.models import make_model

        self.torch, self.train_lib, self.config = torch, torch_train, config
        model = make_model(config)
        model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in _cast(weights, config.dtype).items()})
        self.model, self.loss_fn, self.optimizer, self.scheduler = torch_train.setup(config, model)
        self.train_loader = torch_train.make_dataloader(train, config, train=True)
        self.test_loader = torch_train.make_dataloader(test, config, train=False)
        self.step, self._masks = 0, (None, [])
        self.model.register_forward_pre_hook(self._count_step)
        dropouts = [m for m in self.model.modules() if isinstance(m, torch.nn.Dropout)]
        for k, module in enumerate(dropouts):
            module.register_forward_hook(self._inject_mask(k))

    def _count_step(self, module, inputs):
        if module.training:
            self.step += 1

    def _inject_mask(self, k):
        def hook(module, inputs, output):
            if not module.training or module.p == 0:
                return output
            x = inputs[0]
            step = self.step - 1
            if self._masks[0] != step:
                self._masks = (step, dropout_masks(self.config, step, x.shape[0]))
            keep = self.torch.as_tensor(self._masks[1][k], device=x.device).to(x.dtype)
            return x * (keep / (1 - module.p))  # what F.dropout computes, with our mask

        return hook

    def train_epoch(self, epoch: int, num_steps: int, first_step: int) -> np.ndarray:
        self.step = first_step
        self.train_loader.batch_sampler.set_epoch(epoch, num_steps)
        return self.train_lib.train_loop(self.train_loader, self.model, self.loss_fn, self.optimizer)

    def evaluate(self) -> tuple[float, float]:
        return self.train_lib.test_loop(self.test_loader, self.model, self.loss_fn)

    def end_epoch(self) -> None:
        if self.scheduler is not None:
            self.scheduler.step()

    def buffers(self) -> dict:
        return {k: np.array(v.detach().cpu().double().numpy(), copy=True) for k, v in self.model.state_dict().items()
                if k.endswith(BUFFER_SUFFIXES)}  # a copy: a float64 buffer's .double().numpy() is the live tensor

    def capture_step(self, plan: data_lib.EpochBatches, b: int, step: int) -> dict:
        """Step `step` (0-based; batch b of `plan`) through train_step, capturing every stage."""
        X, y = self.train_loader.dataset[plan.index[b, : plan.sizes[b]]]
        device = self.train_lib.device()
        self.step = step
        self.model.train()
        out: dict = {}
        loss = self.train_lib.train_step(self.model, self.loss_fn, self.optimizer, X.to(device), y.to(device),
                                         capture=out)
        as_np = lambda t: np.array(t.detach().cpu().double().numpy(), copy=True)  # noqa: E731  (not the live tensor)
        buffers = self.buffers()
        return {"forward": as_np(out["logits"]), "loss": np.float64(float(loss)),
                "grads": {k: as_np(v) for k, v in out["grads"].items()},
                "updates": {k: as_np(v) for k, v in out["updates"].items()}, "buffers": buffers,
                "params": {k: as_np(p) for k, p in self.model.named_parameters()}}


# --------------------------------------------------------------------------- trajectories


@dataclasses.dataclass
class Trajectory:
    """One run: the metrics record, every step's loss, per-epoch test results and buffers."""

    record: dict
    buffers: list  # per epoch: {torch buffer name: array}
    epoch_ends: list  # per epoch: the number of steps run by its end

    @property
    def losses(self) -> np.ndarray:
        return np.array([s["loss"] for s in self.record["steps"]])

    @property
    def test_losses(self) -> np.ndarray:
        return np.array([e["test_loss"] for e in self.record["epochs"]])

    @property
    def accuracies(self) -> np.ndarray:
        return np.array([e["test_accuracy"] for e in self.record["epochs"]])


def runs_for(dtypes) -> list[tuple[str, str]]:
    """(framework, dtype) runs a check of `dtypes` needs: float32 is judged against float64."""
    wanted = [(fw, d) for d in ("float32", "float64") if d in dtypes for fw in ("jax", "torch")]
    if "float32" in dtypes and "float64" not in dtypes:
        wanted.append(("torch", "float64"))
    return wanted


def make_runners(config, keys, train, test, port: JaxPort | None = None) -> dict:
    weights = initial_weights(config)
    runners = {}
    for framework, dtype in keys:
        cfg = dataclasses.replace(config, dtype=dtype)
        runners[(framework, dtype)] = (JaxRunner(cfg, weights, train, test, port or JaxPort()) if framework == "jax"
                                       else TorchRunner(cfg, weights, train, test))
    return runners


def _device(framework: str) -> str:
    if framework == "jax":
        from jaxtrain.train import device_kind
    else:
        from torchref.train import device_kind
    return device_kind()


def epoch_lengths(config, num_train: int, max_steps: int | None) -> list[int]:
    """Steps of each epoch run: every epoch's batches, cut at `max_steps` in all."""
    per_epoch = -(-num_train // config.batch_size)
    lengths, total = [], 0
    for _ in range(config.epochs):
        n = per_epoch if max_steps is None else min(per_epoch, max_steps - total)
        if n <= 0:
            break
        lengths.append(n)
        total += n
    return lengths


def run_trajectories(config, dtypes, train, test, max_steps=None, port: JaxPort | None = None) -> dict:
    """Train every run on the same plan, epoch by epoch; evaluate and read buffers after each epoch."""
    import time

    runners = make_runners(config, runs_for(dtypes), train, test, port)
    out = {}
    for key, runner in runners.items():
        record = new_record(key[0], dataclasses.replace(config, dtype=key[1]), _device(key[0]))
        buffers, ends, step = [], [], 0
        for epoch, num_steps in enumerate(epoch_lengths(config, len(train), max_steps)):
            start = time.perf_counter()
            losses = runner.train_epoch(epoch, num_steps, step)
            test_loss, accuracy = runner.evaluate()
            runner.end_epoch()
            append_epoch(record, epoch, losses, test_loss, accuracy, time.perf_counter() - start)
            buffers.append(runner.buffers())
            step += num_steps
            ends.append(step)
        out[key] = Trajectory(record, buffers, ends)
    return out


def replay(config, keys, train, test, until_step: int, visit, port: JaxPort | None = None):
    """Replay steps 1..until_step on fresh runners in lockstep. After each step,
    `visit(step, {key: stages})` may return a finding, which stops the replay and is returned."""
    runners = make_runners(config, keys, train, test, port)
    step = 0
    for epoch, num_steps in enumerate(epoch_lengths(config, len(train), until_step)):
        plan = data_lib.epoch_batches(len(train), config.batch_size, config.shuffle, config.seed, epoch)
        for b in range(num_steps):
            stages = {key: runner.capture_step(plan, b, step) for key, runner in runners.items()}
            step += 1
            found = visit(step, stages)
            if found is not None:
                return found
        for runner in runners.values():
            runner.end_epoch()
    return None
