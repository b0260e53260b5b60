"""`check_port`: a user's torch model and its Flax port, trained side by side and judged.

`check_parity` (the tutorial, `jaxtrain parity`) is one call of it: torchref's
model and jaxtrain's are just one more pair.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np

from jaxtrain import data as data_lib
from jaxtrain import inputs as inputs_lib
from jaxtrain.errors import ConfigError, PortMappingError, ours, raised_by_us
from jaxtrain.parity import criteria
from jaxtrain.parity import optimizers as optimizers_lib
from jaxtrain.parity.diagnose import diagnose
from jaxtrain.parity.localise import (JAX32, JAX64, ROUNDING32, ROUNDING64, TORCH32, TORCH64, localise_math,
                                      step1_precision)
from jaxtrain.parity.mapping import FLAX_COMPOSITES, TORCH_COMPOSITES, build_mapping, is_torch_layer, rule_for
from jaxtrain.parity.report import ParityReport
from jaxtrain.parity.runners import DropoutCall, Port, TorchCall, run_trajectories, torch_default_dtype


def _nhwc(x):
    return inputs_lib.map_leaves(lambda a: np.moveaxis(a, 1, -1) if a.ndim >= 3 and not inputs_lib.is_integer(a)
                                 else a, x)


FLAX_INPUTS = {"same": lambda x: x, "nhwc": _nhwc}
SCHEDULER_ARGS = {"T_max": "t_max"}  # torch's argument name -> jaxtrain's config field


def check_port(torch_model, flax_model, train, test=None, loss="cross_entropy", mse_reduction="mean",
               optimizer="sgd", optimizer_kwargs=None, scheduler=None, scheduler_kwargs=None, batch_size=64,
               steps=None, epochs=1, shuffle=False, seed=0, dtypes=("float32", "float64"), flax_input=None,
               weight_map=None, torch_kwargs=None, flax_kwargs=None, torch_output=None,
               flax_output=None, scheduler_interval="epoch", torch_step=None, accumulate=1, clip_grad_norm=None,
               norm_type=2.0, clip_grad_value=None, label_smoothing=0.0) -> ParityReport:
    """Train `torch_model` (a torch.nn.Module) and `flax_model` (its port: a flax.nnx.Module, or a
    flax.linen.Module the harness initialises) from the same weights on the same batches, in float32
    and float64, and judge them: the report's `passed`, `checks` (stage/layer/tensor in torch's
    names, first failing step) and `diagnosis`.

    `train`/`test`: (inputs, targets), inputs in torch's layout: one array, a tuple of arrays (the
    model's positional arguments: `model(ids, mask)`) or a dict (its keyword arguments:
    `model(input_ids=..., attention_mask=...)`); float arrays run in each dtype, integer ones (token
    ids, masks) stay integers. Targets: class labels (N,) or (N, T) for sequences, or float
    regression targets. `test=None` skips the evaluation. `loss`: "cross_entropy" | "nll" | "mse" or a
    (torch_fn, jax_fn) pair; `label_smoothing`: CrossEntropyLoss(label_smoothing=...). `optimizer`: a
    torch.optim name with torch's keyword arguments (plus `no_decay_on=("bias", "norm")`, the common
    second param group without weight decay; and
    `scheduler`, one of jaxtrain's names, with `scheduler_kwargs`); a factory `params -> optimizer` or
    `-> (optimizer, scheduler)` whose JAX twin is `jaxtrain.optim.from_torch`; or a pair (factory,
    optax transformation). `scheduler_interval`: "epoch" or "step" (scheduler.step() after every
    batch). The loop: `accumulate` batches per optimizer step (loss / accumulate each, as torch users
    write it; optax.MultiSteps on the JAX side), `torch_step(model, optimizer)` run after backward()
    and before step() (the JAX side must do the same in its tx), `clip_grad_norm`/`norm_type`/
    `clip_grad_value`: clip_grad_norm_/clip_grad_value_ in torch's loop and their twins in front of a
    JAX side jaxtrain builds (a tx of your own clips itself). A ReduceLROnPlateau steps on each
    epoch's test loss (the train split's without `test`). `steps`: batches to run (over as many
    epochs as that takes), else `epochs` full epochs. `flax_input`: "same", "nhwc" or a callable applied to input arrays
    before the Flax model. `weight_map`: see `jaxtrain.parity.mapping.build_mapping`.
    `torch_kwargs`/`flax_kwargs`: constant keyword arguments of every call (`return_dict=True`).
    `torch_output`/`flax_output`: callables picking the prediction from what each model returns;
    by default the array itself, `.logits`, `["logits"]` or a tuple's first element.
    `dtypes`: the parts to run: "float64" the math (same_math), "float32" precision and results. With
    float32 alone nothing runs in float64 (a model that cannot): float32 is then judged against torch's
    float32 run, with torch's own run an ulp off as the spread, instead of against float64.
    """
    from jaxtrain import devices

    dtypes = _dtypes(dtypes)
    devices.parity_mode()
    train_split, test_split = _split(train, "train"), None if test is None else _split(test, "test")
    optimizers = optimizers_lib.build(optimizer, scheduler_interval, accumulate, torch_step,
                                      {"clip_grad_norm": clip_grad_norm, "clip_grad_value": clip_grad_value},
                                      norm_type)
    config = _config(loss, mse_reduction, optimizer, optimizer_kwargs, scheduler, scheduler_kwargs, batch_size,
                     steps, epochs, shuffle, seed, len(train_split), scheduler_interval, accumulate, label_smoothing)
    data_lib.check_accumulation(len(train_split), batch_size, accumulate, "accumulate={}",
                                "accumulate, batch_size or the training set")
    optimizers.probe(config, torch_model, data_lib.batches_per_epoch(len(train_split), batch_size))
    port = build_port(torch_model, flax_model, train_split, test_split, config, loss, optimizers, flax_input,
                      weight_map, Calls(torch_kwargs, flax_kwargs, torch_output, flax_output))
    return judge(port, config, tuple(dtypes), steps)


def _dtypes(dtypes) -> tuple:
    """check_port's `dtypes`: "float32", "float64" or both (a string for one)."""
    dtypes = (dtypes,) if isinstance(dtypes, str) else tuple(dtypes or ())
    if not dtypes or not set(dtypes) <= {"float32", "float64"}:
        raise ConfigError(f"dtypes={dtypes!r}: give \"float32\", \"float64\" or both")
    return dtypes


def check_parity(config, dtypes=("float32", "float64"), train=None, test=None, max_steps=None,
                 torch_model=None, flax_model=None, flax_input=None, optimizer=None, loss=None) -> ParityReport:
    """The tutorial's check: torchref's model against jaxtrain's (or the given pair), on FashionMNIST
    splits, with the config's optimizer, scheduler and loss (or the given pairs): one call of `check_port`."""
    from jaxtrain.models import make_model
    from torchref.models import make_model as make_torch_model

    return check_port(
        torch_model if torch_model is not None else make_torch_model(dataclasses.replace(config, dtype="float32")),
        flax_model if flax_model is not None else make_model(config),
        train=(_torch_images(train.images), train.labels), test=(_torch_images(test.images), test.labels),
        loss=loss or config.loss, mse_reduction=config.mse_reduction, optimizer=optimizer or config.optimizer,
        optimizer_kwargs=None if optimizer else {**config.optimizer_kwargs(), "no_decay_on": config.no_decay_on},
        scheduler=None if config.scheduler == "none" or optimizer else config.scheduler,
        scheduler_kwargs=None if optimizer else config.scheduler_kwargs(), batch_size=config.batch_size,
        steps=max_steps, epochs=config.epochs, shuffle=config.shuffle, seed=config.seed, dtypes=dtypes,
        flax_input=flax_input, scheduler_interval=config.scheduler_interval, accumulate=config.accumulate,
        clip_grad_norm=config.clip_grad_norm, label_smoothing=config.label_smoothing)


def _torch_images(images: np.ndarray) -> np.ndarray:
    """FashionMNIST's (N, 28, 28) as ToTensor gives them to the model: (N, 1, 28, 28)."""
    return images[:, None] if images.ndim == 3 else images


# --------------------------------------------------------------------------- building the port


def _split(arrays, name: str) -> data_lib.Split:
    try:
        x, y = arrays
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a pair (inputs, targets): inputs an array, a tuple or a dict of "
                          "arrays") from None

    def leaf(a):
        a = np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a)
        return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a

    try:
        x, y = inputs_lib.map_leaves(leaf, x), leaf(y)
        rows = inputs_lib.num_rows(x)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: {e}") from None
    if rows != len(y) or rows == 0:
        raise ConfigError(f"{name}: {rows} inputs but {len(y)} targets")
    y = y.astype(np.int64 if np.issubdtype(y.dtype, np.integer) else np.float32)
    return data_lib.Split(x, y)


def _config(loss, mse_reduction, optimizer, optimizer_kwargs, scheduler, scheduler_kwargs, batch_size, steps,
            epochs, shuffle, seed, num_train, scheduler_interval="epoch", accumulate=1, label_smoothing=0.0):
    from jaxtrain.config import make_config

    values = {"batch_size": batch_size, "shuffle": shuffle, "seed": seed, "mse_reduction": mse_reduction,
              "loss": loss if isinstance(loss, str) else "cross_entropy", "scheduler_interval": scheduler_interval,
              "accumulate": accumulate, "label_smoothing": label_smoothing}
    values["epochs"] = epochs if steps is None else max(1, math.ceil(steps / math.ceil(num_train / batch_size)))
    if isinstance(optimizer, str):
        values["optimizer"] = optimizer
        values.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in (optimizer_kwargs or {}).items()})
    elif optimizer_kwargs:
        raise ConfigError("optimizer_kwargs go with an optimizer name; a (torch, optax) pair carries its own")
    if scheduler not in (None, "none"):
        if not isinstance(optimizer, str):
            raise ConfigError("scheduler= names go with an optimizer name; an optimizer factory returns its own "
                              "(optimizer, scheduler) pair")
        values["scheduler"] = scheduler
        values.update({SCHEDULER_ARGS.get(k, k): (tuple(v) if isinstance(v, list) else v)
                       for k, v in (scheduler_kwargs or {}).items()})
    try:
        return make_config(**values)
    except TypeError as e:
        raise ConfigError(f"unknown optimizer or scheduler argument: {e}") from None


def _losses(loss, config):
    if isinstance(loss, str):
        from jaxtrain.losses import loss_by_name
        from torchref.losses import loss_by_name as torch_loss_by_name

        try:
            return (torch_loss_by_name(loss, config.mse_reduction, config.label_smoothing),
                    loss_by_name(loss, config.mse_reduction, config.label_smoothing))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    torch_loss, jax_loss = loss
    return torch_loss, jax_loss


@dataclasses.dataclass(frozen=True)
class Calls:
    """How each model is called and what its prediction is (`check_port`'s *_kwargs, *_output)."""

    torch_kwargs: dict | None = None
    flax_kwargs: dict | None = None
    torch_output: object = None
    flax_output: object = None


def _torch_layers(model) -> list:
    """The modules the mapping pairs, in registration order: those owning weights, and whole
    attention/recurrent modules (their submodules are theirs)."""
    names, composites = [], []
    for name, module in model.named_modules():
        if any(name.startswith(c + ".") or not c for c in composites) or "parametrizations" in name.split("."):
            continue  # a composite's submodules, and parametrizations (the layer they parametrize owns them)
        if rule_for(module) in TORCH_COMPOSITES:
            composites.append(name)
        if is_torch_layer(module):
            names.append(name)
    return names


def _torch_forward(model, x, train: bool, calls: Calls, dropout_log=None):
    """Run a copy of the torch model once; the layers in the order they finish, with their first
    output (numpy); the nn.Dropout calls (rate, input shape) when training."""
    import torch

    model = copy.deepcopy(model).float()
    model.train(train)
    layers = {}  # hooks go on a copy, dropped with it
    modules = dict(model.named_modules())
    for name in _torch_layers(model):
        modules[name].register_forward_hook(lambda m, i, o, name=name: _first_output(layers, name, o))
    for module in modules.values():
        if isinstance(module, torch.nn.Dropout) and dropout_log is not None and train:
            module.register_forward_hook(lambda m, i, o: dropout_log.append((m.p, tuple(i[0].shape[1:]))) if m.p else None)
    try:
        with torch.no_grad():
            out = TorchCall(model, calls.torch_kwargs, calls.torch_output)(_torch_tensors(x, np.float32))
    except Exception as e:  # the user's model: any error is a mapping problem to report in one line
        if raised_by_us(e):
            raise ours(e, "running the torch model once") from None
        raise PortMappingError(f"the torch model fails on inputs {_shapes(x)}: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if not hasattr(out, "shape"):
        raise PortMappingError(f"the torch model's prediction is a {type(out).__name__}, not a tensor: pass "
                               "torch_output= (a callable picking it from what the model returns)")
    return layers, out


def _first_output(layers: dict, name: str, output) -> None:
    if name not in layers:
        leaves = inputs_lib.tensor_leaves(output)
        layers[name] = leaves[0].detach().numpy().copy() if leaves else None


def _torch_tensors(x, float_dtype=None):
    """torch tensors of the inputs, each a copy (a model may change its inputs in place: `position_ids +=
    offset`), integer arrays as int64, float ones in `float_dtype` (default: their own)."""
    import torch

    def tensor(a):
        if inputs_lib.is_integer(a):
            return torch.from_numpy(np.array(a, dtype=np.int64))
        return torch.from_numpy(np.array(a, dtype=float_dtype))  # np.array copies

    return inputs_lib.map_leaves(tensor, x)


def _shapes(x) -> str:
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}: {tuple(np.shape(v))}" for k, v in x.items()) + "}"
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(str(tuple(np.shape(v))) for v in x) + ")"
    return f"of shape {tuple(np.shape(x))}"


def _random_beyond_dropout(model, x, calls: Calls) -> bool:
    """Whether the training forward draws random numbers outside nn.Dropout (functional dropout). Each
    seed runs a fresh copy: a training forward may move state its output reads (spectral_norm's u, v)."""
    import torch

    outs = []
    with torch.no_grad():
        for seed in (1, 2):
            copied = copy.deepcopy(model).float().train()
            for module in copied.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.eval()
            torch.manual_seed(seed)
            outs.append(TorchCall(copied, calls.torch_kwargs, calls.torch_output)(_torch_tensors(x, np.float32))
                        .numpy())
    return not np.array_equal(outs[0], outs[1])


def _flax_layers(calls: list) -> list:
    """The Flax calls the mapping pairs: modules owning parameters and whole composites
    (attention, RNN), in the order they finish; a composite's submodules are its own."""
    candidates = [c for c in calls if c.kind != "Dropout" and (c.owns or c.kind in FLAX_COMPOSITES)]
    composites = [c.path for c in candidates if c.kind in FLAX_COMPOSITES]
    return list(dict.fromkeys(c.path for c in candidates
                              if not any(c.path.startswith(p + ".") or (not p and c.path) for p in composites)))


@dataclasses.dataclass(frozen=True)
class Pairing:
    """A torch model and its Flax port run once on the same inputs: the mapping between their
    tensors, and what the run showed (each side's calls and outputs, the channels-last layers)."""

    flax: object  # jaxtrain.flax_model.PureModel
    mapping: object  # jaxtrain.parity.mapping.Mapping
    channels_last: set
    eval_calls: list
    train_calls: list
    torch_outputs: dict
    to_flax: object  # torch-layout inputs -> the Flax model's inputs
    output_channels_last: bool = False  # the port's prediction has the channel axis last where torch's has it at 1


def pair_models(torch_model, flax_model, example_inputs, flax_input=None, weight_map=None, calls: Calls = Calls(),
                seed: int = 0) -> Pairing:
    """Run both models on (the first two rows of) `example_inputs`, torch's layout, and pair their
    layers and tensors: the one mapping `check_port` and `jaxtrain.convert` share."""
    import torch

    from jaxtrain.flax_model import pure_model

    if not isinstance(torch_model, torch.nn.Module):
        raise PortMappingError(f"torch_model must be a torch.nn.Module, got {type(torch_model).__name__}")
    to_flax = FLAX_INPUTS.get(flax_input or "same", flax_input)
    if not callable(to_flax):
        raise ConfigError(f"flax_input must be 'same', 'nhwc' or a callable, got {flax_input!r}")
    sample = inputs_lib.rows(example_inputs, slice(0, 2))
    sample_flax = to_flax(sample)
    try:
        flax = pure_model(flax_model, sample_flax, seed, calls.flax_kwargs, calls.flax_output)
        eval_calls = flax.calls(sample_flax, train=False)
        train_calls = flax.calls(sample_flax, train=True)
    except (TypeError, ValueError) as e:
        if raised_by_us(e):
            raise ours(e, "running the Flax model once") from None
        raise PortMappingError(f"the Flax model cannot be run on inputs {_shapes(sample_flax)}: "
                               f"{type(e).__name__}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # the user's model: report in one line
        if raised_by_us(e):
            raise ours(e, "running the Flax model once") from None
        raise PortMappingError(f"the Flax model fails on inputs {_shapes(sample_flax)}: "
                               f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    torch_outputs, torch_out = _torch_forward(torch_model, sample, False, calls)
    mapping = build_mapping(list(torch_outputs), _flax_layers(eval_calls), torch_model, flax, weight_map,
                            {c.path: c.kind for c in eval_calls})
    channels_last, flax_out = _channels_last(mapping, flax, sample_flax, eval_calls, torch_outputs,
                                             port_weights(torch_model))
    output_last = _moved_is_closer(np.asarray(torch_out.detach().double().numpy()), flax_out)
    return Pairing(flax, mapping, channels_last, eval_calls, train_calls, torch_outputs, to_flax, output_last)


def build_port(torch_model, flax_model, train, test, config, loss, optimizers, flax_input, weight_map,
               calls: Calls = Calls()) -> Port:
    """Everything both sides need: the mapping, losses, optimizers, dropout calls, layouts."""
    import torch

    pairing = pair_models(torch_model, flax_model, train.images, flax_input, weight_map, calls, config.seed)
    sample = inputs_lib.rows(train.images, slice(0, 2))
    dropout_log: list = []
    _torch_forward(torch_model, sample, True, calls, dropout_log=dropout_log)
    if _random_beyond_dropout(torch_model, sample, calls):
        raise PortMappingError(
            "the torch model's training forward pass gives other outputs under another seed with its nn.Dropout "
            "modules off: it draws random numbers elsewhere (functional dropout such as F.dropout, layer drop) or "
            "reads uninitialised memory, which no JAX run can match, so no step could agree; use nn.Dropout "
            "modules, or check with that randomness off")
    flax_dropout = [c for c in pairing.train_calls if c.kind == "Dropout"]
    if len(flax_dropout) != len(dropout_log):
        raise PortMappingError(
            f"dropout cannot be matched: a training step of the torch model calls nn.Dropout {len(dropout_log)} "
            f"times {[p for p, _ in dropout_log]}, the Flax port calls Dropout {len(flax_dropout)} times "
            f"{[c.dropout_rate for c in flax_dropout]}")
    dropout = [DropoutCall(p, c.dropout_rate, shape, _is_channels_last(c.in_shape, (2, *shape)))
               for (p, shape), c in zip(dropout_log, flax_dropout)]
    torch_loss, jax_loss = _losses(loss, config)
    data_lib.check_training_batches(len(train), config.batch_size, any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in torch_model.modules()))
    weights = port_weights(torch_model)
    def jax_split(split):  # the port's inputs; float targets laid out as its prediction is
        if split is None:
            return None
        labels = split.labels
        if pairing.output_channels_last and np.ndim(labels) >= 3 and not inputs_lib.is_integer(labels):
            labels = np.ascontiguousarray(np.moveaxis(labels, 1, -1))
        return data_lib.Split(pairing.to_flax(split.images), labels)

    return Port(torch_model, weights, pairing.flax, pairing.mapping, torch_loss, jax_loss, optimizers, train, test, jax_split(train), jax_split(test), dropout,
                pairing.channels_last, pairing.train_calls, pairing.eval_calls, dict(calls.torch_kwargs or {}),
                calls.torch_output, pairing.output_channels_last)


def port_weights(torch_model) -> dict:
    return {k: v.detach().cpu().numpy().copy() for k, v in torch_model.state_dict().items()}


def _channels_last(mapping, flax, sample_flax, eval_calls, torch_outputs: dict, weights: dict) -> tuple:
    """The torch layers whose Flax output has the channel axis last, decided from the data: both
    models run on the sample with the mapped weights, and each layer's Flax output is compared
    with torch's as it is and with its last axis moved to 1 (a C == H == W feature map included)."""
    params, buffers = mapping.to_flax(flax, {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
                                             for k, v in weights.items()})
    try:
        out, _, recorded = flax.apply(params, buffers, sample_flax, False, record=True)
    except Exception:  # noqa: BLE001  (the user's model ran in `calls`; judge by shapes if this fails)
        out, recorded = None, [(None, None)] * len(eval_calls)
    flax_outputs: dict = {}
    for call, (_, out) in zip(eval_calls, recorded):
        if call.kind != "Dropout":
            flax_outputs.setdefault(call.path, None if out is None else np.asarray(out, np.float64))
    found = {torch_name for torch_name, flax_path, _ in mapping.layers
             if _moved_is_closer(torch_outputs.get(torch_name), flax_outputs.get(flax_path))}
    return found, None if out is None else np.asarray(out, np.float64)


def _moved_is_closer(torch_value, flax_value) -> bool:
    """Whether a Flax tensor is torch's with the channel axis last: its last axis moved to 1 gives torch's
    shape, and (where the shapes agree as they are, C == H == W) torch's values more closely."""
    a, b = torch_value, flax_value
    if a is None or b is None or np.ndim(a) < 3 or np.ndim(b) != np.ndim(a):
        return False
    moved = np.moveaxis(b, -1, 1)
    if moved.shape != a.shape:
        return False
    return bool(b.shape != a.shape or np.abs(moved - a).max() < np.abs(b - a).max())


def _is_channels_last(flax_shape, torch_shape) -> bool:
    if flax_shape is None or torch_shape is None or len(torch_shape) < 3 or tuple(flax_shape) == tuple(torch_shape):
        return False
    return tuple(np.moveaxis(np.empty(flax_shape, dtype=np.bool_), -1, 1).shape) == tuple(torch_shape)


# --------------------------------------------------------------------------- the verdict


def _loss_numbers(jax_run, torch_run) -> dict:
    diff = abs(jax_run.losses - torch_run.losses)
    return {"steps": int(len(diff)), "max_abs_loss_diff": float(diff.max(initial=0.0)),
            "max_rel_loss_diff": float((diff / abs(torch_run.losses)).max(initial=0.0))}


def judge(port: Port, config, dtypes, max_steps=None) -> ParityReport:
    """Both frameworks from the same weights on the same batches; the three-part verdict, where it
    first fails, and what that looks like."""
    runs = run_trajectories(port, config, dtypes, max_steps)
    verdict: dict = {part: None for part in ("same_math", "same_precision", "same_results")}
    checks = []
    if "float64" in dtypes:
        differences = criteria.math_differences(runs[JAX64], runs[TORCH64], runs[ROUNDING64])
        lowered = float32_inside(port) + torch_float32_inside(port) + optimizer_float32_inside(port, config)
        localised = (None if differences["within_tolerance"]
                     else localise_math(port, config, differences, max_steps, floor=_cast_floor(lowered)))
        verdict["same_math"] = math_result = _lowered(criteria.same_math(differences, localised), lowered)
        checks.append(_check("float64", math_result["passed"], runs[JAX64], runs[TORCH64],
                             math_result["localised"] if not math_result["passed"] else None,
                             math_result["first_failing_step"], math_result["first_failing_epoch"]))
    if "float32" in dtypes:
        step1_evidence: dict = {}
        reference = "float64" if "float64" in dtypes else "torch's float32 run"
        math_holds = verdict["same_math"] is not None and verdict["same_math"]["passed"] is True
        if "float64" in dtypes:
            precision = criteria.same_precision(runs[JAX32], runs[TORCH32], runs[TORCH64],
                                                step1_precision(port, config, step1_evidence), math_holds)
            results = criteria.same_results(runs[JAX32], runs[TORCH32], runs[TORCH64], len(port.test or port.train),
                                             runs[ROUNDING64], runs[ROUNDING32], arithmetic_explained=(
                                                 None if not math_holds else "library" if
                                                 precision["library_float32"] is not None else
                                                 "step1" if precision["passed"] else None))
        else:  # float32 only: torch's float32 run is the reference, torch' (an ulp off) its spread
            precision = criteria.same_precision(runs[JAX32], runs[ROUNDING32], runs[TORCH32],
                                                step1_precision(port, config, step1_evidence, reference=TORCH32),
                                                reference=reference)
            results = criteria.same_results(runs[JAX32], runs[ROUNDING32], runs[TORCH32],
                                             len(port.test or port.train), reference=reference)
        if not precision["passed"]:
            precision["localised"] = precision["first_failure"]
            if precision["localised"] is not None and step1_evidence:
                precision["localised"]["evidence"] = step1_evidence
        if not results["passed"]:
            math_holds = verdict["same_math"] is not None and verdict["same_math"]["passed"]
            results["localised"] = {
                "step": precision["drift_onset_step"], "epoch": results["first_failing_epoch"], "stage": "drift",
                "layer": None, "tensor": None, "float64_agrees": math_holds if "float64" in dtypes else None,
                "results": {k: results[k] for k in (
                    "rms_rel_test_loss_error_jax", "rms_rel_test_loss_error_torch", "test_loss_allowed")},
                "note": f"JAX's float32 test results stray from {reference} farther than torch's float32 runs do"
                        + (f" (JAX's training loss from step {precision['drift_onset_step']})"
                           if precision["drift_onset_step"] else "")}
        verdict["same_precision"], verdict["same_results"] = precision, results
        localised = precision.get("localised") or results.get("localised")
        checks.insert(0, _check("float32", precision["passed"] and results["passed"], runs[JAX32], runs[TORCH32],
                                localised, precision["first_failing_step"],
                                None if localised is None else results["first_failing_epoch"]))
    if verdict["same_math"] is not None and verdict["same_math"]["passed"] is None:
        checks[-1].update(passed=None, first_failing_step=None, first_failing_epoch=None, stage=None, layer=None,
                          tensor=None)
        checks[-1].pop("localised", None)
    failed = [c for c in checks if c["passed"] is False]
    diagnosis = diagnose(failed[-1].get("localised"), port, config) if failed else None
    for check in checks:
        (check.get("localised") or {}).pop("evidence", None)
    for part in verdict.values():
        for key in ("localised", "first_failure"):
            ((part or {}).get(key) or {}).pop("evidence", None)
    return ParityReport(passed=not failed and any(c["passed"] for c in checks), config=config.to_json(), checks=checks, verdict=verdict,
                        trajectories=runs, diagnosis=diagnosis, layers=[t for t, _, _ in port.mapping.layers],
                        mapping_notes=mapping_notes(port.mapping), findings=findings(verdict))


def findings(verdict: dict) -> list[str]:
    """What the verdict found that is not the port's and does not fail it: the library's float32 arithmetic."""
    found = [((verdict.get("same_precision") or {}).get("library_float32") or {}).get("sentence"),
             (verdict.get("same_results") or {}).get("float32_arithmetic")]
    moved = (verdict.get("same_precision") or {}).get("moved_boundaries") or \
        ((verdict.get("same_math") or {}).get("localised") or {}).get("moved_boundaries") or []
    found += list(dict.fromkeys(m["note"] for m in moved))
    return [f for f in found if f]


def mapping_notes(mapping) -> list[str]:
    """What the report says of the mapping: parameters one side never uses, layers paired by call
    order alone where equal-shape siblings could have been swapped, what cannot train alike."""
    notes = [f"{layer}: {note}" for layer, note in mapping.notes if "padding_idx" not in note]
    notes += [f"not paired (never called in the checked computation): {name}" for name in mapping.unused]
    notes += mapping.guesses
    return notes


def float32_inside(port: Port) -> list[tuple[str, str]]:
    """The layers of the port (torch's names; "the model" outside any) that cast float64 values down
    to a lower float format (float32, bfloat16, float16) in a float64 forward pass, each with that format."""
    from jaxtrain.flax_model import cast_floats
    from jaxtrain.train import configure_jax

    configure_jax("float64")
    flax = port.flax.computing_in("float64")
    params, buffers = port.mapping.to_flax(flax, {k: np.asarray(v, np.float64) if np.issubdtype(
        np.asarray(v).dtype, np.floating) else v for k, v in port.weights.items()})
    x = inputs_lib.map_leaves(lambda a: a if inputs_lib.is_integer(a) else np.asarray(a, np.float64),
                              inputs_lib.rows(port.jax_train.images, slice(0, 2)))
    layers = {f: t for t, f, _ in port.mapping.layers if f is not None}
    names = []
    for scopes, dtype in flax.lower_precision(x, cast_floats(params, np.float64), cast_floats(buffers, np.float64)):
        layer = next((layers[p] for p in reversed(scopes) if p in layers), None)
        names.append((layer or next((f"Flax {p}" for p in scopes if p != "model" and "(" not in p), "the model"),
                      dtype))
    return list(dict.fromkeys(names))


def optimizer_float32_inside(port: Port, config) -> list[tuple[str, str]]:
    """[("the port's optax transformation", its narrowest float format)] when the user's own optax transformation (with its schedule) computes
    in a float type below float64 during the float64 run: optax.MultiSteps' default float32 accumulator, a
    schedule built on float32 constants. jaxtrain's torch.optim twins keep torch's own float32 scalars on purpose
    (from_torch), so only a transformation the user gave is read."""
    import jax

    from jaxtrain.flax_model import cast_floats
    from jaxtrain.parity.runners import jax_tx
    from jaxtrain.train import configure_jax

    if not port.optimizers.users_tx:
        return []
    configure_jax("float64")
    flax = port.flax.computing_in("float64")
    params, _ = port.mapping.to_flax(flax, {k: np.asarray(v, np.float64) if np.issubdtype(
        np.asarray(v).dtype, np.floating) else v for k, v in port.weights.items()})
    params = cast_floats(params, np.float64)
    try:
        tx = jax_tx(port, dataclasses.replace(config, dtype="float64"), params)
        jaxpr = jax.make_jaxpr(lambda g, p: tx.update(g, tx.init(p), p)[0])(params, params)
    except Exception:  # noqa: BLE001  (the run itself reports a transformation that fails)
        return []
    narrow = _floats_below_float64(jaxpr.jaxpr)
    return [("the port's optax transformation", max(narrow, key=criteria.cast_explains))] if narrow else []


def _floats_below_float64(jaxpr) -> set[str]:
    """The float dtypes narrower than float64 that equations of a jaxpr (or of the jaxprs inside it) produce."""
    import jax.numpy as jnp

    found: set[str] = set()
    for eqn in jaxpr.eqns:
        found |= {jnp.dtype(v.aval.dtype).name for v in eqn.outvars if hasattr(v.aval, "dtype")
                  and jnp.issubdtype(v.aval.dtype, jnp.floating) and jnp.finfo(v.aval.dtype).bits < 64}
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found |= _floats_below_float64(inner)
    return found


def _cast_floor(lowered: list[tuple[str, str]]) -> float:
    """What the casts inside a float64 run explain of a stage tensor: the narrowest format's share."""
    return max((criteria.cast_explains(dtype) for _, dtype in lowered), default=0.0)


def torch_float32_inside(port: Port) -> list[tuple[str, str]]:
    """The torch modules (innermost, by name) whose code produces float32 (or a narrower float) from float64
    in a float64 forward pass (`softmax(..., dtype=torch.float32)` in transformers' eager attention), each
    with that format."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    model = copy.deepcopy(port.torch_model).double().eval()
    stack: list = []
    for name, module in model.named_modules():
        module.register_forward_pre_hook(lambda m, i, name=name: (stack.append(name), None)[1])
        module.register_forward_hook(lambda m, i, o: (stack.pop(), None)[1])
    found: list = []
    low = (torch.float32, torch.float16, torch.bfloat16)

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            ins = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
            outs = [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
            narrow = [o.dtype for o in outs if o.dtype in low]
            if any(a.dtype == torch.float64 for a in ins) and narrow:
                found.append((f"torch {stack[-1]}" if stack and stack[-1] else "the torch model",
                              str(max(narrow, key=low.index)).removeprefix("torch.")))
            return out

    x = inputs_lib.map_leaves(lambda a: a if inputs_lib.is_integer(a) else np.asarray(a, np.float64),
                              inputs_lib.rows(port.train.images, slice(0, 2)))
    try:
        with torch.no_grad(), torch_default_dtype("float64"), Spy():
            TorchCall(model, port.torch_kwargs, port.torch_output)(_torch_tensors(x))
    except Exception:  # noqa: BLE001  (the model ran in float64 in the check; if the spy fails, it finds nothing)
        return []
    return list(dict.fromkeys(found + _float32_tables(port.torch_model)))


def _float32_tables(torch_model) -> list[tuple[str, str]]:
    """The torch modules holding a table computed in float32 that no state_dict carries to the port (a
    non-persistent buffer: XGLM's sinusoidal positions): the float64 run reads its float32 rounding, while
    the port computes its own. Tables of a few bits (masks, integers, powers of two) round to nothing."""
    found = []
    for name, module in torch_model.named_modules():
        for key in getattr(module, "_non_persistent_buffers_set", ()):
            table = module._buffers.get(key)
            if table is None or table.dtype not in (torch_dtype("float32"), torch_dtype("float16"),
                                                    torch_dtype("bfloat16")):
                continue
            values = table.detach().cpu().double().numpy()
            finite = values[np.isfinite(values)]
            if finite.size and np.any(finite * 2.0 ** 12 != np.round(finite * 2.0 ** 12)):
                found.append((f"torch {name}" if name else "the torch model", str(table.dtype).removeprefix("torch.")))
    return found


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _lowered(math_result: dict, lowered: list[tuple[str, str]]) -> dict:
    """The float64 verdict, knowing what computes in a lower float format inside the float64 run (`lowered`:
    (where, format) in the port's forward pass, the torch model's, the port's own optax transformation or
    schedule): named always. The localisation then looked past differences that the narrowest format's
    rounding gives (`criteria.cast_explains` of the tensor); a difference beyond that is the port's, and float64
    fails it there. Otherwise float64 cannot tell a porting bug from that rounding: the float32 parts, which
    compare against torch's own float32 error, decide. A bfloat16 or float16 cast explains any difference."""
    if not lowered:
        return math_result
    formats = {dtype: [name for name, d in lowered if d == dtype] for _, dtype in lowered}
    where = "; ".join(f"{', '.join(names)} {'computes' if len(names) == 1 else 'compute'} in {dtype}"
                      for dtype, names in formats.items()) + " during the float64 run"
    narrowest = max(formats, key=criteria.cast_explains)
    floor = criteria.cast_explains(narrowest)
    result = dict(math_result, float32_inside=list(dict.fromkeys(name for name, _ in lowered)))
    found = result.get("localised") or {}
    if result["within_tolerance"]:
        result["sentence"] += f" ({where})"
        return result
    size = found.get("tensor_rel_diff", found.get("rel_diff"))
    if found.get("stage") != "drift" and size is not None and size > floor:
        result["sentence"] = result["sentence"][:-1] + (
            f" ({where}; the difference in {found.get('tensor')} at step {found.get('step') or 'eval'}, {size:.1e} of "
            f"its magnitude, is beyond what {narrowest} rounding gives: {floor:.1e}).")
        return result
    result.update(passed=None, localised=None, sentence=(
        f"Same math (float64): not decidable: {where} (a cast in the model's or its library's code: "
        f"jax.nn.dot_product_attention's float32 softmax, softmax(dtype=torch.float32), an optax schedule or "
        f"MultiSteps accumulator in float32, an input cast to bfloat16), and no stage differs beyond what "
        f"{narrowest} rounding gives there ({floor:.1e} of a tensor; {result['max_rel_step_loss_diff']:.1e} relative "
        "in step losses): the float32 parts decide."))
    return result


def _check(dtype, passed, jax_run, torch_run, localised, first_step, first_epoch) -> dict:
    """One entry of the report's `checks`: a dtype, its verdict, where it failed (torch's names)."""
    check = {"dtype": dtype, "passed": bool(passed), **_loss_numbers(jax_run, torch_run),
             "first_failing_step": None if passed else first_step,
             "first_failing_epoch": None if passed else first_epoch,
             "stage": None, "layer": None, "tensor": None}
    if localised is not None:
        check.update({k: localised.get(k) for k in ("stage", "layer", "tensor")}, localised=localised)
        if localised.get("step"):  # the step where the cause is, which may precede the first differing loss
            check["first_failing_step"] = localised["step"]
    return check


def run_and_print(config, dtypes, data_dir=None, train_limit=None) -> int:
    """Load the data, check parity, print the report; the exit code (0 pass, 1 fail). For the examples."""
    train, test = data_lib.load_fashion_mnist(data_dir)
    report = check_parity(config, tuple(dtypes), train.take(train_limit), test)
    print(report)
    return 0 if report.passed else 1
