"""A model's inputs and outputs as users' models have them, for both frameworks alike.

Inputs are one array, a tuple of arrays (passed positionally) or a dict of arrays (passed as
keyword arguments); every leaf has the samples on its first axis. Floating leaves take a run's
dtype, integer leaves (token ids, masks, positions) stay integers. A model's return value is an
array, a tuple, a dict or a dataclass (`ModelOutput`); `prediction` picks what the loss takes.
The leaves may be numpy, JAX or torch arrays: nothing here imports a framework.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from jaxtrain.errors import InputTypeError, InputValueError


def is_structured(x) -> bool:
    return isinstance(x, (tuple, list, dict))


def leaves(x) -> list:
    """The arrays of an input, in order (a dict's in its keys' order)."""
    if isinstance(x, dict):
        return list(x.values())
    if isinstance(x, (tuple, list)):
        return list(x)
    return [x]


def map_leaves(fn: Callable, x):
    """`fn` applied to every array of an input, keeping its structure."""
    if isinstance(x, dict):
        return {k: fn(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return tuple(fn(v) for v in x)
    return fn(x)


def num_rows(x) -> int:
    lengths = {len(a) for a in leaves(x)}
    if len(lengths) != 1:
        raise InputValueError(f"the input arrays have different numbers of samples: {sorted(lengths)}")
    return lengths.pop()


def rows(x, index):
    """The samples `index` (an index array or slice) of every array."""
    return map_leaves(lambda a: a[index], x)


def is_integer(a) -> bool:
    dtype = getattr(a, "dtype", None)
    return dtype is not None and np.dtype(str(dtype).replace("torch.", "")).kind in "iub"


def call(model, x, **kwargs):
    """model(x), model(*x) or model(**x), with constant keyword arguments."""
    if isinstance(x, dict):
        return model(**x, **kwargs)
    if isinstance(x, (tuple, list)):
        return model(*x, **kwargs)
    return model(x, **kwargs)


def prediction(out, select: Callable | None = None) -> Any:
    """What the loss takes from a model's return value: `select(out)` when given; else the array
    itself, a `.logits` attribute, a `["logits"]` key, or the first element of a tuple."""
    if select is not None:
        return select(out)
    if hasattr(out, "shape") and hasattr(out, "dtype"):
        return out
    if getattr(out, "logits", None) is not None:
        return out.logits
    if isinstance(out, dict) and out.get("logits") is not None:
        return out["logits"]
    if isinstance(out, (tuple, list)) and out:
        return prediction(out[0])
    raise InputTypeError(f"cannot tell the prediction in a model output of type {type(out).__name__}: pass "
                    "torch_output= / flax_output= (a callable picking it)")


def tensor_leaves(out) -> list:
    """Every array in a module's output (tuples, lists, dicts, dataclasses, nested), in order; None skipped."""
    if out is None:
        return []
    if hasattr(out, "shape") and hasattr(out, "dtype"):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in tensor_leaves(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in tensor_leaves(v)]
    if dataclasses.is_dataclass(out):
        return [t for f in dataclasses.fields(out) for t in tensor_leaves(getattr(out, f.name))]
    return []
