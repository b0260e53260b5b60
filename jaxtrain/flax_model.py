"""A Flax module, NNX or linen, as one pure function of its state: what `jax.jit` compiles.

NNX (Flax's recommended API) is split once into a graph definition, its
parameters (`nnx.Param`) and everything else it keeps (BatchNorm statistics,
RNG counters: the "buffers"); `apply` merges them, switches the model with
`model.train()` / `model.eval()` as torch does, calls it and splits the
buffers back out (Flax's performance guide: split once, jit a pure function).
A linen module is called with the keyword `train: bool` (the Flax examples'
convention) and its non-`params` collections are the buffers.

Every call of a submodule goes through one interceptor (linen's
`nn.intercept_methods`; for NNX the same, done by wrapping the `__call__` of
the model's own module classes while it is traced). It does two things:
- dropout (`nnx.Dropout`, `nn.Dropout`): the keep-mask comes from `dropout`
  (given, in call order: the parity check injects the masks torch uses) or is
  drawn from `rng`, one fold per call;
- recording: the input and output of every module that holds parameters of its
  own, in call order, when asked (`calls`): the weight mapping pairs layers by it
  and the parity check compares layer outputs with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from jaxtrain.errors import InputTypeError
from jaxtrain.inputs import call, is_structured, prediction, tensor_leaves


@dataclasses.dataclass(frozen=True)
class Call:
    """One recorded module call: its path (dotted), the module's class name, and for dropout the rate."""

    path: str
    kind: str
    dropout_rate: float | None = None
    owns: bool = True  # holds parameters itself (False: only through its submodules)
    in_shape: tuple | None = None
    out_shape: tuple | None = None
    out_dtype: str | None = None


def path_str(path) -> str:
    """('stack', 'layers', 0) or a jax key path -> 'stack.layers.0'. An NNX Variable's own
    `.value` attribute is not part of the name; a module or tensor named `value` is."""
    names = []
    for key in path:
        if isinstance(key, jax.tree_util.GetAttrKey) and key.name == "value":
            continue
        names.append(str(getattr(key, "key", getattr(key, "name", key))))
    return ".".join(names)


def leaves_by_path(tree) -> dict:
    """{'stack.layers.0.kernel': array} for a params/buffers tree (nnx.State or nested dicts)."""
    return {path_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def replace_leaves(tree, values: dict):
    """`tree` with the leaves named in `values` (dotted paths) replaced."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return jax.tree_util.tree_unflatten(treedef, [values.get(path_str(p), leaf) for p, leaf in paths])


def _dropout(x, rate: float, keep, rng, index: int):
    """torch's inverted dropout: input * (keep mask / (1 - p))."""
    if keep is None:
        keep = jax.random.bernoulli(jax.random.fold_in(rng, index), 1.0 - rate, x.shape)
    return x * (jnp.asarray(keep).astype(x.dtype) / (1.0 - rate))


class _Interceptor:
    """What happens at every submodule call during one traced `apply`."""

    def __init__(self, dropout, rng, record: bool):
        self.dropout, self.rng, self.record = dropout, rng, record
        self.calls: list[Call] = []  # in completion order, as torch's forward hooks fire
        self.tensors: list[tuple] = []  # (input, output) of each recorded call
        self.dropout_calls = 0
        self.scanning = 0  # inside a scan (nn.RNN): values there cannot leave it, only the RNN's output

    def on_dropout(self, path: str, x, rate: float, deterministic: bool):
        if deterministic or rate == 0.0:
            return x
        keep = None if self.dropout is None else self.dropout[self.dropout_calls]
        out = _dropout(x, rate, keep, self.rng, self.dropout_calls)
        self.dropout_calls += 1
        if self.record:
            self.calls.append(Call(path, "Dropout", rate))
            self.tensors.append((None, None) if self.scanning else (x, out))
        return out

    def on_layer(self, path: str, kind: str, args, out, owns: bool):
        """A module holding parameters (itself or below) was called: its first input array and
        its first output array (tuples, dicts and dataclasses are searched in order)."""
        if self.record:
            ins, outs = tensor_leaves(list(args)), tensor_leaves(out)
            self.calls.append(Call(path, kind, owns=owns))
            self.tensors.append((None, None) if self.scanning else (ins[0] if ins else None, outs[0] if outs else None))

    def scanned(self, start: int, args, out) -> None:
        """A scan (nn.RNN) ended: its cells' values are the whole sequence's, its input and output."""
        ins, outs = tensor_leaves(list(args)), tensor_leaves(out)
        for k in range(start, len(self.calls)):
            if self.calls[k].kind.endswith("Cell"):
                self.tensors[k] = (ins[0] if ins else None, outs[0] if outs else None)


# --------------------------------------------------------------------------- NNX


def _owns_params(module) -> bool:
    return any(isinstance(v, nnx.Param) for v in vars(module).values())


def _has_params(module) -> bool:
    return bool(jax.tree_util.tree_leaves(nnx.state(module, nnx.Param)))


@contextlib.contextmanager
def _nnx_intercepted(model: nnx.Module, hooks: _Interceptor):
    """Route every `__call__` of `model`'s submodules through `hooks` while tracing."""
    modules = list(nnx.iter_modules(model))
    paths = {id(m): path_str(p) for p, m in modules}
    with_params = {id(m) for _, m in modules if _has_params(m)}
    active: set = set()
    patched = {}
    for cls in {type(m) for _, m in modules}:
        for klass in cls.__mro__:
            if "__call__" in vars(klass) and klass not in patched and klass is not object:
                patched[klass] = vars(klass)["__call__"]

    def wrap(original):
        def __call__(self, *args, **kwargs):
            key = id(self)
            if key not in paths or key in active:
                return original(self, *args, **kwargs)
            active.add(key)
            try:
                if isinstance(self, nnx.Dropout):
                    deterministic = kwargs.get("deterministic")
                    deterministic = self.deterministic if deterministic is None else deterministic
                    return hooks.on_dropout(paths[key], args[0], self.rate, bool(deterministic))
                with jax.named_scope(paths[key] or "model"):  # names the layer in the traced program
                    out = original(self, *args, **kwargs)
                owns = _owns_params(self)
                if owns or (key in with_params and paths[key]):  # the model itself only if it owns some
                    hooks.on_layer(paths[key], type(self).__name__, (*args, *kwargs.values()), out, owns)
                return out
            finally:
                active.discard(key)

        return __call__

    try:
        for klass, original in patched.items():
            setattr(klass, "__call__", wrap(original))
        yield
    finally:
        for klass, original in patched.items():
            setattr(klass, "__call__", original)


# --------------------------------------------------------------------------- linen


def _wants(value, dtype) -> bool:
    """A module's floating dtype field that differs from the run's."""
    try:
        return dtype is not None and value is not None and jnp.issubdtype(value, jnp.floating) \
            and jnp.dtype(value) != jnp.dtype(dtype)
    except TypeError:
        return False


def _set_dtype(module: nn.Module, dtype, depth: int = 0) -> None:
    """Set a linen module's floating `dtype`/`param_dtype` fields, and those of the modules it holds
    as fields (nn.RNN's cell, whose `initialize_carry` is not a method the interceptor sees)."""
    for field in ("dtype", "param_dtype"):
        if _wants(getattr(module, field, None), dtype):
            object.__setattr__(module, field, dtype)
    if depth < 3 and dataclasses.is_dataclass(module):
        for f in dataclasses.fields(module):
            value = getattr(module, f.name, None)
            if isinstance(value, nn.Module) and f.name != "parent":
                _set_dtype(value, dtype, depth + 1)


def _linen_interceptor(hooks: _Interceptor, dtype=None):
    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if dtype is not None:  # float64 means float64, in modules built at call time too
            _set_dtype(module, jnp.dtype(dtype))
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        path = ".".join(module.path)
        if isinstance(module, nn.Dropout):
            deterministic = kwargs.get("deterministic", args[1] if len(args) > 1 else None)
            deterministic = module.deterministic if deterministic is None else deterministic
            return hooks.on_dropout(path, args[0], module.rate, bool(deterministic))
        scan, start = isinstance(module, nn.RNN), len(hooks.calls)
        hooks.scanning += scan
        try:
            with jax.named_scope(".".join(module.path) or "model"):
                out = next_fun(*args, **kwargs)
        finally:
            hooks.scanning -= scan
        if scan and not hooks.scanning:
            hooks.scanned(start, (*args, *kwargs.values()), out)
        below = module.variables.get("params", {}) if module.scope is not None else {}
        owns = any(not isinstance(v, dict) and not hasattr(v, "items") for v in below.values())
        if owns or (below and path):  # the model itself only if it owns some
            hooks.on_layer(path, type(module).__name__, (*args, *kwargs.values()), out, owns)
        return out

    return intercept


# --------------------------------------------------------------------------- the pure function


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: jit keys on apply
class PureModel:
    """`apply(params, buffers, x, train, dropout=None, rng=None, record=False)` ->
    `(outputs, buffers, recorded)`: pure, jit-able. `params` and `buffers` are the
    initial state; `recorded` is a list of (input, output) per call of `calls(...)`."""

    kind: str  # "nnx" | "linen"
    module: Any = dataclasses.field(repr=False)
    params: Any = dataclasses.field(repr=False)
    buffers: Any = dataclasses.field(repr=False)
    graphdef: Any = dataclasses.field(default=None, repr=False)
    kwargs: dict = dataclasses.field(default_factory=dict, repr=False)  # constant keyword arguments of every call
    output: Any = dataclasses.field(default=None, repr=False)  # picks the prediction (jaxtrain.inputs.prediction)
    compute_dtype: Any = None  # set by computing_in: every module's floating dtype fields, at every call

    def apply(self, params, buffers, x, train: bool, dropout=None, rng=None, record: bool = False):
        return self._run(params, buffers, x, train, dropout, rng, record)[:3]

    def computing_in(self, dtype) -> "PureModel":
        """The same model computing in `dtype`: every floating `dtype` / `param_dtype` a module fixed
        (nnx.Embed fixes float32 at construction; linen modules carry them as fields) set to it, so
        a float64 run computes in float64. Parameters and buffers are cast by the trainer."""
        dtype = jnp.dtype(dtype)
        if self.kind == "nnx":
            module = nnx.clone(self.module)
            for _, m in nnx.iter_modules(module):
                for attr in ("dtype", "param_dtype"):
                    if _wants(getattr(m, attr, None), dtype):
                        setattr(m, attr, dtype)
            graphdef, params, buffers = nnx.split(module, nnx.Param, ...)
            return dataclasses.replace(self, module=module, params=params, buffers=buffers, graphdef=graphdef,
                                       compute_dtype=dtype)
        fields = {f for f in ("dtype", "param_dtype") if _wants(getattr(self.module, f, None), dtype)}
        module = self.module.clone(**{f: dtype for f in fields}) if fields else self.module
        return dataclasses.replace(self, module=module, compute_dtype=dtype)

    def lower_precision(self, x, params=None, buffers=None) -> list[tuple]:
        """Where a forward pass casts a value of the run's dtype down to a lower float dtype
        (`jax.nn.dot_product_attention`'s float32 softmax in a float64 run, a hard-coded
        `.astype(jnp.float32)`, a bfloat16 cast): each cast's scopes, outermost first (module paths; "model" the
        root), and the float dtype it casts to."""
        params = self.params if params is None else params
        buffers = self.buffers if buffers is None else buffers
        jaxpr = jax.make_jaxpr(lambda p, b, x: self._run(p, b, x, False, None, jax.random.key(0), False)[0])(
            params, buffers, x)
        found: list = []
        _lowering_casts(jaxpr.jaxpr, "", found)
        return list(dict.fromkeys(found))

    def calls(self, x, train: bool, params=None, buffers=None) -> list[Call]:
        """The recorded calls (layers with parameters, and dropout) of one forward pass, by tracing only."""
        params = self.params if params is None else params
        buffers = self.buffers if buffers is None else buffers
        box: list = []

        def run(p, b, x):
            _, _, tensors, calls = self._run(p, b, x, train, None, jax.random.key(0), True)
            box.append(calls)
            return tensors

        shapes = jax.eval_shape(run, params, buffers, x)
        shape = lambda t: None if getattr(t, "shape", None) is None else tuple(t.shape)  # noqa: E731
        return [dataclasses.replace(c, in_shape=shape(i), out_shape=shape(o), out_dtype=None if o is None else str(o.dtype))
                for c, (i, o) in zip(box[0], shapes)]

    def _run(self, params, buffers, x, train, dropout, rng, record):
        hooks = _Interceptor(dropout, jax.random.key(0) if rng is None else rng, record)
        if self.kind == "nnx":
            model = nnx.merge(self.graphdef, params, buffers, copy=True)  # fresh Variables at this trace level
            model.train() if train else model.eval()
            with _nnx_intercepted(model, hooks):
                out = call(model, x, **self.kwargs)
            _, _, buffers = nnx.split(model, nnx.Param, ...)
        else:
            variables = {"params": params, **buffers}
            apply = lambda *args, **kw: self.module.apply(variables, *args, **kw)  # noqa: E731
            with nn.intercept_methods(_linen_interceptor(hooks, self.compute_dtype)):
                if train and buffers:
                    out, buffers = call(apply, x, **linen_mode(self.module, True), **self.kwargs,
                                        mutable=list(buffers))
                    buffers = dict(buffers)
                else:
                    out = call(apply, x, **linen_mode(self.module, train), **self.kwargs)
        return prediction(out, self.output), buffers, hooks.tensors, hooks.calls


def _lowering_casts(jaxpr, prefix: str, found: list) -> None:
    for eqn in jaxpr.eqns:
        stack = "/".join(p for p in (prefix, str(eqn.source_info.name_stack)) if p)
        if eqn.primitive.name == "convert_element_type":
            before, after = eqn.invars[0].aval.dtype, eqn.params["new_dtype"]
            if jnp.issubdtype(before, jnp.floating) and jnp.issubdtype(after, jnp.floating) \
                    and jnp.finfo(after).bits < jnp.finfo(before).bits:
                found.append((tuple(p for p in stack.split("/") if p), jnp.dtype(after).name))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    _lowering_casts(inner, stack, found)


def linen_mode(module: nn.Module, train: bool) -> dict:
    """How a linen module is told train/eval: `train=` when its `__call__` takes `train`, else
    `deterministic=not train` when it takes `deterministic` (transformer ports), else nothing."""
    import inspect

    try:
        names = inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return {"train": train}
    if "train" in names:
        return {"train": train}
    if "deterministic" in names:
        return {"deterministic": not train}
    return {}


def pure_model(module, sample_input=None, seed: int = 0, kwargs: dict | None = None, output=None) -> PureModel:
    """Split an `nnx.Module` (already built), or initialise a `flax.linen.Module` on `sample_input`
    (an array, tuple or dict of arrays). `kwargs`: constant keyword arguments of every call;
    `output`: picks the prediction from what the model returns (`jaxtrain.inputs.prediction`)."""
    kwargs = dict(kwargs or {})
    if isinstance(module, nnx.Module):
        graphdef, params, buffers = nnx.split(module, nnx.Param, ...)
        return PureModel("nnx", module, params, buffers, graphdef, kwargs, output)
    if isinstance(module, nn.Module):
        if sample_input is None:
            raise ValueError("a linen module needs a sample input to be initialised")
        key = jax.random.key(seed)
        init = lambda *args, **kw: module.init({"params": key, "dropout": key}, *args, **kw)  # noqa: E731
        sample = jax.tree.map(jnp.asarray, sample_input) if is_structured(sample_input) else jnp.asarray(sample_input)
        if isinstance(sample, list):
            sample = tuple(sample)
        variables = dict(call(init, sample, **linen_mode(module, False), **kwargs))
        params = variables.pop("params", {})
        return PureModel("linen", module, params, variables, None, kwargs, output)
    raise InputTypeError(f"expected a flax.nnx.Module or a flax.linen.Module, got {type(module).__name__}")


def cast_floats(tree, dtype):
    """A copy of `tree` with its floating leaves in `dtype` (integer counters and PRNG keys keep
    theirs). A copy: the training state is donated to XLA, the model's own arrays must survive."""
    def cast(leaf):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.array(leaf, dtype)
        return leaf.copy() if hasattr(leaf, "copy") else leaf

    return jax.tree.map(cast, tree)

