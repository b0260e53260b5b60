"""What the port writer reads of a torch model: each module class's `forward` as a torch.fx graph, with the
shape of every value on the example inputs, and where in the user's source each operation was written.

Every submodule is a leaf of its parent's graph (its own class is traced on its own), except the containers
(`nn.Sequential`, `nn.ModuleList`), which fx traces through: their children are called from the parent.
"""

from __future__ import annotations

import dataclasses
import inspect
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
        forward = type(self.module).forward
        try:
            return f"{_short(inspect.getsourcefile(forward))}:{inspect.getsourcelines(forward)[1]}"
        except (OSError, TypeError):
            return type(self.module).__qualname__


def is_container(module) -> bool:
    return type(module).__name__ in CONTAINERS and type(module).__module__.startswith("torch.nn")


def is_library(module) -> bool:
    """A torch.nn module (translated by a rule of `jaxtrain.port.modules`), not the user's own class."""
    return type(module).__module__.startswith("torch.nn.") and not is_container(module)


def first_inputs(model, example_inputs) -> dict:
    """Each submodule's positional and keyword arguments at its first call on `example_inputs` (a tuple of
    positional arguments, or a dict of keyword arguments)."""
    import torch

    seen: dict = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, kwargs, name=name: seen.setdefault(name, (args, kwargs)),
                                         with_kwargs=True)
             for name, m in model.named_modules()]
    try:
        with torch.no_grad():
            model(**example_inputs) if isinstance(example_inputs, dict) else model(*example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def trace(module, args: tuple, kwargs: dict) -> Traced:
    """`module.forward` as an fx graph whose nodes carry `tensor_meta` (shapes) from running `args`/`kwargs`;
    arguments not given are fixed at their defaults."""
    import torch
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp

    class Tracer(fx.Tracer):
        record_stack_traces = True

        def is_leaf_module(self, m, qualname):
            return not is_container(m)

    names = list(inspect.signature(type(module).forward).parameters)[1:]
    given = set(names[:len(args)]) | set(kwargs)
    concrete = {n: p.default for n, p in inspect.signature(type(module).forward).parameters.items()
                if n != "self" and n not in given and p.default is not inspect.Parameter.empty}
    try:
        was_training = module.training
        graphs = []
        for mode in (True, False):  # the graph of each mode: a forward that reads self.training differs
            module.train(mode)
            graphs.append(Tracer().trace(module, concrete_args=concrete or None))
        module.train(was_training)
        if _signature(graphs[0]) != _signature(graphs[1]):
            return Traced(module, error="its forward differs between train() and eval() (it reads self.training, "
                                        "or calls a functional dropout): no rule writes both yet")
        graph = graphs[1]
        gm = fx.GraphModule(module, graph)
        graph.eliminate_dead_code()  # `out, _ = self.lstm(x)`: the unused half is not written
        inputs = [*args, *(kwargs[n] for n in names if n in kwargs and n not in names[:len(args)])]
        with torch.no_grad():
            ShapeProp(gm).propagate(*inputs)
    except Exception as e:  # noqa: BLE001  (fx's own errors say what it met: control flow on a traced value)
        return Traced(module, error=_first_line(e))
    return Traced(module, graph=graph)


def _signature(graph) -> list:
    """A graph's operations, its constants' numbering left out (each trace adds `_tensor_constantN` anew)."""
    return [re.sub(r"_tensor_constant\d+", "_tensor_constant", str((n.op, n.target, n.args, n.kwargs)))
            for n in graph.nodes]


def source_line(node) -> str:
    """Where the user wrote a node's operation: `file.py:12 (forward)`."""
    for match in _FRAME.finditer(node.stack_trace or ""):
        path, line, function = match.groups()
        if "/torch/" not in path:
            return f"{_short(path)}:{line} ({function})"
    return "(no source line)"


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
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def shape(node) -> tuple | None:
    """A node's tensor shape on the example inputs (None for a value that is not a tensor)."""
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None
