"""The port writer's op rules: one small function per torch function, tensor method or Python operator, each
writing the JAX expression torch's op computes (the same formula, so float64 agrees to rounding).

`FUNCTIONS` is keyed by the function object (`torch.flatten`, `F.relu`, `operator.add`), `METHODS` by the tensor
method's name (`view`, `permute`). Each rule takes the call's arguments as `rules.Value`s bound to torch's
parameter names and returns a `rules.Expr`; it raises `Untranslatable` for a use it cannot write.
"""

from __future__ import annotations

import operator
from typing import Callable

from jaxtrain.port.rules import Expr, Untranslatable, Value, const, render

# torch activation -> the JAX expression (torch's formula, its defaults)
ACTIVATIONS: dict[str, Callable] = {
    "relu": lambda x: f"jax.nn.relu({x})",
    "relu6": lambda x: f"jnp.clip({x}, 0.0, 6.0)",
    "gelu": lambda x, approximate="none": f"jax.nn.gelu({x}, approximate={approximate == 'tanh'})",
    "silu": lambda x: f"jax.nn.silu({x})",
    "sigmoid": lambda x: f"jax.nn.sigmoid({x})",
    "tanh": lambda x: f"jnp.tanh({x})",
    "mish": lambda x: f"{x} * jnp.tanh(jax.nn.softplus({x}))",
    "leaky_relu": lambda x, negative_slope=0.01: f"jax.nn.leaky_relu({x}, negative_slope={negative_slope!r})",
    "elu": lambda x, alpha=1.0: f"jax.nn.elu({x}, alpha={alpha!r})",
    # torch's softplus is linear above threshold / beta; jax.nn.softplus is not
    "softplus": lambda x, beta=1.0, threshold=20.0: (
        f"jnp.where({x} * {beta!r} > {threshold!r}, {x}, jax.nn.softplus({x} * {beta!r}) / {beta!r})"),
    "hardtanh": lambda x, min_val=-1.0, max_val=1.0: f"jnp.clip({x}, {min_val!r}, {max_val!r})",
    "identity": lambda x: x,
}


def bind(args: list, kwargs: dict, names: str, **defaults) -> dict:
    """torch's arguments by name (`names`: space-separated, in torch's order); defaults as constants."""
    order = names.split()
    if len(args) > len(order):
        raise Untranslatable(f"{len(args)} positional arguments, torch's signature here has {len(order)}")
    bound = {**{k: Value.constant(v) for k, v in defaults.items()}, **dict(zip(order, args)), **kwargs}
    unknown = set(bound) - set(order)
    if unknown:
        raise Untranslatable(f"argument {sorted(unknown)[0]!r} has no rule")
    return bound


def dim_of(value: Value, d: int) -> int:
    """torch's dim d of a tensor of `value.rank` as a non-negative axis."""
    return d % value.rank if value.rank else d


def flatten_expr(x: Value, start: int = 0, end: int = -1) -> str:
    """torch.flatten: dims start..end merged (the batch dims kept symbolic)."""
    start, end = dim_of(x, start), dim_of(x, end)
    if start == end:
        return x.src
    head = "" if start == 0 else (f"{x.src}.shape[0], " if start == 1 else f"*{x.src}.shape[:{start}], ")
    tail = "" if end == x.rank - 1 else f", *{x.src}.shape[{end + 1}:]"
    return f"{x.src}.reshape({head}-1{tail})"


def _activation(name: str, names: str = "input", **defaults) -> Callable:
    def rule(args, kwargs, node) -> Expr:
        bound = bind(args, kwargs, names + " inplace", **defaults, inplace=False)
        extra = {k: const(v, k) for k, v in bound.items() if k not in ("input", "inplace")}
        return Expr(ACTIVATIONS[name](bound["input"].src, **extra), layout="any", result="same")

    return rule


def _binary(symbol: str) -> Callable:
    def rule(args, kwargs, node) -> Expr:
        bound = bind(args, kwargs, "input other alpha", alpha=1)
        alpha = const(bound["alpha"], "alpha")
        other = bound["other"].src if alpha == 1 else f"{alpha!r} * {bound['other'].src}"
        return Expr(f"({bound['input'].src} {symbol} {other})", layout="any", result="same")

    return rule


def _unary(template: str) -> Callable:
    def rule(args, kwargs, node) -> Expr:
        return Expr(template.format(bind(args, kwargs, "input")["input"].src), layout="any", result="same")

    return rule


def _softmax(function: str) -> Callable:
    def rule(args, kwargs, node) -> Expr:
        bound = bind(args, kwargs, "input dim _stacklevel dtype", dtype=None)
        x, dim = bound["input"], const(bound["dim"], "dim")
        cast = "" if const(bound["dtype"], "dtype") is None else f".astype({bound['dtype'].src})"
        return Expr(f"jax.nn.{function}({x.src}{cast}, axis={dim_of(x, dim)})")

    return rule


def _flatten(args, kwargs, node) -> Expr:
    bound = bind(args, kwargs, "input start_dim end_dim", start_dim=0, end_dim=-1)
    return Expr(flatten_expr(bound["input"], const(bound["start_dim"], "start_dim"), const(bound["end_dim"], "end_dim")))


def _shape_args(args: list) -> str:
    """view/reshape's sizes: given as one tuple or as separate arguments, constants or computed."""
    if len(args) == 1 and args[0].is_const and isinstance(args[0].const, (tuple, list)):
        return ", ".join(render(v) for v in args[0].const)
    return ", ".join(a.src for a in args)


def _reshape(args, kwargs, node) -> Expr:
    x, *sizes = args
    if kwargs:
        raise Untranslatable("view/reshape with keyword arguments")
    return Expr(f"{x.src}.reshape({_shape_args(sizes)})")


def _size(args, kwargs, node) -> Expr:
    """x.size() / x.size(d): the layout's own axis for torch's dim (no transpose just to read a size)."""
    x = args[0]
    dim = bind(args[1:], kwargs, "dim", dim=None)["dim"]
    if dim.is_const and dim.const is None:
        if x.layout == "last":
            return Expr(f"{x.src}.shape[:1] + {x.src}.shape[-1:] + {x.src}.shape[1:-1]", layout="keep")
        return Expr(f"{x.src}.shape", layout="keep")
    d = dim_of(x, const(dim, "dim"))
    if x.layout == "last":
        d = 0 if d == 0 else (x.rank - 1 if d == 1 else d - 1)
    return Expr(f"{x.src}.shape[{d}]", layout="keep")


def _dim(args, kwargs, node) -> Expr:
    return Expr(f"{args[0].src}.ndim", layout="keep")


def _permute(args, kwargs, node) -> Expr:
    x, *dims = args
    dims = dims[0].const if len(dims) == 1 and isinstance(dims[0].const, (tuple, list)) else [
        const(d, "dims") for d in dims]
    return Expr(f"jnp.transpose({x.src}, {tuple(dim_of(x, d) for d in dims)})")


def _transpose(args, kwargs, node) -> Expr:
    bound = bind(args, kwargs, "input dim0 dim1")
    x = bound["input"]
    return Expr(f"jnp.swapaxes({x.src}, {dim_of(x, const(bound['dim0'], 'dim0'))}, "
                f"{dim_of(x, const(bound['dim1'], 'dim1'))})")


def _t(args, kwargs, node) -> Expr:
    return Expr(f"{args[0].src}.T")


def _reduction(method: str) -> Callable:
    def rule(args, kwargs, node) -> Expr:
        bound = bind(args, kwargs, "input dim keepdim dtype", dim=None, keepdim=False, dtype=None)
        x, dim = bound["input"], const(bound["dim"], "dim")
        axis = "" if dim is None else (f", axis={tuple(dim_of(x, d) for d in dim)}" if isinstance(dim, (tuple, list))
                                       else f", axis={dim_of(x, dim)}")
        keep = ", keepdims=True" if const(bound["keepdim"], "keepdim") else ""
        cast = "" if const(bound["dtype"], "dtype") is None else f".astype({bound['dtype'].src})"
        return Expr(f"{x.src}{cast}.{method}({axis.removeprefix(', ')}{keep})".replace("(, ", "("))

    return rule


def _tensor_list(tensors) -> list:
    """torch.cat/stack's sequence of tensors, given as a list or a tuple."""
    return list(tensors.const) if isinstance(tensors, Value) and isinstance(tensors.const, tuple) else tensors


def _cat(args, kwargs, node) -> Expr:
    bound = bind(args, kwargs, "tensors dim", dim=0)
    tensors = _tensor_list(bound["tensors"])
    first = tensors[0]
    return Expr(f"jnp.concatenate([{', '.join(t.src for t in tensors)}], axis={dim_of(first, const(bound['dim'], 'dim'))})")


def _chunk(args, kwargs, node) -> Expr:
    bound = bind(args, kwargs, "input chunks dim", dim=0)
    x, chunks, dim = bound["input"], const(bound["chunks"], "chunks"), dim_of(bound["input"], const(bound["dim"], "dim"))
    size = (node.args[0].meta.get("tensor_meta").shape[dim] if node.args[0].meta.get("tensor_meta") else None)
    if size is None or size % chunks:
        raise Untranslatable("torch.chunk into unequal pieces (jnp.split needs equal ones)")
    return Expr(f"tuple(jnp.split({x.src}, {chunks}, axis={dim}))")


def _split(args, kwargs, node) -> Expr:
    """torch.split / x.split(size or sizes, dim): pieces of `size` (the last may be shorter), or of the given
    sizes."""
    bound = bind(args, kwargs, "input split_size_or_sections dim", dim=0)
    x, sizes = bound["input"], const(bound["split_size_or_sections"], "split_size_or_sections")
    dim = dim_of(x, const(bound["dim"], "dim"))
    total = node.args[0].meta["tensor_meta"].shape[dim]
    sizes = [sizes] * -(-total // sizes) if isinstance(sizes, int) else list(sizes)
    edges, at = [], 0
    for size in sizes[:-1]:
        at += size
        edges.append(min(at, total))
    return Expr(f"tuple(jnp.split({x.src}, {edges}, axis={dim}))")


def _type(args, kwargs, node) -> Expr:
    """x.type(dtype): a cast (x.type() with no dtype, a string, has no rule)."""
    bound = bind(args, kwargs, "input dtype", dtype=None)
    dtype = bound["dtype"]
    if dtype.is_const and type(dtype.const).__name__ != "dtype":
        raise Untranslatable("Tensor.type without a torch dtype")
    return Expr(f"{bound['input'].src}.astype({dtype.src})", layout="any", result="same")


def _unsqueeze(args, kwargs, node) -> Expr:
    bound = bind(args, kwargs, "input dim")
    x, dim = bound["input"], const(bound["dim"], "dim")
    return Expr(f"jnp.expand_dims({x.src}, {dim % (x.rank + 1)})")


def _squeeze(args, kwargs, node) -> Expr:
    bound = bind(args, kwargs, "input dim", dim=None)
    x, dim = bound["input"], const(bound["dim"], "dim")
    if dim is None:
        return Expr(f"jnp.squeeze({x.src})")
    d = dim_of(x, dim)
    size = node.args[0].meta["tensor_meta"].shape[d]
    return Expr(f"jnp.squeeze({x.src}, {d})" if size == 1 else x.src)  # torch leaves a dim of size != 1


def _matmul(args, kwargs, node) -> Expr:
    bound = bind(args, kwargs, "input other")
    return Expr(f"({bound['input'].src} @ {bound['other'].src})")


def _getitem(args, kwargs, node) -> Expr:
    x, index = args
    if x.rank is None:  # a tuple or a shape
        return Expr(f"{x.src}[{index.src}]", layout="keep")
    items = index.const if index.is_const and isinstance(index.const, tuple) else (index,)
    return Expr(f"{x.src}[{', '.join(render(i) for i in items)}]")


def _setitem(args, kwargs, node) -> Expr:
    """x[index] = value, as JAX writes it: a new array (the writer rebinds x's name to it)."""
    x, index, value = args
    items = index.const if index.is_const and isinstance(index.const, tuple) else (index,)
    return Expr(f"{x.src}.at[{', '.join(render(i) for i in items)}].set({value.src})")


def _astype(dtype: str) -> Callable:
    def rule(args, kwargs, node) -> Expr:
        return Expr(f"{args[0].src}.astype(jnp.{dtype})", layout="any", result="same")

    return rule


def _to(args, kwargs, node) -> Expr:
    """x.to(dtype), x.to(other) (its dtype), x.to(device) (nothing in the port)."""
    x, *rest = args
    raw = list(node.args[1:]) + ([node.kwargs["dtype"]] if "dtype" in node.kwargs else [])
    for value, source in zip(rest + ([kwargs["dtype"]] if "dtype" in kwargs else []), raw):
        if value.is_const and type(value.const).__name__ == "dtype":
            return Expr(f"{x.src}.astype({value.src})", layout="any", result="same")
        if getattr(source, "target", None) is getattr and source.args[1] == "dtype":
            return Expr(f"{x.src}.astype({value.src})", layout="any", result="same")
        if value.rank is not None:  # another tensor: its dtype
            return Expr(f"{x.src}.astype({value.src}.dtype)", layout="any", result="same")
    return Expr(x.src, layout="any", result="same")


def _where(args, kwargs, node) -> Expr:
    bound = bind(args, kwargs, "condition input other")
    return Expr(f"jnp.where({bound['condition'].src}, {bound['input'].src}, {bound['other'].src})")


def _getattr(args, kwargs, node) -> Expr:
    """x.shape (torch's order whatever the layout), x.dtype; x.device has no meaning in the port. (A submodule's
    named outputs are read as the structure they were: `trace._structured`.)"""
    x, name = args[0], const(args[1], "attribute")
    if name == "shape":
        return _size([x], {}, node)
    if name == "device":  # only ever passed on to a factory (torch.arange(..., device=x.device)), which drops it
        return Expr("None", layout="keep")
    if name in ("dtype", "ndim", "T"):
        return Expr(f"{x.src}.{name}", layout="keep" if name != "T" else "torch")
    raise Untranslatable(f"tensor attribute {name!r}")


def _arange(args, kwargs, node) -> Expr:
    kwargs = {k: v for k, v in kwargs.items() if k not in ("device", "requires_grad", "layout", "pin_memory")}
    dtype = kwargs.pop("dtype", None)
    bound = bind(args, kwargs, "start end step", end=None, step=1)
    if bound["end"].is_const and bound["end"].const is None:
        bound = {"start": Value.constant(0), "end": bound["start"], "step": bound["step"]}
    dtype_src = "" if dtype is None else f", dtype={dtype.src}"
    # torch's arange of ints is int64, of floats the default float dtype: the port follows its inputs
    return Expr(f"jnp.arange({bound['start'].src}, {bound['end'].src}, {bound['step'].src}{dtype_src})",
                layout="keep")


def _outer(args, kwargs, node) -> Expr:
    bound = bind(args, kwargs, "input vec2")
    return Expr(f"jnp.outer({bound['input'].src}, {bound['vec2'].src})")


def _identity(args, kwargs, node) -> Expr:
    return Expr(args[0].src, layout="any", result="same")


def _masked_fill(args, kwargs, node) -> Expr:
    bound = bind(args, kwargs, "input mask value")
    return Expr(f"jnp.where({bound['mask'].src}, {bound['value'].src}, {bound['input'].src})")


def _sdpa(args, kwargs, node) -> Expr:
    """F.scaled_dot_product_attention, its formula written out (torch's math kernel: softmax in the run's dtype)."""
    bound = bind(args, kwargs, "query key value attn_mask dropout_p is_causal scale enable_gqa", attn_mask=None,
                 dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False)
    if const(bound["dropout_p"], "dropout_p") or const(bound["enable_gqa"], "enable_gqa"):
        raise Untranslatable("scaled_dot_product_attention with dropout_p or enable_gqa")
    q, k, v = bound["query"], bound["key"], bound["value"]
    scale = const(bound["scale"], "scale")
    scores = f"(({q.src} @ jnp.swapaxes({k.src}, -1, -2)) * {'(1.0 / jnp.sqrt(' + q.src + '.shape[-1]))' if scale is None else repr(scale)})"
    mask = bound["attn_mask"]
    if const(bound["is_causal"], "is_causal"):
        scores = (f"jnp.where(jnp.tril(jnp.ones(({q.src}.shape[-2], {k.src}.shape[-2]), bool)), {scores}, -jnp.inf)")
    if not (mask.is_const and mask.const is None):
        scores = (f"jnp.where({mask.src}, {scores}, -jnp.inf)" if node.args and _is_bool(node, "attn_mask")
                  else f"({scores} + {mask.src})")
    return Expr(f"(jax.nn.softmax({scores}, axis=-1) @ {v.src})")


def _expand(args, kwargs, node) -> Expr:
    """x.expand(*sizes): a broadcast, -1 keeping the size x has there."""
    x, *sizes = args
    if len(sizes) == 1 and sizes[0].is_const and isinstance(sizes[0].const, (tuple, list)):
        sizes = [s if isinstance(s, Value) else Value.constant(s) for s in sizes[0].const]
    lead = len(sizes) - x.rank
    shape = [f"{x.src}.shape[{i - lead}]" if s.is_const and s.const == -1 else s.src for i, s in enumerate(sizes)]
    return Expr(f"jnp.broadcast_to({x.src}, ({', '.join(shape)},))")


def _expand_as(args, kwargs, node) -> Expr:
    bound = bind(args, kwargs, "input other")
    return Expr(f"jnp.broadcast_to({bound['input'].src}, {bound['other'].src}.shape)")


def _plus_product(names: str) -> Callable:
    """torch.addmm / baddbmm (`names`: their parameters): beta * input + alpha * (a @ b)."""
    def rule(args, kwargs, node) -> Expr:
        bound = bind(args, kwargs, names, beta=1, alpha=1)
        _, a, b, *_ = names.split()
        beta, alpha = const(bound["beta"], "beta"), const(bound["alpha"], "alpha")
        base = "" if beta == 0 else f"{'' if beta == 1 else repr(beta) + ' * '}{bound['input'].src} + "
        return Expr(f"({base}{'' if alpha == 1 else repr(alpha) + ' * '}({bound[a].src} @ {bound[b].src}))")

    return rule


_addmm, _baddbmm = _plus_product("input mat1 mat2 beta alpha"), _plus_product("input batch1 batch2 beta alpha")


def _pow(args, kwargs, node) -> Expr:
    bound = bind(args, kwargs, "input exponent")
    return Expr(f"({bound['input'].src} ** {bound['exponent'].src})", layout="any", result="same")


def _factory(function: str) -> Callable:
    """torch.ones/zeros(size...), torch.full(size, fill): the port's array of that shape (device dropped)."""
    def rule(args, kwargs, node) -> Expr:
        kwargs = {k: v for k, v in kwargs.items() if k not in ("device", "requires_grad", "layout", "pin_memory")}
        dtype = kwargs.pop("dtype", None)
        fill = None
        if function == "full":
            bound = bind(args, kwargs, "size fill_value")
            sizes, fill = [bound["size"]], bound["fill_value"]
        else:
            sizes = args + ([kwargs.pop("size")] if "size" in kwargs else [])
        # one computed size is an int or a whole shape (`x.shape`): either is jnp's shape argument as it is
        listed = _shape_args(sizes)
        shape = sizes[0].src if len(sizes) == 1 and not sizes[0].is_const else (f"({listed},)" if listed else "()")
        value = "" if fill is None else f", {fill.src}"
        cast = "" if dtype is None or dtype.is_const and dtype.const is None else f", dtype={dtype.src}"
        return Expr(f"jnp.{function}({shape}{value}{cast})", layout="keep")

    return rule


def _tensor(args, kwargs, node) -> Expr:
    """torch.tensor(constant, dtype=...): the same constant as an array."""
    bound = bind(args, kwargs, "data dtype device requires_grad pin_memory", dtype=None)
    dtype = bound["dtype"]
    cast = "" if dtype.is_const and dtype.const is None else f", dtype={dtype.src}"
    return Expr(f"jnp.asarray({bound['data'].src}{cast})", layout="keep")


def _embedding(args, kwargs, node) -> Expr:
    """F.embedding(ids, weight): rows of weight (padding_idx only stops the gradient, as nn.Embedding's rule)."""
    bound = bind(args, kwargs, "input weight padding_idx max_norm norm_type scale_grad_by_freq sparse",
                 padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False, sparse=False)
    if const(bound["max_norm"], "max_norm") is not None or const(bound["scale_grad_by_freq"], "scale_grad_by_freq"):
        raise Untranslatable("F.embedding with max_norm or scale_grad_by_freq")
    ids, weight, pad = bound["input"], bound["weight"], const(bound["padding_idx"], "padding_idx")
    rows = f"jnp.take({weight.src}, {ids.src}, axis=0)"
    if pad is None:
        return Expr(rows)
    return Expr(f"jnp.where(({ids.src} == {pad})[..., None], jax.lax.stop_gradient({rows}), {rows})")


def _stack(args, kwargs, node) -> Expr:
    bound = bind(args, kwargs, "tensors dim", dim=0)
    tensors = _tensor_list(bound["tensors"])
    first = tensors[0]
    dim = const(bound["dim"], "dim")
    return Expr(f"jnp.stack([{', '.join(t.src for t in tensors)}], axis={dim % (first.rank + 1)})")


def _reshape_as(args, kwargs, node) -> Expr:
    bound = bind(args, kwargs, "input other")
    return Expr(f"{bound['input'].src}.reshape({bound['other'].src}.shape)")


def _triangle(function: str) -> Callable:
    def rule(args, kwargs, node) -> Expr:
        bound = bind(args, kwargs, "input diagonal", diagonal=0)
        return Expr(f"jnp.{function}({bound['input'].src}, {const(bound['diagonal'], 'diagonal')})")

    return rule


def _cumsum(args, kwargs, node) -> Expr:
    bound = bind(args, kwargs, "input dim dtype", dtype=None)
    x = bound["input"]
    cast = "" if const(bound["dtype"], "dtype") is None else f", dtype={bound['dtype'].src}"
    return Expr(f"jnp.cumsum({x.src}, axis={dim_of(x, const(bound['dim'], 'dim'))}{cast})")


def _index_select(args, kwargs, node) -> Expr:
    bound = bind(args, kwargs, "input dim index")
    x = bound["input"]
    return Expr(f"jnp.take({x.src}, {bound['index'].src}, axis={dim_of(x, const(bound['dim'], 'dim'))})")


def _extreme(name: str) -> Callable:
    """torch.max/min: of two tensors elementwise, of all elements, or along a dim (values and indices)."""
    def rule(args, kwargs, node) -> Expr:
        kwargs = {("other" if k == "dim" else k): v for k, v in kwargs.items()}  # torch.max(x, dim=1): one slot
        bound = bind(args, kwargs, "input other keepdim", other=None, keepdim=False)
        x, other = bound["input"], bound["other"]
        if other.rank is not None:
            return Expr(f"jnp.{name}imum({x.src}, {other.src})")
        if other.is_const and other.const is None:
            return Expr(f"{x.src}.{name}()")
        dim, keep = dim_of(x, const(other, "dim")), const(bound["keepdim"], "keepdim")
        return Expr(f"({x.src}.{name}(axis={dim}, keepdims={keep}), {x.src}.arg{name}(axis={dim}, keepdims={keep}))")

    return rule


def finfo_field(dtype, field: str):
    """`torch.finfo(dtype).<field>` as one graph node (the dtype is the port's, known when it runs)."""
    import torch

    return getattr(torch.finfo(dtype), field)


def _finfo(args, kwargs, node) -> Expr:
    """torch.finfo(x.dtype).min (and max, eps, tiny) of a dtype known only when the port runs."""
    return Expr(f"jnp.finfo({args[0].src}).{const(args[1], 'field')}", layout="keep")


def _is_bool(node, name: str) -> bool:
    arg = node.kwargs.get(name, node.args[3] if len(node.args) > 3 else None)
    meta = getattr(arg, "meta", {}).get("tensor_meta")
    return meta is not None and str(meta.dtype) == "torch.bool"


def functions() -> dict:
    """torch function or Python operator -> rule."""
    import torch
    import torch.nn.functional as F

    table = {
        operator.add: _binary("+"), operator.sub: _binary("-"), operator.mul: _binary("*"),
        operator.truediv: _binary("/"), operator.floordiv: _binary("//"), operator.pow: _binary("**"),
        operator.gt: _binary(">"), operator.lt: _binary("<"), operator.ge: _binary(">="), operator.le: _binary("<="),
        operator.eq: _binary("=="), operator.ne: _binary("!="), torch.where: _where,
        operator.matmul: _matmul, operator.getitem: _getitem, operator.setitem: _setitem, operator.neg: _unary("(-{})"),
        torch.add: _binary("+"), torch.sub: _binary("-"), torch.mul: _binary("*"), torch.div: _binary("/"),
        torch.matmul: _matmul, torch.bmm: _matmul, torch.flatten: _flatten, torch.cat: _cat, torch.concat: _cat,
        torch.chunk: _chunk, torch.split: _split, torch.transpose: _transpose, torch.permute: _permute, torch.reshape: _reshape,
        torch.unsqueeze: _unsqueeze, torch.squeeze: _squeeze, torch.mean: _reduction("mean"),
        torch.sum: _reduction("sum"), torch.exp: _unary("jnp.exp({})"), torch.log: _unary("jnp.log({})"),
        torch.sqrt: _unary("jnp.sqrt({})"), torch.rsqrt: _unary("jax.lax.rsqrt({})"), torch.abs: _unary("jnp.abs({})"),
        getattr: _getattr, torch.arange: _arange, torch.outer: _outer, torch.cos: _unary("jnp.cos({})"),
        torch.sin: _unary("jnp.sin({})"),
        torch.softmax: _softmax("softmax"), torch.log_softmax: _softmax("log_softmax"),
        F.softmax: _softmax("softmax"), F.log_softmax: _softmax("log_softmax"),
        F.scaled_dot_product_attention: _sdpa, torch.masked_fill: _masked_fill,
        torch.addmm: _addmm, torch.pow: _pow, torch.ones: _factory("ones"), torch.zeros: _factory("zeros"),
        torch.full: _factory("full"), finfo_field: _finfo, torch.tensor: _tensor, F.embedding: _embedding,
        torch.stack: _stack, torch.baddbmm: _baddbmm, torch.triu: _triangle("triu"), torch.tril: _triangle("tril"),
        torch.cumsum: _cumsum, torch.index_select: _index_select, torch.max: _extreme("max"),
        torch.min: _extreme("min"),
        F.relu: _activation("relu"), torch.relu: _activation("relu"), F.relu6: _activation("relu6"),
        F.gelu: _activation("gelu", "input approximate", approximate="none"),
        F.silu: _activation("silu"), torch.sigmoid: _activation("sigmoid"), F.sigmoid: _activation("sigmoid"),
        torch.tanh: _activation("tanh"), F.tanh: _activation("tanh"), F.mish: _activation("mish"),
        F.leaky_relu: _activation("leaky_relu", "input negative_slope", negative_slope=0.01),
        F.elu: _activation("elu", "input alpha", alpha=1.0),
        F.softplus: _activation("softplus", "input beta threshold", beta=1.0, threshold=20.0),
    }
    return table


METHODS: dict[str, Callable] = {
    "view": _reshape, "reshape": _reshape, "flatten": _flatten, "size": _size, "dim": _dim, "permute": _permute,
    "transpose": _transpose, "t": _t, "contiguous": _identity, "mean": _reduction("mean"),
    "sum": _reduction("sum"), "softmax": _softmax("softmax"), "log_softmax": _softmax("log_softmax"),
    "unsqueeze": _unsqueeze, "squeeze": _squeeze, "chunk": _chunk, "matmul": _matmul, "masked_fill": _masked_fill,
    "float": _astype("float32"), "double": _astype("float64"), "to": _to, "type_as": _identity,
    "relu": _activation("relu"), "sigmoid": _activation("sigmoid"), "tanh": _activation("tanh"),
    "exp": _unary("jnp.exp({})"), "cos": _unary("jnp.cos({})"), "sin": _unary("jnp.sin({})"), "log": _unary("jnp.log({})"), "sqrt": _unary("jnp.sqrt({})"),
    "rsqrt": _unary("jax.lax.rsqrt({})"), "abs": _unary("jnp.abs({})"), "neg": _unary("(-{})"),
    "gt": _binary(">"), "lt": _binary("<"), "ge": _binary(">="), "le": _binary("<="), "eq": _binary("=="),
    "ne": _binary("!="), "add": _binary("+"), "sub": _binary("-"), "mul": _binary("*"), "div": _binary("/"), "pow": _pow,
    "expand": _expand, "expand_as": _expand_as, "split": _split, "type": _type,
    "reshape_as": _reshape_as, "clone": _identity, "bool": _astype("bool_"), "long": _astype("int64"),
    "int": _astype("int32"), "triu": _triangle("triu"), "tril": _triangle("tril"), "cumsum": _cumsum,
    "index_select": _index_select, "max": _extreme("max"), "min": _extreme("min"), "baddbmm": _baddbmm, "detach": _unary("jax.lax.stop_gradient({})"),
}


def leaf_functions() -> dict:
    """Library functions translated whole rather than traced through (their own code builds a mask with vmap):
    function -> rule. The rule finds the arguments fx cannot hold (a config) in `node.target.keywords`."""
    try:
        from transformers import masking_utils
    except ImportError:
        return {}
    return {masking_utils.create_causal_mask: _create_causal_mask,
            masking_utils.create_sliding_window_causal_mask: _create_causal_mask}


def _create_causal_mask(args, kwargs, node) -> Expr:
    """transformers' create_causal_mask for eager attention: 0 where attended, the dtype's lowest value not."""
    fixed = node.target.keywords
    config = fixed.get("config")
    implementation = getattr(config, "_attn_implementation", None)
    if implementation != "eager":
        raise Untranslatable(f"create_causal_mask for attention {implementation!r}: its mask depends on the values "
                             "of attention_mask (only 'eager' has a rule)")
    window = getattr(config, "sliding_window", None) if node.target.func.__name__.startswith(
        "create_sliding_window") else None
    if fixed.get("past_key_values") is not None or fixed.get("or_mask_function") or fixed.get("and_mask_function"):
        raise Untranslatable("create_causal_mask with a cache or extra mask functions")
    embeds, mask = kwargs["input_embeds"], kwargs.get("attention_mask", Value.constant(None))
    positions = kwargs.get("position_ids", Value.constant(None))
    if mask.is_const and not positions.is_const and _reads_inputs(node.kwargs["position_ids"]):
        raise Untranslatable("create_causal_mask over packed sequences (position_ids without attention_mask)")
    return Expr(f"causal_mask({embeds.src}{'' if mask.is_const else ', ' + mask.src}"
                f"{'' if window is None else f', sliding_window={window}'})",
                imports=("from jaxtrain.port.support import causal_mask",))


def _reads_inputs(node) -> bool:
    """Whether a value depends on the forward's inputs' values (not just on constants and shapes)."""
    if node.op == "placeholder":
        return True
    if node.op == "call_method" and node.target in ("size", "dim"):
        return False
    if node.op == "call_function" and node.target is getattr:
        return False
    return any(_reads_inputs(n) for n in node.all_input_nodes)


def rule_for(target):
    """The rule of a function call (a leaf function is recorded as a functools.partial of it)."""
    target = getattr(target, "func", target)
    return functions().get(target) or leaf_functions().get(target)


def name_of(target) -> str:
    """A call's torch name for messages: `torch.flatten`, `F.relu`, `operator.add`, `Tensor.view`."""
    if isinstance(target, str):
        return f"Tensor.{target}"
    target = getattr(target, "func", target)
    module = getattr(target, "__module__", None) or "torch"
    module = {"torch.nn.functional": "F", "_operator": "operator"}.get(module, module)
    return f"{module}.{getattr(target, '__name__', repr(target))}"
