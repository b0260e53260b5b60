"""Writes the Flax NNX source of a torch model: one class per torch class (the user's classes; torch.nn's
layers become Flax layers inside them), torch's attribute names kept, `forward` written as `__call__` in the
same order, one line per operation.

Values stay in torch's layout except between layers that want channels last (convolutions, poolings, image
normalisations); the writer moves a value between the two only where the next operation needs the other, so
a flatten or a reshape always sees torch's order. Anything without a rule is written as a
`raise NotImplementedError` naming the torch op and its source line, and listed in `untranslated`.
"""

from __future__ import annotations

import dataclasses
import keyword

from jaxtrain.port import modules, ops
from jaxtrain.port.rules import Expr, Untranslatable, Value, literal, render
from jaxtrain.port.trace import (Traced, first_inputs, in_place, is_container, is_library, parameters, shape,
                                 source_line, tensor_arguments, trace)

HEADER = ("import jax", "import jax.numpy as jnp", "from flax import nnx")


@dataclasses.dataclass
class Written:
    """The generated file, the root class's name, and what could not be written: (torch op or module, where
    in torch's source, why)."""

    source: str
    class_name: str
    untranslated: list


def write(model, inputs) -> Written:
    """The NNX port of `model`, traced on `inputs` (a tuple of positional tensors or a dict of keyword ones)."""
    seen = first_inputs(model, inputs)
    paths = {id(m): name for name, m in model.named_modules()}
    output_of = lambda m: getattr(seen.get(paths.get(id(m))), "output", None)  # noqa: E731
    names: dict = {}  # torch class -> [(class body key, generated name)]
    classes, missing, imports = [], [], set()
    by_instance: dict = {}

    def class_for(path: str, module) -> str:
        if id(module) in by_instance:
            return by_instance[id(module)]
        call = seen.get(path)
        traced = trace(module, call.args, call.kwargs, output_of) if call else Traced(module, error="never called on "
                                                                                                  "the inputs")
        writer = _ClassWriter(traced, path, class_for, seen)
        body = writer.body()
        versions = names.setdefault(type(module), [])
        match = next((name for key, name in versions if key == body), None)
        if match is None:
            base = _identifier(type(module).__name__)
            taken = {n for vs in names.values() for _, n in vs}
            match = base if base not in taken else next(f"{base}{i}" for i in range(2, 1000) if f"{base}{i}" not in taken)
            versions.append((body, match))
            classes.append(body.replace("class __CLASS__(", f"class {match}(", 1))
            missing.extend(writer.untranslated)
            imports.update(writer.imports)
        by_instance[id(module)] = match
        return match

    root = class_for("", model)
    missing.extend(_tied(model))
    header = [f'"""Flax NNX port of {type(model).__module__}.{type(model).__qualname__}, written by jaxtrain.port.',
              "", "Torch's attribute names are kept, so `jaxtrain.convert.torch_to_flax` and `check_port` pair the two",
              "models by name; the weights are Flax's initialisation until torch's are loaded.", '"""', "",
              *HEADER, *sorted(imports), "", "", ""]
    return Written("\n".join(header) + "\n\n\n".join(classes) + "\n", root, missing)


def _tied(model) -> list:
    """Parameters one module shares with another that no rule writes: a bias-free Linear head tied to an
    Embedding is written as the embedding's `attend` (`_attends`); any other sharing is said."""
    owners: dict = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    handled = set(_attends(model).values())
    return [(f"tied weights {', '.join(names)}", "the model's __init__", "a parameter shared between modules: no "
             "rule yet (a bias-free Linear tied to an Embedding is written as nnx.Embed.attend)")
            for key, names in owners.items() if len(names) > 1 and key not in handled]


def _attends(module) -> dict:
    """{path of a bias-free Linear: id of the Embedding weight it shares} within `module` (a tied LM head)."""
    import torch

    embeddings = {id(m.weight) for _, m in module.named_modules() if isinstance(m, torch.nn.Embedding)}
    return {name: id(m.weight) for name, m in module.named_modules()
            if type(m) is torch.nn.Linear and m.bias is None and id(m.weight) in embeddings}


def _variable(name: str) -> str:
    """A value's name in `__call__`: never `self` or a name the file imports."""
    name = _identifier(name)
    return name + "_" if name in ("self", "jax", "jnp", "nnx") else name


def _identifier(name: str) -> str:
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return name + "_" if keyword.iskeyword(name) or not name or name[0].isdigit() else name


class _ClassWriter:
    """One torch module instance's class: its `__init__` from its children, its `__call__` from its graph."""

    def __init__(self, traced: Traced, path: str, class_for, seen: dict):
        import torch

        self.traced, self.path, self.class_for, self.seen = traced, path, class_for, seen
        self.module = traced.module
        self.untranslated: list = []
        self.imports: set = set()
        self.lines: list = []
        self.values: dict = {}
        self.moved: dict = {}
        self.stopped = False
        self.calls = {n.target: n for n in (traced.graph.nodes if traced.graph is not None else ())
                      if n.op == "call_module"}
        self.tied_heads = _attends(self.module)  # written as the embedding's attend
        self.embeddings = {id(m.weight): (name, is_library(m)) for name, m in self.module.named_modules()
                           if isinstance(m, torch.nn.Embedding)}
        self.buffers = self._buffers()

    def _buffers(self) -> dict:
        """{buffer the forward reads: its expression}. A floating buffer of the user's class is torch's state (a
        position table, a scale): an nnx.Variable of its values, which `convert` also carries; one of a submodule
        of the user's is read from that submodule. An integer or boolean one (position ids, a causal mask) is a
        constant the port holds as nested tuples. A buffer the training changes is a layer's own (BatchNorm's
        statistics: TorchBatchNorm)."""
        graph = self.traced.graph
        read = {n.target for n in (graph.nodes if graph is not None else ()) if n.op == "get_attr"}
        container = "self.layers" if is_container(self.module) else "self"
        out = {}
        for name, b in self.module.named_buffers():
            owner, _, leaf = name.rpartition(".")
            sub = self.module.get_submodule(owner) if owner else self.module
            if name not in read or is_library(sub) or b.numel() > 4096:
                continue
            if b.is_floating_point():
                out[name] = f"{_attribute(name, container)}[...]"
            else:
                out[name] = f"jnp.asarray(self.{_identifier(name.replace('.', '_'))}, dtype={literal(b.dtype)})"
        return out

    def body(self) -> str:
        torch_name = f"{type(self.module).__module__}.{type(self.module).__qualname__}"
        init = self._init()
        call = self._call()
        return "\n".join([f"class __CLASS__(nnx.Module):", f'    """{torch_name} ({self.traced.where})."""', "",
                          "    def __init__(self, rngs: nnx.Rngs):", *(init or ["        pass"]), "", *call])

    # ------------------------------------------------------------------ __init__

    def _init(self) -> list:
        if is_container(self.module):  # a bare nn.Sequential: its layers in a list (`layers.0` pairs with `0`)
            return [f"        self.layers = {self._build('', self.module)}"]
        lines = []
        for name, child in self.module.named_children():
            built = self._build(name, child)
            if not built.startswith("None"):  # no weights (written inline where called), or none to hold
                lines.append(f"        self.{_identifier(name)} = {built}")
        for name, p in self.module.named_parameters(recurse=False):
            if p.requires_grad:
                lines.append(f"        self.{_identifier(name)} = nnx.Param(jnp.zeros({tuple(p.shape)}))")
            else:  # frozen (requires_grad=False): a constant of the port, no Param the optimizer would move
                lines.append(f"        self.{_identifier(name)} = {self._constant(name, p)}  # torch's frozen parameter")
        for name, b in self.module.named_buffers(recurse=False):  # torch's floating state: a constant as well
            if b.is_floating_point():
                lines.append(f"        self.{_identifier(name)} = {self._constant(name, b)}  # torch's buffer")
        for name, b in self.module.named_buffers():
            if name in self.buffers and not b.is_floating_point():
                lines.append(f"        self.{_identifier(name.replace('.', '_'))} = {literal(_nested(b.tolist()))}"
                             f"  # torch's buffer {name}")
        return lines

    def _constant(self, name: str, tensor) -> str:
        try:
            return _constant(tensor)
        except Untranslatable as e:
            self.untranslated.append((f"{type(self.module).__qualname__}.{name}", self.traced.where, str(e)))
            return "None"

    def _build(self, qualname: str, module) -> str:
        if is_container(module):
            items = [self._build(f"{qualname}.{n}".lstrip("."), c) for n, c in module.named_children()]
            return "nnx.List([\n" + "".join(f"            {i},\n" for i in items) + "        ])"
        if not is_library(module):
            child_path = f"{self.path}.{qualname}" if self.path else qualname
            return f"{self.class_for(child_path, module)}(rngs=rngs)"
        if qualname in self.tied_heads:
            return "None  # tied to an embedding: its attend"
        node = self.calls.get(qualname)
        rule = modules.rule_for(module)
        if node is None:
            return "None  # not called in forward"
        if rule is None:
            return "None  # no rule: see __call__"
        try:
            layer = rule(module, node)
        except Untranslatable:
            return "None  # see __call__"
        self.imports.update(layer.imports)
        return layer.init or "None"

    # ------------------------------------------------------------------ __call__

    def _call(self) -> list:
        if self.traced.graph is None:
            why = f"torch.fx could not trace {type(self.module).__name__}.forward: {self.traced.error}"
            self.untranslated.append((f"{type(self.module).__qualname__}.forward", self.traced.where, why))
            return ["    def __call__(self, *args, **kwargs):",
                    f"        raise NotImplementedError({why + ' (' + self.traced.where + ')'!r})"]
        params = []
        for node in self.traced.graph.nodes:
            if node.op == "placeholder":
                params.append(_variable(node.name))
                self.values[node.name] = Value(_variable(node.name), rank=_rank(node))
            elif node.op == "output":
                if not self.stopped:
                    self.lines.append(f"return {self._output(node.args[0])}")
            else:
                self._node(node)
        return [f"    def __call__(self, {', '.join(params)}):", *(f"        {line}" for line in self.lines)]

    def _node(self, node) -> None:
        var = _variable(node.name)
        try:
            expr = self._expression(node)
        except Untranslatable as e:
            return self._missing(node, str(e))
        except Exception as e:  # noqa: BLE001  (a rule's own failure is the writer's bug: said as such)
            return self._missing(node, f"jaxtrain.port's rule failed ({type(e).__name__}: {e}): a bug in the writer")
        if in_place(node):  # torch changes its first argument: the port rebinds that name
            target = self._value(node.args[0])
            if not target.src.isidentifier():
                return self._missing(node, f"an in-place change of {target.src}")
            if not self.stopped:
                self.lines.append(f"{target.src} = {expr.source}")
            self.values[node.name] = target
            return
        if expr.source == "None":  # a field torch's output left empty: no line, and not in Outputs
            self.values[node.name] = Value.constant(None)
            return
        if not self.stopped:
            self.lines.append(f"{var} = {expr.source}")
        self.values[node.name] = Value(var, layout=expr.result, rank=_rank(node))

    def _missing(self, node, why: str) -> None:
        what = self._what(node)
        where = source_line(node)
        self.untranslated.append((what, where, why))
        if not self.stopped:
            self.lines.append(f"raise NotImplementedError({f'{what} at {where}: {why}'!r})")
            self.stopped = True
        self.values[node.name] = Value(_identifier(node.name), rank=_rank(node))

    def _what(self, node) -> str:
        if node.op == "call_module":
            sub = self.module.get_submodule(node.target)
            name = f"torch.nn.{type(sub).__name__}" if is_library(sub) else type(sub).__qualname__
            return f"{name} ({node.target})"
        if node.op == "get_attr":
            return f"attribute {node.target}"
        return ops.name_of(node.target)

    def _expression(self, node) -> Expr:
        if node.op == "get_attr":
            if node.target in dict(self.module.named_parameters(recurse=False)):
                return Expr(f"self.{_identifier(node.target)}[...]", layout="keep")
            if node.target.startswith("_tensor_constant"):  # a tensor the forward computed from constants alone
                value = getattr(self.module, node.target)
                if value.numel() > 1024:
                    raise Untranslatable(f"a constant tensor of {value.numel()} elements computed in forward")
                return Expr(f"jnp.asarray({literal(value.tolist())}, dtype={literal(value.dtype)})",
                            layout="keep")
            if node.target in self.buffers:
                return Expr(self.buffers[node.target], layout="keep")
            owner, _, name = node.target.rpartition(".")
            sub = self.module.get_submodule(owner) if owner else None
            template = modules.TENSORS.get(type(sub).__name__, {}).get(name) if sub is not None and is_library(sub) \
                else None
            if template is None:
                raise Untranslatable("a tensor read from another module or a buffer (no rule yet)")
            return Expr(template.format(_attribute(owner, "self.layers" if is_container(self.module) else "self")),
                        layout="keep")
        if node.op == "call_module":
            return self._module_call(node)
        method = node.target[:-1] if in_place(node) and node.op == "call_method" else node.target
        rule = ops.rule_for(node.target) if node.op == "call_function" else ops.METHODS.get(method)
        if rule is None:
            raise Untranslatable("no rule in jaxtrain.port")
        args, kwargs = self._arguments(node)
        expr = rule(args, kwargs, node)
        self.imports.update(expr.imports)
        if expr.layout == "keep":
            return Expr(expr.source, result="torch")
        args2, kwargs2, layout = self._laid_out(node, expr.layout)
        expr = rule(args2, kwargs2, node)
        return Expr(expr.source, result=layout if expr.result == "same" else expr.result)

    def _module_call(self, node) -> Expr:
        sub = self.module.get_submodule(node.target)
        attr = _attribute(node.target, "self.layers" if is_container(self.module) else "self")
        if not is_library(sub):  # the child's port takes the tensors of its call, in its signature's order
            return Expr(f"{attr}({', '.join(v.src for v in self._child_inputs(node, sub))})")
        if node.target in self.tied_heads and self.tied_heads[node.target] in self.embeddings:
            path, library = self.embeddings[self.tied_heads[node.target]]
            embed = _attribute(path, "self.layers" if is_container(self.module) else "self")
            args, _, _ = self._laid_out(node, "torch")
            # x @ embedding.T: the head torch ties to it (nnx.Embed's attend, or the weight of the user's Embedding)
            return Expr(f"{embed}.attend({args[0].src})" if library else f"({args[0].src} @ {embed}.weight[...].T)")
        rule = modules.rule_for(sub)
        if rule is None:
            raise Untranslatable("no rule in jaxtrain.port")
        layer = rule(sub, node)
        if not 1 <= len(node.args) <= layer.inputs or (node.kwargs and not layer.keywords):
            raise Untranslatable(f"a call with {len(node.args)} inputs{' and keywords' if node.kwargs else ''} "
                                 "(no rule yet)")
        need = layer.layout if (_rank(node.args[0]) or 0) >= 3 or layer.layout == "any" else "torch"
        args, kwargs, layout = self._laid_out(node, need)
        return Expr(layer.call(attr, [a.src for a in args] + [f"{k}={v.src}" for k, v in kwargs.items()]),
                    result=layout)

    def _child_inputs(self, node, sub) -> list:
        """The values the parent passes to a child of the user's (or a library's own) class: those its first call
        gave as tensors (`trace.tensor_arguments`), bound to the child's parameters."""
        child_path = f"{self.path}.{node.target}".lstrip(".")
        call = self.seen.get(child_path)
        wanted = tensor_arguments(sub, call.args, call.kwargs) if call else {}
        args, kwargs, _ = self._laid_out(node, "torch")
        names = parameters(sub)
        given = {**dict(zip(names, args)), **kwargs}
        raw = {**dict(zip(names, node.args)), **node.kwargs}
        missing = [n for n in wanted if n not in given or not _has_node(raw[n])]
        if missing:
            raise Untranslatable(f"the call gives {missing[0]!r} in another form than the first call did")
        return [given[n] for n in wanted]

    def _arguments(self, node) -> tuple[list, dict]:
        return [self._value(a) for a in node.args], {k: self._value(v) for k, v in node.kwargs.items()}

    def _value(self, item):
        import torch.fx as fx

        if isinstance(item, fx.Node):
            return self.values[item.name]
        if isinstance(item, slice) and _has_node(item):  # x[:, :seq_length]
            parts = ["" if v is None else render(self._value(v)) for v in (item.start, item.stop, item.step)]
            return Value(":".join(parts[:2]) + (f":{parts[2]}" if parts[2] else ""), const=item, is_const=True)
        if isinstance(item, (list, tuple)) and any(_has_node(i) for i in item):
            inner = [self._value(i) for i in item]
            if isinstance(item, list):
                return inner
            return Value("(" + ", ".join(render(i) for i in inner) + ",)",
                         const=tuple(inner), is_const=True)
        return Value.constant(item)

    def _laid_out(self, node, need: str) -> tuple[list, dict, str]:
        """The node's arguments with every tensor in the layout `need` ("any": the common layout of tensors
        of one rank, else torch's), and the layout they are in."""
        args, kwargs = self._arguments(node)
        tensors = [v for v in _flat(args) + _flat(list(kwargs.values())) if v.rank is not None]
        if need == "any":
            same = len({(t.layout, t.rank) for t in tensors}) <= 1
            need = tensors[0].layout if tensors and same else "torch"
        move = lambda v: self._moved(v, need) if isinstance(v, Value) and v.rank is not None else v  # noqa: E731
        deep = lambda v: [deep(i) for i in v] if isinstance(v, list) else move(v)  # noqa: E731
        return [deep(a) for a in args], {k: deep(v) for k, v in kwargs.items()}, need

    def _moved(self, value: Value, layout: str) -> Value:
        """`value` in `layout`, moving its channels axis once (torch: dim 1; channels last: the last)."""
        if value.layout == layout or value.rank < 3:
            return value
        key = (value.src, layout)
        if key not in self.moved:
            var = f"{value.src}_{'last' if layout == 'last' else 'torch'}"
            axes = "1, -1" if layout == "last" else "-1, 1"
            if not self.stopped:
                self.lines.append(f"{var} = jnp.moveaxis({value.src}, {axes})")
            self.moved[key] = Value(var, layout=layout, rank=value.rank)
        return self.moved[key]

    def _output(self, out) -> str:
        import torch.fx as fx

        if isinstance(out, fx.Node):
            return self._moved(self.values[out.name], "torch").src if self.values[out.name].rank else \
                self.values[out.name].src
        if isinstance(out, (tuple, list)):
            inner = ", ".join(self._output(o) for o in out)
            return f"({inner},)" if isinstance(out, tuple) and len(out) == 1 else (
                f"({inner})" if isinstance(out, tuple) else f"[{inner}]")
        if isinstance(out, dict):  # transformers' ModelOutput: read by key, attribute and position
            self.imports.add("from jaxtrain.port.support import Outputs")
            present = {k: v for k, v in out.items() if v is not None and not (
                isinstance(v, fx.Node) and self.values[v.name].is_const and self.values[v.name].const is None)}
            return "Outputs(" + ", ".join(f"{k}={self._output(v)}" for k, v in present.items()) + ")"
        return literal(out)


def _constant(tensor) -> str:
    """An nnx.Variable holding a torch tensor's values (a frozen table, a buffer): never trained."""
    if tensor.numel() > 4096:
        raise Untranslatable(f"a frozen tensor of {tensor.numel()} elements (only tables up to 4096 are written)")
    return f"nnx.Variable(jnp.asarray({literal(tensor.tolist())}, dtype={literal(tensor.dtype)}))"


def _has_node(item) -> bool:
    """Whether a node's argument holds a value the graph computes (in a tuple, a list, a dict or a slice)."""
    import torch.fx as fx

    found = []
    fx.node.map_arg(item, found.append)
    return bool(found)


def _nested(value):
    """A buffer's `tolist()` as nested tuples (a static attribute of an nnx.Module)."""
    return tuple(_nested(v) for v in value) if isinstance(value, list) else value


def _flat(items) -> list:
    out = []
    for i in items:
        out.extend(_flat(i) if isinstance(i, list) else [i])
    return out


def _rank(node) -> int | None:
    s = shape(node)
    return None if s is None else len(s)


def _attribute(target: str, src: str = "self") -> str:
    """`features.0` -> `self.features[0]`."""
    for part in target.split("."):
        src += f"[{part}]" if part.isdigit() else f".{_identifier(part)}"
    return src
