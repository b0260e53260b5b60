"""What the port writer reads of a torch model: each module class's `forward` as a torch.fx graph, with the
shape of every value on the example inputs, and where in the user's source each operation was written.

Every submodule is a leaf of its parent's graph (its own class is traced on its own), except the containers
(`nn.Sequential`, `nn.ModuleList`), which fx traces through: their children are called from the parent.
"""

from __future__ import annotations

import dataclasses
import inspect
import operator
import re
from typing import Any

CONTAINERS = ("Sequential", "ModuleList")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)')


@dataclasses.dataclass
class Traced:
    """One torch module instance's forward: its fx graph (None where fx cannot trace it, `error` then says why)."""

    module: Any
    graph: Any = None
    error: str | None = None

    @property
    def where(self) -> str:
        """The forward's file and first line."""
        forward = inspect.unwrap(type(self.module).forward)
        try:
            return f"{_short(inspect.getsourcefile(forward))}:{inspect.getsourcelines(forward)[1]}"
        except (OSError, TypeError):
            return type(self.module).__qualname__


def is_container(module) -> bool:
    return type(module).__name__ in CONTAINERS and type(module).__module__.startswith("torch.nn")


def is_library(module) -> bool:
    """A torch.nn module (translated by a rule of `jaxtrain.port.modules`), not the user's own class."""
    return type(module).__module__.startswith("torch.nn.") and not is_container(module)


@dataclasses.dataclass
class Call:
    """A submodule's first call on the example inputs: its arguments and what it returned."""

    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)
    output: Any = None
    returned: bool = False


def first_inputs(model, example_inputs) -> dict:
    """{submodule's path: its first `Call`} on `example_inputs` (a tuple of positional arguments, or a dict of
    keyword arguments)."""
    import torch

    from jaxtrain.inputs import call

    seen: dict = {}

    def before(m, args, kwargs, name):
        seen.setdefault(name, Call(args, kwargs))

    def after(m, args, kwargs, output, name):
        if not seen[name].returned:
            seen[name].output, seen[name].returned = output, True

    # a training port keeps no key/value cache (transformers' models build one in eval() unless told not to)
    extra = {"use_cache": False} if "use_cache" in inspect.signature(type(model).forward).parameters else {}
    hooks = [h for name, m in model.named_modules() for h in (
        m.register_forward_pre_hook(lambda m, a, k, name=name: before(m, a, k, name), with_kwargs=True),
        m.register_forward_hook(lambda m, a, k, o, name=name: after(m, a, k, o, name), with_kwargs=True))]
    try:
        with torch.no_grad():
            call(model, example_inputs, **extra)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def parameters(module) -> list[str]:
    """The names of `forward`'s parameters after self (a decorator's `*args` seen through to the real ones)."""
    signature = inspect.signature(type(module).forward)  # follows __wrapped__
    return [n for n, p in list(signature.parameters.items())[1:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def tensor_arguments(module, args: tuple, kwargs: dict) -> dict:
    """The tensors (and tuples of tensors) of one call of `module`, by the name of `forward`'s parameter (or keyword) each came in, in
    the signature's order: the inputs of its port's `__call__`. Every other argument (None, a flag, a size, a
    default) is fixed at the value it had, as torch.export specialises on it."""
    import torch

    from torch.utils._pytree import tree_leaves

    named = parameters(module)
    given = {**dict(zip(named, args)), **kwargs}
    order = named + [k for k in kwargs if k not in named]
    # a tensor, or a tuple, list or dict holding one (rotary embeddings' (cos, sin)): an input, never a constant
    return {n: given[n] for n in order
            if any(isinstance(leaf, torch.Tensor) for leaf in tree_leaves(given.get(n)))}


def trace(module, args: tuple, kwargs: dict, output_of=lambda m: None) -> Traced:
    """`module.forward` as an fx graph whose inputs are the call's tensors (`tensor_arguments`) and whose nodes
    carry `tensor_meta` (shapes) from running them; every other argument is fixed at its value in this call."""
    import contextlib
    import io

    import torch
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp

    tensors = tensor_arguments(module, args, kwargs)
    Proxy = _proxy_class()

    class Tracer(fx.Tracer):
        record_stack_traces = True

        def __init__(self):
            super().__init__()
            self.proxy_buffer_attributes = True  # a buffer is read as a graph input (`self.position_ids[:, :n]`)

        def is_leaf_module(self, m, qualname):
            return not is_container(m)

        def call_module(self, m, forward, args, kwargs):
            try:
                self.path_of_module(m)
            except NameError:  # a module made inside forward (`ACT2FN[name](x)`): its code is traced through
                return forward(*args, **kwargs)
            out = super().call_module(m, forward, args, kwargs)
            if is_library(m) or not isinstance(output_of(m), (tuple, list, dict)):
                return out
            return _structured(out, output_of(m))  # `h, _ = self.block(x)`, `out.hidden is None`: as it ran

        def to_bool(self, obj):
            """A branch on shapes (`if x.shape[1] != self.channels`) takes the example's way, as torch.export
            specialises; a branch on the values a tensor holds cannot be written."""
            if not _from_shapes(obj.node):
                raise fx.proxy.TraceError("data-dependent control flow: a Python branch on the values of a tensor")
            return bool(_evaluate(self.root, self.graph, obj.node, list(tensors.values())))

        def proxy(self, node):
            return Proxy(node, self)

        def length(self, obj) -> int:
            if not _from_shapes(obj.node):
                raise fx.proxy.TraceError("len() of a tensor's values (no rule)")
            return len(_evaluate(self.root, self.graph, obj.node, list(tensors.values())))

        def iter(self, obj):
            """`*x.shape[:-1]`, `for d in x.size()`: a sequence of shapes has the example's length."""
            if not _from_shapes(obj.node):
                raise fx.proxy.TraceError("a Python loop over a tensor, or a tensor unpacked (no rule)")
            return iter([obj[i] for i in range(self.length(obj))])

    names = parameters(module)
    fixed = {**{n: a for n, a in zip(names, args) if n not in tensors},
             **{k: v for k, v in kwargs.items() if k not in tensors}}
    klass = type(module)
    leaves = _leaves(inspect.unwrap(klass.forward).__globals__)
    unpatch = _torch_patched()
    was_training = module.training
    try:
        module.__class__ = type(klass.__name__, (klass,), {"forward": _bound_forward(klass.forward, list(tensors), fixed),
                                                           "__module__": klass.__module__})
        graphs = []
        for mode in (True, False):  # the graph of each mode: a forward that reads self.training differs
            module.train(mode)
            graphs.append(_without_idle_dropout(Tracer().trace(module)))
        if _signature(graphs[0]) != _signature(graphs[1]):
            return Traced(module, error="its forward differs between train() and eval() (it reads self.training, "
                                        "or calls a functional dropout): no rule writes both yet")
        graph = graphs[1]
        gm = fx.GraphModule(module, graph)
        graph.eliminate_dead_code(lambda n: n.is_impure() or in_place(n))  # `out, _ = self.lstm(x)`: one half
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints what it raises
            ShapeProp(gm).propagate(*tensors.values())
    except Exception as e:  # noqa: BLE001  (fx's own errors say what it met: control flow on a traced value)
        return Traced(module, error=_first_line(e))
    finally:
        module.__class__ = klass
        module.train(was_training)
        leaves()
        unpatch()
    return Traced(module, graph=graph)


def _proxy_class():
    import torch.fx as fx

    class Proxy(fx.Proxy):
        def __len__(self):  # len(x.shape): the example's; len of a tensor's values: said
            return self.tracer.length(self)

        def __getattr__(self, k):
            if k.startswith("__"):  # a protocol probe (`__cuda_array_interface__`, `__array__`): not a tensor's field
                raise AttributeError(k)
            return Attribute(self, k)

        def __setitem__(self, key, value):  # `mask[:, :n] = value`: recorded, written as `.at[...].set`
            self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})

    class Attribute(fx.proxy.Attribute):  # x.shape, read before it is called or measured
        def __len__(self):
            return self.tracer.length(self)

        def __getattr__(self, k):
            return Attribute(self, k)

    return Proxy


def _leaves(namespace: dict):
    """Replace, in a forward's module namespace, each library function the writer translates whole
    (`ops.leaf_functions()`: transformers' `create_causal_mask`) by one that fx records as a single call; returns
    the function that puts them back."""
    from jaxtrain.port.ops import leaf_functions

    table = leaf_functions()
    saved = {name: f for name, f in namespace.items() if callable(f) and _hashable(f) and f in table}
    for name, f in saved.items():
        namespace[name] = _recorded(f)
    return lambda: namespace.update(saved)


def _hashable(f) -> bool:
    try:
        hash(f)
    except TypeError:
        return False
    return True


def _recorded(function):
    """`function` as one node of the graph: its tensor, number and flag arguments are the node's; any other
    object (a config) is bound into the node's target, a `functools.partial` of `function`."""
    import functools

    import torch
    import torch.fx as fx

    signature = inspect.signature(function)

    def call(*args, **kwargs):
        bound = signature.bind(*args, **kwargs).arguments
        proxies = [v for v in bound.values() if isinstance(v, fx.Proxy)]
        if not proxies:
            return function(*args, **kwargs)
        plain = (type(None), bool, int, float, str, torch.dtype, fx.Proxy)
        given = {k: v for k, v in bound.items() if isinstance(v, plain)}
        fixed = {k: v for k, v in bound.items() if k not in given}
        target = functools.update_wrapper(functools.partial(function, **fixed), function)  # named as `function`
        return proxies[0].tracer.create_proxy("call_function", target, (), given)

    return call


_SHAPES = {"size", "dim", "numel", "shape", "ndim", "dtype", "device"}


class _TracedFinfo:
    """What `torch.finfo(x.dtype)` gives while tracing: its fields are graph nodes."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __getattr__(self, field):
        from jaxtrain.port.ops import finfo_field

        return self.dtype.tracer.create_proxy("call_function", finfo_field, (self.dtype, field), {})


def _torch_patched():
    """torch.finfo of a traced dtype, and torch's factories of traced numbers (`torch.tensor(torch.finfo(x.dtype)
    .min)`, `torch.ones(x.size(0), 4)`), recorded in the graph: torch's own argument parser refuses a Proxy where
    it wants a number. Returns the function that puts torch's back."""
    import torch
    import torch.fx as fx
    from torch.utils._pytree import tree_leaves

    saved = {name: getattr(torch, name) for name in ("finfo", "tensor", "ones", "zeros", "full", "empty")}

    def traced_finfo(dtype=None):
        finfo = saved["finfo"]
        return _TracedFinfo(dtype) if isinstance(dtype, fx.Proxy) else (finfo() if dtype is None else finfo(dtype))

    def recorded(factory):
        def call(*args, **kwargs):
            proxies = [a for a in tree_leaves((args, kwargs)) if isinstance(a, fx.Proxy)]
            if proxies:
                return proxies[0].tracer.create_proxy("call_function", factory, args, kwargs)
            return factory(*args, **kwargs)

        return call

    torch.finfo = traced_finfo
    for name in ("tensor", "ones", "zeros", "full", "empty"):
        setattr(torch, name, recorded(saved[name]))
    return lambda: [setattr(torch, name, f) for name, f in saved.items()]


def _from_shapes(node) -> bool:
    """Whether a value is computed from tensors' shapes (or dtypes) and constants alone."""
    if node.op in ("placeholder", "get_attr"):
        return False
    if node.op == "call_method" and node.target in _SHAPES:
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1] in _SHAPES:
        return True
    if node.op == "call_module":
        return False
    return all(_from_shapes(n) for n in node.all_input_nodes)


def _evaluate(root, graph, node, inputs: list):
    """The value `node` of a graph still being traced takes on the example inputs."""
    import torch
    import torch.fx as fx

    from torch.fx._symbolic_trace import _maybe_revert_all_patches

    copy, copied = fx.Graph(), {}
    copy.graph_copy(graph, copied)
    copy.output(copied[node])
    with torch.no_grad(), _maybe_revert_all_patches():  # run for real: the tracer's patches lifted meanwhile
        return fx.GraphModule(root, copy)(*inputs)


class _Named(dict):
    """A submodule's named outputs while tracing (a ModelOutput): the tensors' graph nodes by key, by attribute and
    by position; a field the example left empty reads None, as it did."""

    def __init__(self, items, real):
        super().__init__(items)
        self._real = real

    def __getattr__(self, name):
        if name in self:
            return self[name]
        if name.startswith("_") or not hasattr(self._real, name):
            raise AttributeError(name)
        return None

    def __getitem__(self, key):
        return tuple(self.values())[key] if isinstance(key, (int, slice)) else super().__getitem__(key)

    def to_tuple(self):
        return tuple(self.values())


def _structured(proxy, real):
    """A submodule call's output as the structure it had on the example (a tuple, a dict, a ModelOutput), its
    tensors the graph's `proxy[i]` / `proxy[key]`; Nones and plain values stay what they were."""
    import torch

    def part(p, value):
        if isinstance(value, torch.Tensor):
            return p
        if isinstance(value, (tuple, list)):
            return type(value)(part(p[i], v) for i, v in enumerate(value)) if type(value) in (tuple, list) \
                else tuple(part(p[i], v) for i, v in enumerate(value))
        if isinstance(value, dict):
            return _Named({k: part(p[k], v) for k, v in value.items() if v is not None}, value)
        return value

    return part(proxy, real)


def _bound_forward(forward, tensors: list, fixed: dict):
    """A `forward(self, <tensors>)` calling the real one with the fixed arguments: fx names each input after its
    parameter (it reads the code object's own argument names, which a decorator's `*args` would hide)."""
    namespace = {"__forward": forward, "__fixed": fixed}
    params = "".join(f", {n}" for n in tensors)
    passed = "".join(f"{n}={n}, " for n in tensors)
    exec(f"def forward(self{params}):\n    return __forward(self, {passed}**__fixed)\n", namespace)  # noqa: S102
    return namespace["forward"]


def in_place(node) -> bool:
    """An op that changes its first argument (`x[i] = v`, `x.add_(y)`): its result may go unused."""
    if node.op == "call_function":
        return node.target is operator.setitem
    return node.op == "call_method" and node.target.endswith("_") and not node.target.startswith("_")


def _without_idle_dropout(graph):
    """The graph without functional dropouts of probability 0 (`F.dropout(x, p=0.0, training=self.training)`):
    they return their input in either mode."""
    import torch
    import torch.nn.functional as F

    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in (F.dropout, torch.dropout):
            p = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
            if isinstance(p, (int, float)) and p == 0:
                node.replace_all_uses_with(node.args[0] if node.args else node.kwargs["input"])
                graph.erase_node(node)
    return graph


def _signature(graph) -> list:
    """A graph's operations, its constants' numbering left out (each trace adds `_tensor_constantN` anew)."""
    return [re.sub(r"_tensor_constant\d+", "_tensor_constant", str((n.op, n.target, n.args, n.kwargs)))
            for n in graph.nodes]


def source_line(node) -> str:
    """Where the user wrote a node's operation: `file.py:12 (forward)`."""
    found = "(no source line)"
    for match in _FRAME.finditer(node.stack_trace or ""):  # outermost first: the last is where it was written
        path, line, function = match.groups()
        if "/torch/" not in path and "/jaxtrain/port/" not in path and not path.startswith("<"):
            found = f"{_short(path)}:{line} ({function})"
    return found


def _short(path: str | None) -> str:
    from pathlib import Path

    if not path:
        return "?"
    p = Path(path)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return p.name


def _first_line(e: Exception) -> str:
    if e.__cause__ is not None and "ShapeProp" in str(e):  # what running the graph met, not ShapeProp's wrapper
        e = e.__cause__
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def shape(node) -> tuple | None:
    """A node's tensor shape on the example inputs (None for a value that is not a tensor)."""
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None
