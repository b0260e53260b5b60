"""Weights between a torch `state_dict` and a Flax port's params/buffers, found automatically.

Layers pair up in call order: one forward pass of each model (torch's forward
hooks; Flax's call interceptor, `jaxtrain.flax_model`) lists the modules that
own parameters or buffers, in the order they finish; the n-th torch layer is
the n-th Flax layer unless `weight_map` says otherwise. Each pair's tensors
move by the torch layer's type:

| torch                      | Flax                          | layout                       |
|----------------------------|-------------------------------|------------------------------|
| Linear weight (out, in)    | kernel (in, out)              | transposed                   |
| Conv{1,2,3}d weight (O,I,…)| kernel (…, I, O)              | spatial first, then I, O     |
| BatchNorm weight/bias      | scale/bias                    | as is                        |
| BatchNorm running_mean/var | mean/var (buffers)            | as is; num_batches_tracked dropped |
| LayerNorm/GroupNorm w/b    | scale/bias                    | as is                        |
| Embedding weight (num, dim)| embedding (num, dim)          | as is                        |
| any other layer            | the tensor of the same name   | as is                        |

Everything is shape-checked; what does not pair raises `PortMappingError`
listing both sides' names and shapes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from jaxtrain.errors import PortMappingError
from jaxtrain.flax_model import PureModel, leaves_by_path, replace_leaves


def _transpose(a):
    return np.ascontiguousarray(np.asarray(a).T)


def _conv_to_flax(w):
    w = np.asarray(w)
    return np.ascontiguousarray(np.transpose(w, tuple(range(2, w.ndim)) + (1, 0)))


def _conv_to_torch(k):
    k = np.asarray(k)
    n = k.ndim
    return np.ascontiguousarray(np.transpose(k, (n - 1, n - 2) + tuple(range(n - 2))))


def _same(a):
    return np.asarray(a)


# torch layer type -> {torch tensor: (flax name, to_flax, to_torch)}
_AFFINE = {"weight": ("scale", _same, _same), "bias": ("bias", _same, _same)}
RULES = {
    "Linear": {"weight": ("kernel", _transpose, _transpose), "bias": ("bias", _same, _same)},
    "Conv": {"weight": ("kernel", _conv_to_flax, _conv_to_torch), "bias": ("bias", _same, _same)},
    "BatchNorm": {**_AFFINE, "running_mean": ("mean", _same, _same), "running_var": ("var", _same, _same)},
    "LayerNorm": _AFFINE,
    "GroupNorm": _AFFINE,
    "Embedding": {"weight": ("embedding", _same, _same)},
}
DROPPED = ("num_batches_tracked",)


def rule_for(torch_module) -> tuple[str, dict]:
    """(the rule's name, its tensor table) for a torch layer; ('same names', {}) for others."""
    import torch.nn as tnn

    if isinstance(torch_module, tnn.Linear):
        return "Linear", RULES["Linear"]
    if isinstance(torch_module, (tnn.Conv1d, tnn.Conv2d, tnn.Conv3d)):
        return "Conv", RULES["Conv"]
    if isinstance(torch_module, tnn.modules.batchnorm._BatchNorm):
        return "BatchNorm", RULES["BatchNorm"]
    if isinstance(torch_module, tnn.LayerNorm):
        return "LayerNorm", RULES["LayerNorm"]
    if isinstance(torch_module, tnn.GroupNorm):
        return "GroupNorm", RULES["GroupNorm"]
    if isinstance(torch_module, tnn.Embedding):
        return "Embedding", RULES["Embedding"]
    return "same names", {}


@dataclasses.dataclass(frozen=True)
class TensorPair:
    torch_name: str  # "features.0.weight"
    flax_path: str  # "features.layers.0.kernel"
    to_flax: Callable
    to_torch: Callable
    buffer: bool


@dataclasses.dataclass(frozen=True)
class Mapping:
    """The pairing of one torch model with one Flax port: layers and tensors, both ways."""

    layers: list  # [(torch module name, flax module path, rule name)] in torch's call order
    tensors: list  # [TensorPair]
    torch_types: dict  # torch module name -> class name
    weight_map: Callable | None = None

    def to_flax(self, model: PureModel, weights: dict):
        """torch state_dict values (numpy) -> (params, buffers) trees of the Flax port."""
        params, buffers = {}, {}
        for pair in self.tensors:
            value, path = pair.to_flax(weights[pair.torch_name]), pair.flax_path
            if self.weight_map is not None:
                custom = self.weight_map(pair.torch_name, np.asarray(weights[pair.torch_name]))
                if custom is not None:
                    path, value = custom[0], np.asarray(custom[1])
            (buffers if pair.buffer else params)[path] = value
        return replace_leaves(model.params, params), replace_leaves(model.buffers, buffers)

    def to_torch(self, tree, buffers: bool = False) -> dict:
        """A params-shaped tree (params, grads, updates) or a buffers tree -> {torch name: float64 numpy}."""
        leaves = leaves_by_path(tree)
        return {p.torch_name: np.asarray(p.to_torch(np.asarray(leaves[p.flax_path], np.float64)))
                for p in self.tensors if p.buffer == buffers and p.flax_path in leaves}

    def torch_name_of_layer(self, flax_path: str) -> str | None:
        return next((t for t, f, _ in self.layers if f == flax_path), None)

    def rule_of(self, torch_layer: str) -> str | None:
        return next((r for t, _, r in self.layers if t == torch_layer), None)


def _describe(named_shapes: dict) -> str:
    return ", ".join(f"{name} {tuple(shape)}" for name, shape in named_shapes.items()) or "nothing"


def _group(leaves: dict, layer_paths) -> dict:
    """Flax leaves grouped by the layer that owns them: {layer path: {tensor name: array}}."""
    out = {p: {} for p in layer_paths}
    for path, leaf in leaves.items():
        layer, _, name = path.rpartition(".")
        if layer in out:
            out[layer][name] = leaf
    return out


def _is_state(leaf) -> bool:
    """Floating-point leaves are model state; integer counters and PRNG keys (NNX Dropout's) are not."""
    import jax.numpy as jnp

    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def build_mapping(torch_layers: list, flax_layers: list, torch_model, model: PureModel,
                  weight_map=None) -> Mapping:
    """Pair the layers (torch names in call order; Flax paths in call order), then their tensors.

    `weight_map`: {torch module name: flax module path} overrides the call-order pairing;
    a callable `(torch tensor name, numpy value) -> (flax leaf path, value) or None`
    converts tensors itself (None: the automatic rule)."""
    modules = dict(torch_model.named_modules())
    overrides = weight_map if isinstance(weight_map, dict) else {}
    params, buffers = leaves_by_path(model.params), leaves_by_path(model.buffers)
    buffers = {k: v for k, v in buffers.items() if _is_state(v)}
    # a linen buffer's path starts with its collection ("batch_stats.bn.mean"): its layer is "bn"
    real_path = {**{k: k for k in params}, **{(k.split(".", 1)[1] if model.kind == "linen" else k): k for k in buffers}}
    flax_state = {**params, **{(k.split(".", 1)[1] if model.kind == "linen" else k): v for k, v in buffers.items()}}
    flax_owned = _group(flax_state, flax_layers)
    torch_owned = {name: {**dict(modules[name].named_parameters(recurse=False)),
                          **{k: v for k, v in modules[name].named_buffers(recurse=False) if k not in DROPPED}}
                   for name in torch_layers}

    unknown = [k for k in overrides if k not in modules]
    if unknown:
        raise PortMappingError(f"weight_map names torch modules that do not exist: {', '.join(unknown)}; torch's "
                               f"layers: {', '.join(torch_layers)}")
    free_flax = [p for p in flax_layers if p not in overrides.values()]
    free_torch = [t for t in torch_layers if t not in overrides]
    if len(free_flax) != len(free_torch):
        raise PortMappingError(
            f"the models have different numbers of layers with weights: torch {len(torch_layers)} "
            f"[{'; '.join(f'{t}: ' + _describe({k: v.shape for k, v in torch_owned[t].items()}) for t in torch_layers)}]"
            f", Flax {len(flax_layers)} "
            f"[{'; '.join(f'{p}: ' + _describe({k: v.shape for k, v in flax_owned[p].items()}) for p in flax_layers)}]"
            "; pass weight_map={torch_module: flax_path} for the ones that do not pair in call order")
    pairs = dict(zip(free_torch, free_flax))
    pairs.update({t: p for t, p in overrides.items()})

    layers, tensors = [], []
    for torch_name in torch_layers:
        flax_path = pairs[torch_name]
        if flax_path not in flax_owned:
            raise PortMappingError(f"weight_map: {flax_path!r} is not a Flax layer with weights; Flax's layers: "
                                   f"{', '.join(flax_layers)}")
        rule_name, rule = rule_for(modules[torch_name])
        torch_tensors, flax_tensors = torch_owned[torch_name], flax_owned[flax_path]
        used = set()
        for tensor_name, value in torch_tensors.items():
            flax_name, to_flax, to_torch = rule.get(tensor_name, (tensor_name, _same, _same))
            expected = to_flax(np.zeros(tuple(value.shape), np.float32)).shape
            got = flax_tensors.get(flax_name)
            if got is None or tuple(got.shape) != tuple(expected):
                raise PortMappingError(
                    f"{torch_name}.{tensor_name} {tuple(value.shape)} ({rule_name} rule: Flax {flax_name} "
                    f"{tuple(expected)}) has no match in Flax layer {flax_path} [" +
                    _describe({k: v.shape for k, v in flax_tensors.items()}) + "]; torch layer " +
                    f"{torch_name} [{_describe({k: v.shape for k, v in torch_tensors.items()})}]")
            used.add(flax_name)
            is_buffer = tensor_name not in dict(modules[torch_name].named_parameters(recurse=False))
            tensors.append(TensorPair(f"{torch_name}.{tensor_name}" if torch_name else tensor_name,
                                      real_path[f"{flax_path}.{flax_name}" if flax_path else flax_name],
                                      to_flax, to_torch, is_buffer))
        left = set(flax_tensors) - used
        if left:
            raise PortMappingError(
                f"Flax layer {flax_path} has tensors torch layer {torch_name} lacks: " +
                _describe({k: flax_tensors[k].shape for k in sorted(left)}) +
                f" (torch: {_describe({k: v.shape for k, v in torch_tensors.items()})})")
        layers.append((torch_name, flax_path, rule_name))
    orphans = [k for k in flax_state if k.rpartition(".")[0] not in flax_owned]
    if orphans:
        raise PortMappingError(f"Flax tensors outside any layer the forward pass calls: {', '.join(orphans)}")
    torch_orphans = [n for n, _ in torch_model.named_parameters() if n.rpartition(".")[0] not in torch_owned]
    if torch_orphans:
        raise PortMappingError(f"torch parameters of layers the forward pass never calls: {', '.join(torch_orphans)}")
    return Mapping(layers, tensors, {t: type(modules[t]).__name__ for t in torch_layers},
                   weight_map if callable(weight_map) else None)
