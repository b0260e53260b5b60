"""Load PyTorch weights into a Flax port, and a port's weights back into PyTorch.

    variables = torch_to_flax(torch_model_or_state_dict, flax_model, example_inputs)
    flax_to_torch(variables_or_nnx_model, torch_model, example_inputs, flax_model=linen_module)

Which torch tensor is which Flax leaf, and how its layout changes, is worked out by running both
models once on `example_inputs` (torch's layout; one array, a tuple or a dict; integer arrays stay
integer): the pairing and the layer rules `check_port` uses (`jaxtrain.parity.check.pair_models`,
`jaxtrain.parity.mapping`), the same code. `flax_input` and `weight_map` mean what they mean there.
"""

from __future__ import annotations

import copy

import numpy as np

from jaxtrain.errors import PortMappingError


def torch_to_flax(torch_model_or_state_dict, flax_model, example_inputs, *, torch_model=None, flax_input=None,
                  weight_map=None, dtype=None):
    """The port's variables holding the torch weights: for linen `{"params": ..., "batch_stats": ...}`
    (every collection the module has); for NNX `flax_model` itself, its state updated in place.

    `torch_model_or_state_dict`: a torch.nn.Module, or a state_dict (`torch.load(path,
    map_location="cpu")`) together with `torch_model=` the module class instance that produced it.
    `dtype`: cast the floating variables (default: the torch tensors' own)."""
    from flax import nnx

    from jaxtrain.flax_model import cast_floats

    model, state = _torch_side(torch_model_or_state_dict, torch_model)
    pairing = _pair(model, flax_model, example_inputs, flax_input, weight_map)
    weights = {k: v.detach().cpu().numpy() for k, v in state.items()}
    params, buffers = pairing.mapping.to_flax(pairing.flax, weights)
    if dtype is not None:
        params, buffers = (cast_floats(t, dtype) for t in (params, buffers))
    if pairing.flax.kind == "linen":
        return {"params": params, **buffers}
    nnx.update(flax_model, params, buffers)
    return flax_model


def flax_to_torch(variables_or_nnx_model, torch_model, example_inputs, *, flax_model=None, flax_input=None,
                  weight_map=None):
    """Load a port's variables into `torch_model` (`load_state_dict(strict=True)`) and return it.

    `variables_or_nnx_model`: an nnx.Module, or a linen variables dict with `flax_model=` the linen
    module they belong to. Every torch tensor the mapping pairs is replaced, in its own dtype; a
    tied tensor (an LM head sharing its embedding) follows the tensor it shares; buffers the port
    has no counterpart for (`num_batches_tracked`, constant tables) keep the torch model's values."""
    import torch
    from flax import nnx

    if isinstance(variables_or_nnx_model, nnx.Module):
        flax_model = variables_or_nnx_model
        _, params, buffers = nnx.split(flax_model, nnx.Param, ...)
    elif isinstance(variables_or_nnx_model, dict) and "params" in variables_or_nnx_model:
        if flax_model is None:
            raise PortMappingError("linen variables need flax_model=, the linen module they belong to")
        params = variables_or_nnx_model["params"]
        buffers = {k: v for k, v in variables_or_nnx_model.items() if k != "params"}
    else:
        raise PortMappingError("expected an nnx.Module or a linen variables dict with 'params', got "
                               f"{type(variables_or_nnx_model).__name__}")
    if not isinstance(torch_model, torch.nn.Module):
        raise PortMappingError(f"torch_model must be a torch.nn.Module, got {type(torch_model).__name__}")
    pairing = _pair(torch_model, flax_model, example_inputs, flax_input, weight_map)
    try:
        values = {**pairing.mapping.to_torch(params, values=True),
                  **pairing.mapping.to_torch(buffers, buffers=True, values=True)}
    except (KeyError, ValueError, TypeError) as e:
        raise PortMappingError(f"the variables do not fit the Flax model's tensors: {type(e).__name__}: {e}") from None
    current = torch_model.state_dict(keep_vars=True)
    missing = [n for n, p in torch_model.named_parameters() if n not in values]
    if missing:
        raise PortMappingError(f"torch parameters with no Flax counterpart: {', '.join(missing)}")
    by_tensor = {id(t): n for n, t in current.items() if n in values}
    state = {}
    for name, tensor in current.items():
        source = name if name in values else by_tensor.get(id(tensor))  # a tied tensor: its first name's value
        if source is None:
            state[name] = tensor.detach().clone()
            continue
        value = np.asarray(values[source])
        if value.shape != tuple(tensor.shape):
            raise PortMappingError(f"torch {name} has shape {tuple(tensor.shape)}, the port's value {value.shape}")
        state[name] = torch.from_numpy(value.copy()).to(tensor.dtype)
    torch_model.load_state_dict(state, strict=True)
    return torch_model


def _torch_side(model_or_state, torch_model):
    """(a torch module holding the weights, its state_dict)."""
    import torch

    if isinstance(model_or_state, torch.nn.Module):
        return model_or_state, model_or_state.state_dict()
    if not isinstance(model_or_state, dict):
        raise PortMappingError(f"expected a torch.nn.Module or a state_dict, got {type(model_or_state).__name__}")
    if not isinstance(torch_model, torch.nn.Module):
        raise PortMappingError("a state_dict needs torch_model=, an instance of the module that saved it")
    model = copy.deepcopy(torch_model)
    try:
        model.load_state_dict(model_or_state, strict=True)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise PortMappingError(f"the state_dict does not fit {type(torch_model).__name__}: "
                               f"{' '.join(lines[1:3]) or lines[0]}") from None
    return model, model_or_state


def _pair(torch_model, flax_model, example_inputs, flax_input, weight_map):
    """The mapping; what it knows cannot convert exactly (one Flax bias for torch's two) as warnings."""
    import warnings

    from jaxtrain.parity.check import pair_models

    pairing = pair_models(torch_model, flax_model, example_inputs, flax_input, weight_map)
    for layer, note in pairing.mapping.notes:
        if "padding_idx" not in note:
            warnings.warn(f"{layer}: {note}", UserWarning, stacklevel=3)
    return pairing


# --------------------------------------------------------------------------- files (the CLI's)


def save_flax(variables_or_nnx_model, path) -> None:
    """An orbax checkpoint of the port's variables: `{"params": ..., "batch_stats": ..., ...}` as
    plain nested dicts (an NNX model's Param and BatchStat state in the same shape)."""
    from pathlib import Path

    import orbax.checkpoint as ocp

    tree = _plain(variables_or_nnx_model)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(Path(path).resolve(), tree)
    checkpointer.wait_until_finished()


def load_flax(path, flax_model):
    """What `save_flax` wrote: linen variables, or `flax_model` (NNX) with its state replaced."""
    from pathlib import Path

    import orbax.checkpoint as ocp
    from flax import nnx

    try:
        tree = ocp.StandardCheckpointer().restore(Path(path).resolve())
    except Exception as e:  # orbax raises many types for a missing or foreign checkpoint
        raise PortMappingError(f"{path}: not an orbax checkpoint of Flax variables ({type(e).__name__})") from None
    if not isinstance(flax_model, nnx.Module):
        return dict(tree)
    for kind, key in ((nnx.Param, "params"), (nnx.BatchStat, "batch_stats")):
        state = nnx.state(flax_model, kind)
        if key in tree:
            try:
                state.replace_by_pure_dict(tree[key])
            except (KeyError, ValueError, TypeError) as e:
                raise PortMappingError(f"{path}: its {key} do not fit the Flax model ({type(e).__name__}: {e})") from None
            nnx.update(flax_model, state)
    return flax_model


def _plain(variables_or_nnx_model) -> dict:
    import jax
    from flax import nnx

    if isinstance(variables_or_nnx_model, nnx.Module):
        tree = {"params": nnx.state(variables_or_nnx_model, nnx.Param).to_pure_dict()}
        stats = nnx.state(variables_or_nnx_model, nnx.BatchStat).to_pure_dict()
        if jax.tree.leaves(stats):
            tree["batch_stats"] = stats
        return tree
    return jax.tree.map(np.asarray, dict(variables_or_nnx_model))


def example_inputs(shape, vocab: int | None = None, rows: int = 2, seed: int = 0):
    """Inputs to pair two models on, torch's layout: `rows` x `shape` standard normal floats, or token
    ids below `vocab`. Their values only need to tell layers (and channel layouts) apart."""
    rng = np.random.default_rng(seed)
    if vocab:
        return rng.integers(0, vocab, (rows, *shape)).astype(np.int64)
    return rng.normal(size=(rows, *shape)).astype(np.float32)
