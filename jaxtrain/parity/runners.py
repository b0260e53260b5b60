"""The runs a parity check compares: JAX and torch, each in float32 and float64.

Every run starts from the same weights (the torch model's, mapped to the Flax
port by `mapping`; cast up for float64) and takes the same batches from the
shared plan. Dropout masks cannot come from the two RNGs alike, so one uniform
draw per step and dropout call, from (seed, step, call), is thresholded by each
side's own rate and injected into both (torch: forward hooks on `nn.Dropout`;
Flax: the call interceptor of `jaxtrain.flax_model`).

Each side trains through the code its users run:
- JAX: `jaxtrain.train.Trainer`'s scanned epoch (`lax.scan` over `train_step`),
  with the dropout masks passed in as scan inputs;
- torch: `torchref.train.train_loop` / `test_loop` over the DataLoader.

For localisation both also replay single steps (`capture_step`), returning every
stage of the step: each layer's output (in torch's layout), the model output,
loss, grads, updates, buffers, and the parameters after it, keyed by torch's names.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Any, Callable

import numpy as np

from jaxtrain import data as data_lib
from jaxtrain.errors import DivergedError, Interrupted, PortMappingError, UserError, first_line, ours, raised_by_us
from jaxtrain.inputs import rows
from jaxtrain.metrics import append_epoch, new_record


@dataclasses.dataclass
class DropoutCall:
    """One dropout call of a training step, as both sides make it."""

    torch_rate: float
    flax_rate: float
    shape: tuple  # per-sample shape, torch's layout
    channels_last: bool  # the Flax side sees it with the channel axis last


@dataclasses.dataclass
class Port:
    """Both sides of one check, built once by `check_port`: each run trains its own copy."""

    torch_model: Any  # the user's torch.nn.Module (a template)
    weights: dict  # its initial state_dict, numpy
    flax: Any  # jaxtrain.flax_model.PureModel
    mapping: Any  # jaxtrain.parity.mapping.Mapping
    torch_loss: Callable
    jax_loss: Callable
    optimizers: Any  # jaxtrain.parity.optimizers.Optimizers: both sides' optimizer and the loop around it
    train: data_lib.Split  # inputs in torch's layout
    test: data_lib.Split | None
    jax_train: data_lib.Split  # the same, through flax_input
    jax_test: data_lib.Split | None
    dropout: list  # [DropoutCall] in call order
    channels_last: set  # torch layer names whose Flax output has the channel axis last
    flax_train_calls: list  # jaxtrain.flax_model.Call of a training forward pass, in order
    flax_eval_calls: list
    torch_kwargs: dict = dataclasses.field(default_factory=dict)  # constant keyword arguments of torch's calls
    torch_output: Callable | None = None  # picks the prediction from torch's return value
    output_channels_last: bool = False  # the port's prediction has the channel axis last (read in torch's layout)


class TorchCall:
    """The user's torch model as torchref's loops call it: `model(X)` passes a tuple's arrays
    positionally and a dict's as keywords, with the constant keyword arguments, and returns the
    prediction (`jaxtrain.inputs.prediction`); everything else is the model's own. With `dtype`, torch's
    default dtype is that while the forward pass runs (a float64 run's causal masks, zeros and tables in
    float64); torch.optim's own scalars keep the default dtype, as the twins expect."""

    def __init__(self, model, kwargs: dict | None = None, output: Callable | None = None, dtype: str | None = None):
        # run_dtype, not dtype: the model's own `.dtype` (transformers' PreTrainedModel) stays the model's
        self.__dict__.update(model=model, kwargs=dict(kwargs or {}), output=output, run_dtype=dtype)

    def __call__(self, X):
        from jaxtrain.inputs import call, prediction

        with torch_default_dtype(self.run_dtype):
            return prediction(call(self.model, X, **self.kwargs), self.output)

    def __getattr__(self, name):
        return getattr(self.__dict__["model"], name)


def step_masks(port: Port, config, step: int, batch_size: int) -> tuple[list, list]:
    """(torch's, Flax's) keep-masks of step `step` (0-based): one uniform draw per call from
    (seed, step, call), each side keeping what passes its own rate."""
    torch_masks, flax_masks = [], []
    for k, call in enumerate(port.dropout):
        u = np.random.default_rng([config.seed, 7919, step, k]).random((batch_size, *call.shape))
        torch_masks.append(u >= call.torch_rate)
        keep = u >= call.flax_rate
        flax_masks.append(np.moveaxis(keep, 1, -1) if call.channels_last else keep)
    return torch_masks, flax_masks


def to_torch_layout(value, channels_last: bool) -> np.ndarray:
    value = np.asarray(value, np.float64)
    return np.moveaxis(value, -1, 1) if channels_last and value.ndim >= 3 else value


def _cast(weights: dict, dtype: str) -> dict:
    return {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in weights.items()}


def _layer_outputs(port: Port, calls: list, recorded: list, inputs: bool = False) -> dict:
    """{torch layer name: its first output (or first floating input), torch's layout} from the Flax
    port's recorded calls."""
    out = {}
    for call, pair in zip(calls, recorded):
        name, value = port.mapping.torch_name_of_layer(call.path), pair[0 if inputs else 1]
        if inputs and (value is None or not np.issubdtype(np.asarray(value).dtype, np.floating)):
            continue
        if call.kind != "Dropout" and name is not None and name not in out:
            out[name] = to_torch_layout(value, name in port.channels_last)
    return out


def jax_tx(port: Port, config, params):
    """The JAX side's optax transformation for a run: the port's optimizer, counting optimizer steps,
    behind optax.MultiSteps (its mean of the micro-batches' gradients) when batches accumulate."""
    import optax

    o = port.optimizers
    batches = data_lib.batches_per_epoch(len(port.train), config.batch_size)
    per_epoch = batches // o.accumulate
    tx = o.make_tx(config, per_epoch, per_epoch * config.epochs, port.mapping, params, port.torch_model)
    if o.accumulate == 1 or isinstance(getattr(tx.init, "__self__", None), optax.MultiSteps):
        return tx  # no accumulation, or the user's own optax.MultiSteps
    # MultiSteps sums in float32 unless told: the run's dtype, as torch's .grad accumulates
    return optax.MultiSteps(tx, o.accumulate, accumulator_dtype=config.dtype).gradient_transformation()


class JaxRunner:
    """jaxtrain's Trainer in one dtype, training the Flax port."""

    framework = "jax"

    def __init__(self, port: Port, config):
        import jax

        from jaxtrain import train as train_lib

        self.port, self.config, self.jax = port, config, jax
        train_lib.configure_jax(config.dtype)
        flax = port.flax.computing_in(config.dtype)  # float64 means float64, whatever a module fixed
        params, buffers = port.mapping.to_flax(flax, _cast(port.weights, config.dtype))
        state = train_lib.create_state(config, 1, model=flax, params=params, buffers=buffers,
                                       tx=jax_tx(port, config, params), loss_fn=port.jax_loss)
        self.trainer = train_lib.Trainer(config, port.jax_train, port.jax_test or port.jax_train, state=state,
                                         precompile=False)
        self._capture = jax.jit(_capture_step)
        self._capture_eval = jax.jit(_capture_eval)

    def _configure(self):
        from jaxtrain.train import configure_jax

        configure_jax(self.config.dtype)

    def train_epoch(self, epoch: int, num_steps: int, first_step: int) -> np.ndarray:
        self._configure()
        plan = self.trainer.batches(epoch)
        dropout = None
        if self.port.dropout:
            dropout = [step_masks(self.port, self.config, first_step + b, int(plan.sizes[b]))[1]
                       for b in range(num_steps)]
        return self.trainer.train_one_epoch(epoch, num_steps, dropout)

    def evaluate(self) -> tuple[float, float]:
        self._configure()
        return self.trainer.evaluate()

    def end_epoch(self) -> None:
        """A ReduceLROnPlateau's step on the epoch's test loss; other schedules follow the step count."""
        from jaxtrain.optim import has_plateau, plateau_step

        state = self.trainer.state
        if has_plateau(state.opt_state):
            self.trainer.state = state.replace(opt_state=plateau_step(state.opt_state, self.evaluate()[0]))

    def buffers(self) -> dict:
        return self.port.mapping.to_torch(self.jax.device_get(self.trainer.state.buffers), buffers=True)

    def capture_step(self, plan: data_lib.EpochBatches, b: int, step: int) -> dict:
        """Step `step` (0-based; batch b of `plan`) through train_step's parts; every stage."""
        self._configure()
        jnp, index = self.jax.numpy, plan.index[b, : plan.sizes[b]]
        batch = {"x": rows(self.trainer.train_x, index), "y": self.trainer.train_y[index]}
        if self.port.dropout:
            batch["dropout"] = tuple(jnp.asarray(m) for m in step_masks(self.port, self.config, step, len(index))[1])
        self.trainer.state, out = self._capture(self.trainer.state, batch)
        out = self.jax.device_get(out)
        to_torch = self.port.mapping.to_torch
        return {"layers": _layer_outputs(self.port, self.port.flax_train_calls, out["recorded"]),
                "inputs": _layer_outputs(self.port, self.port.flax_train_calls, out["recorded"], inputs=True),
                "forward": to_torch_layout(out["outputs"], self.port.output_channels_last),
                "loss": np.float64(out["loss"]),
                "grads": to_torch(out["grads"]), "updates": to_torch(out["updates"]),
                "buffers": to_torch(out["buffers"], buffers=True), "params": to_torch(out["params"])}

    def capture_eval(self, index: np.ndarray) -> dict:
        """model.eval() on test samples `index`: each layer's output and the model output."""
        self._configure()
        out = self.jax.device_get(self._capture_eval(self.trainer.state, rows(self.trainer.test_x, index)))
        return {"layers": _layer_outputs(self.port, self.port.flax_eval_calls, out["recorded"]),
                "forward": to_torch_layout(out["outputs"], self.port.output_channels_last)}


def _capture_step(state, batch):
    """train_step, keeping what it computes on the way: layer outputs, outputs, loss, gradients, updates."""
    import jax

    from jaxtrain.train import forward_and_grad

    loss, outputs, buffers, grads, recorded = forward_and_grad(state, batch, record=True)
    new_state = state.apply_gradients(grads=grads, buffers=buffers)
    updates = jax.tree.map(lambda new, old: new - old, new_state.params, state.params)
    return new_state, {"outputs": outputs, "loss": loss, "grads": grads, "updates": updates, "recorded": recorded,
                       "params": new_state.params, "buffers": new_state.buffers}


def _capture_eval(state, x):
    outputs, _, recorded = state.apply_fn(state.params, state.buffers, x, False, None, None, True)
    return {"outputs": outputs, "recorded": recorded}


@contextlib.contextmanager
def torch_default_dtype(dtype: str | None):
    """torch's default dtype set to the run's (`torch.finfo(torch.get_default_dtype())` in a model's causal mask,
    `torch.zeros(...)` it adds to its activations), restored afterwards."""
    import torch

    before = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(torch.float64 if dtype == "float64" else torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


class TorchRunner:
    """torchref's train_loop/test_loop in one dtype, training a copy of the user's torch model (torch's default
    dtype the run's while the model runs forward: `TorchCall`)."""

    framework = "torch"

    def __init__(self, port: Port, config, rounding: bool = False):
        import torch

        from torchref import train as torch_train

        self.torch, self.train_lib, self.config, self.port = torch, torch_train, config, port
        self.rounding = rounding  # torch': every parameter moved by one ulp before each training step
        dtype = torch.float64 if config.dtype == "float64" else torch.float32
        model = copy.deepcopy(port.torch_model).to(dtype)
        model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in _cast(port.weights, config.dtype).items()})
        self.module = model.to(torch_train.device())
        self.model = TorchCall(self.module, port.torch_kwargs, port.torch_output, config.dtype)
        self.loss_fn = port.torch_loss
        self.optimizer, self.scheduler = port.optimizers.make_torch(config, self.module,
                                                                    data_lib.batches_per_epoch(len(port.train), config.batch_size))
        self.loop = port.optimizers.torch_loop(self.module, self.scheduler)
        self.train_loader = torch_train.make_dataloader(port.train, config, train=True, add_channel=False)
        self.test_loader = torch_train.make_dataloader(port.test or port.train, config, train=False, add_channel=False)
        self.step, self._masks, self._dropout_call = 0, (None, []), 0
        self._recording: dict | None = None
        self._inputs: dict = {}  # each recorded layer's first floating input (what the diagnosis reads)
        self.module.register_forward_pre_hook(self._count_step)
        modules = dict(self.module.named_modules())
        for module in modules.values():
            if isinstance(module, torch.nn.Dropout):
                module.register_forward_hook(self._inject_mask)
        for name, _, _ in port.mapping.layers:
            modules[name].register_forward_hook(self._record(name), with_kwargs=True)

    def _count_step(self, module, inputs):
        self._dropout_call = 0
        if module.training:
            self.step += 1
            if self.rounding:
                self._nudge(self.step - 1)

    def _nudge(self, step: int) -> None:
        """Move every parameter by one ulp, up or down at random (seeded by the step): arithmetic that
        differs from the plain run only in rounding, at every step, as another framework's does."""
        torch = self.torch
        rng = np.random.default_rng([self.config.seed, 104729, step])
        with torch.no_grad():
            for p in self.model.parameters():
                up = torch.from_numpy(np.asarray(rng.random(tuple(p.shape)) < 0.5)).to(p.device)  # 0-d too
                p.copy_(torch.nextafter(p, torch.where(up, torch.inf, -torch.inf).to(p.dtype)))

    def _inject_mask(self, module, inputs, output):
        if not module.training or module.p == 0:
            return output
        x, step, k = inputs[0], self.step - 1, self._dropout_call
        self._dropout_call += 1
        if self._masks[0] != step:
            self._masks = (step, step_masks(self.port, self.config, step, x.shape[0])[0])
        keep = self.torch.as_tensor(self._masks[1][k], device=x.device).to(x.dtype)
        return x * (keep / (1 - module.p))  # what F.dropout computes, with our mask

    def _record(self, name):
        def hook(module, inputs, kwargs, output):
            if self._recording is not None and name not in self._recording:
                from jaxtrain.inputs import tensor_leaves

                first = tensor_leaves(output)[0]  # an LSTM's output sequence, attention's output
                self._recording[name] = np.array(first.detach().cpu().double().numpy(), copy=True)
                given = tensor_leaves([*inputs, *kwargs.values()])
                if given and given[0].is_floating_point():
                    self._inputs[name] = np.array(given[0].detach().cpu().double().numpy(), copy=True)

        return hook

    def train_epoch(self, epoch: int, num_steps: int, first_step: int) -> np.ndarray:
        self.step = first_step
        self.train_loader.batch_sampler.set_epoch(epoch, num_steps)
        return self.train_lib.train_loop(self.train_loader, self.model, self.loss_fn, self.optimizer, loop=self.loop)

    def evaluate(self) -> tuple[float, float]:
        return self.train_lib.test_loop(self.test_loader, self.model, self.loss_fn)

    def end_epoch(self) -> None:
        if self.scheduler is None or self.loop.scheduler is not None:
            return  # none, or stepped after every batch
        if isinstance(self.scheduler, self.torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(self.evaluate()[0])
        else:
            self.scheduler.step()

    def buffers(self) -> dict:
        names = self.port.mapping.buffer_names()
        return {k: np.array(v.detach().cpu().double().numpy(), copy=True) for k, v in self.model.state_dict().items()
                if k in names}  # a copy: a float64 buffer's .double().numpy() is the live tensor

    def capture_step(self, plan: data_lib.EpochBatches, b: int, step: int) -> dict:
        """Step `step` (0-based; batch b of `plan`) through train_step, capturing every stage."""
        X, y = self.train_loader.dataset[plan.index[b, : plan.sizes[b]]]
        device = self.train_lib.device()
        self.step = step
        self.model.train()
        out: dict = {}
        self._recording, self._inputs = {}, {}
        loss = self.train_lib.train_step(self.model, self.loss_fn, self.optimizer, self.train_lib.to_device(X),
                                         y.to(device), capture=out, loop=self.loop,
                                         step=(step + 1) % self.loop.accumulate == 0)
        layers, self._recording = self._recording, None
        as_np = lambda t: np.array(t.detach().cpu().double().numpy(), copy=True)  # noqa: E731  (not the live tensor)
        return {"layers": layers, "inputs": self._inputs, "forward": as_np(out["logits"]),
                "loss": np.float64(float(loss)),
                "grads": {k: as_np(v) for k, v in out["grads"].items()},
                "updates": {k: as_np(v) for k, v in out["updates"].items()}, "buffers": self.buffers(),
                "params": {k: as_np(p) for k, p in self.model.named_parameters()}}

    def capture_eval(self, index: np.ndarray) -> dict:
        X, _ = self.test_loader.dataset[index]
        self.model.eval()
        self._recording = {}
        with self.torch.no_grad():
            out = self.model(self.train_lib.to_device(X))
        layers, self._recording = self._recording, None
        return {"layers": layers, "forward": np.array(out.detach().cpu().double().numpy(), copy=True)}


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


ROUNDING = "torch_rounding"  # torch': the rounding-spread run (TorchRunner with `rounding`)


def runs_for(dtypes) -> list[tuple[str, str]]:
    """(framework, dtype) runs a check of `dtypes` needs: each dtype's JAX and torch runs and torch's own
    rounding spread in it (torch'). Asked for float32 only, nothing runs in float64: float32 is then judged
    against torch's float32 run and its spread (`check.judge`), else against float64."""
    wanted = [(fw, d) for d in ("float32", "float64") if d in dtypes for fw in ("jax", "torch")]
    return wanted + [(ROUNDING, d) for d in ("float64", "float32") if d in dtypes]


def make_runners(port: Port, config, keys) -> dict:
    def runner(framework, dtype):
        config_d = dataclasses.replace(config, dtype=dtype)
        if framework == "jax":
            return JaxRunner(port, config_d)
        return TorchRunner(port, config_d, rounding=framework == ROUNDING)

    return {(framework, dtype): runner(framework, dtype) for framework, dtype in keys}


def _device(framework: str) -> str:
    if framework == "jax":
        from jaxtrain.train import device_kind
    else:
        from torchref.train import device_kind
    return device_kind()


def epoch_lengths(config, num_train: int, max_steps: int | None) -> list[int]:
    """Steps of each epoch run: every epoch's batches, cut at `max_steps` in all."""
    per_epoch = data_lib.batches_per_epoch(num_train, config.batch_size)
    lengths, total = [], 0
    for _ in range(config.epochs):
        n = per_epoch if max_steps is None else min(per_epoch, max_steps - total)
        if n <= 0:
            break
        lengths.append(n)
        total += n
    return lengths


def run_trajectories(port: Port, config, dtypes, max_steps=None) -> dict:
    """Train every run on the same plan, epoch by epoch; evaluate and read buffers after each epoch."""
    import time

    try:
        runners = make_runners(port, config, runs_for(dtypes))
    except (UserError, DivergedError, Interrupted):
        raise
    except Exception as e:  # building a run: the optimizer factory, the weights, the model's copy
        if raised_by_us(e):
            raise ours(e, "building the runs") from None
        raise PortMappingError(f"the runs cannot be built: {type(e).__name__}: {first_line(e)}") from None
    out = {}
    for key, runner in runners.items():
        record = new_record(key[0], dataclasses.replace(config, dtype=key[1]), _device(key[0]))
        buffers, ends, step = [], [], 0
        for epoch, num_steps in enumerate(epoch_lengths(config, len(port.train), max_steps)):
            start = time.perf_counter()
            try:
                losses = runner.train_epoch(epoch, num_steps, step)
                test_loss, accuracy = runner.evaluate()
                runner.end_epoch()
            except (UserError, DivergedError, Interrupted):
                raise
            except Exception as e:  # the user's model (or its library) fails in this dtype: one line
                if raised_by_us(e):
                    raise ours(e, f"in the {key[1]} {key[0]} run (epoch {epoch + 1})") from None
                model = "torch model" if key[0] != "jax" else "Flax model"
                first = str(e).splitlines()[0] if str(e) else ""
                raise PortMappingError(f"the {model} fails in the {key[1]} run (epoch {epoch + 1}): "
                                       f"{type(e).__name__}: {first}") from None
            append_epoch(record, epoch, losses, test_loss, accuracy, time.perf_counter() - start)
            buffers.append(runner.buffers())
            step += num_steps
            ends.append(step)
        out[key] = Trajectory(record, buffers, ends)
    return out


def align_layers(stages: dict) -> dict:
    """Layer outputs the two sides shape differently but that broadcast alike ((1, T, H) position
    embeddings against torch's (B, T, H)) compared at their common shape: a broadcast of the same
    values is no difference."""
    names = {name for s in stages.values() for name in s["layers"]}
    for name in names:
        arrays = [s["layers"][name] for s in stages.values() if name in s["layers"]]
        if len({np.shape(a) for a in arrays}) < 2:
            continue
        try:
            shape = np.broadcast_shapes(*(np.shape(a) for a in arrays))
        except ValueError:
            continue
        for s in stages.values():
            if name in s["layers"]:
                s["layers"][name] = np.broadcast_to(s["layers"][name], shape)
    return stages


def replay(port: Port, config, keys, until_step: int, visit, after=None):
    """Replay steps 1..until_step on fresh runners in lockstep. After each step,
    `visit(step, {key: stages})` may return a finding, which stops the replay and is returned.
    `after(runners)`, when given, is called once all steps ran and its result returned."""
    runners = make_runners(port, config, keys)
    step, num_train = 0, len(port.train)
    for epoch, num_steps in enumerate(epoch_lengths(config, num_train, until_step)):
        plan = data_lib.epoch_batches(num_train, config.batch_size, config.shuffle, config.seed, epoch)
        for b in range(num_steps):
            stages = align_layers({key: runner.capture_step(plan, b, step) for key, runner in runners.items()})
            step += 1
            found = visit(step, stages)
            if found is not None:
                return found
        for runner in runners.values():
            runner.end_epoch()
    return None if after is None else after(runners)
