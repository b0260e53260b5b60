"""Weights between a torch `state_dict` and a Flax port's params/buffers, found automatically.

Layers pair up by name where the names pair (`encoder.0.fc` and `encoder.0.fc`, or
`encoder.layers.0.fc`, `encoder_0.fc`), the rest in call order: one forward pass of each
model (torch's forward hooks; Flax's call interceptor, `jaxtrain.flax_model`) lists the
modules that hold parameters, in the order they finish. A layer is a module owning
parameters itself, or a whole attention or recurrent module (`nn.MultiheadAttention`,
`nn.LSTM`/`GRU`/`RNN`; Flax's `MultiHeadAttention`, `RNN`, `Bidirectional`), whose
submodules are part of it. `weight_map` comes first: a dict {torch module: flax path}
pairs layers, a callable converts tensors itself, and what it maps no rule rejects.

Each pair's tensors move by the rule of the torch layer's family (`RULES`: one small
function per family; the layout conversions are `jaxtrain.parity.layouts`):

| torch                          | Flax                                | layout                          |
|--------------------------------|-------------------------------------|---------------------------------|
| Linear weight (out, in)        | kernel (in, out)                    | transposed                      |
| Conv{1,2,3}d weight (O, I, …)  | kernel (…, I, O)                    | spatial first, then I, O        |
| ConvTranspose{1,2,3}d (I, O, …)| ConvTranspose kernel (…, I, O)      | spatial first, flipped          |
| transformers' Conv1D (in, out) | Dense kernel (in, out)              | as is                           |
| BatchNorm weight/bias, running | scale/bias, mean/var (buffers)      | as is; num_batches_tracked dropped |
| LayerNorm/GroupNorm/RMSNorm    | scale (bias)                        | as is                           |
| Embedding weight (num, dim)    | embedding (num, dim)                | as is                           |
| MultiheadAttention in_proj     | query/key/value kernels (E, H, D)   | split, heads apart              |
| LSTM/GRU/RNN weight_ih/hh      | the cell's input/hidden kernels     | torch's gate order, per gate    |
| weight_norm original0/1 (g, v) | kernel/scale (or scale, w_g/w_v)    | g reshaped, v as the family's w |
| spectral_norm original, _u, _v | kernel, kernel/u, kernel/v (or u/v) | v in the port's kernel-row order |
| any other layer                | the tensor of the same name         | as is                           |

Parametrizations (`PARAMETRIZATIONS`: one small function per torch class) belong to the layer
they parametrize; a wrapper's leaves for the layer it wraps (linen's `nn.WeightNorm`,
`nn.SpectralNorm`: beside it, `WeightNorm_0.Dense_0/kernel/scale`; NNX's: `fc.scales`) are
that layer's (`unwrapped`). A Flax leaf named like torch's tensor with torch's shape is taken as is (a port that kept
torch's names and layout). One torch Parameter used by two modules (an LM head tied to its
embedding) is one tensor: when the port has no layer of its own for the second use, it uses
its one tensor twice too. Parameters one side owns but never calls are named, not paired.
Everything is shape-checked; what does not pair raises `PortMappingError` naming both sides.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from typing import Callable

import numpy as np

from jaxtrain.errors import PortMappingError
from jaxtrain.flax_model import PureModel, leaves_by_path, replace_leaves
from jaxtrain.parity import layouts

# --------------------------------------------------------------------------- the rules


@dataclasses.dataclass(frozen=True)
class Move:
    """Some tensors of a torch layer <-> some leaves of its Flax layer (names relative to each)."""

    torch: tuple
    flax: tuple
    to_flax: Callable  # {torch name: array} -> {flax name: array}
    to_torch: Callable  # {flax name: array} -> {torch name: array}; linear: also for grads and updates
    note: str | None = None  # why the two cannot train alike, when they cannot
    to_torch_values: Callable | None = None  # where values go back otherwise than gradients (a summed bias)


def _same(a):
    return np.asarray(a)


def _transpose(a):
    return np.ascontiguousarray(np.asarray(a).T)


def _conv_to_flax(w):
    w = np.asarray(w)
    return np.ascontiguousarray(np.transpose(w, tuple(range(2, w.ndim)) + (1, 0)))


def _conv_to_torch(k):
    k = np.asarray(k)
    n = k.ndim
    return np.ascontiguousarray(np.transpose(k, (n - 1, n - 2) + tuple(range(n - 2))))


def one(torch_name: str, flax_name: str, to_flax=_same, to_torch=_same) -> Move:
    return Move((torch_name,), (flax_name,), lambda t: {flax_name: to_flax(t[torch_name])},
                lambda f: {torch_name: to_torch(f[flax_name])})


def leaf_for(table: dict, name: str, shape: tuple, flax_shapes: dict) -> tuple:
    """(Flax leaf, to_flax, to_torch) of torch tensor `name` by a family's table: the table's leaf, or,
    where the port has none, the tensor's own name and layout when the port kept them."""
    flax_name, to_flax, to_torch = table.get(name, (name, _same, _same))
    if flax_name not in flax_shapes and tuple(flax_shapes.get(name, ())) == tuple(shape):
        return name, _same, _same
    return flax_name, to_flax, to_torch


def per_tensor(table: dict) -> Callable:
    """A rule moving each torch tensor to one Flax leaf: {torch name: (flax name, to_flax, to_torch)};
    other tensors go to the leaf of the same name, as they are."""
    def rule(module, torch_shapes: dict, flax_shapes: dict, flax_kind: str | None = None) -> list[Move]:
        moves = []
        for name, shape in torch_shapes.items():
            flax_name, to_flax, to_torch = leaf_for(table, name, shape, flax_shapes)
            moves.append(one(name, flax_name, to_flax, to_torch))
        return moves

    return rule


def _layouts_rule(to_flax: Callable, to_torch: Callable, note: Callable | None = None) -> Callable:
    """A rule from a pair of `jaxtrain.parity.layouts` functions over whole layers."""
    def rule(module, torch_shapes: dict, flax_shapes: dict, flax_kind: str | None = None) -> list[Move]:
        if set(torch_shapes) <= set(flax_shapes) and all(
                tuple(flax_shapes[k]) == tuple(v) for k, v in torch_shapes.items()):
            return per_tensor({})(module, torch_shapes, flax_shapes)  # the port kept torch's names and layout
        try:
            names = tuple(to_flax({k: np.zeros(v, np.float32) for k, v in torch_shapes.items()}, flax_shapes))
        except ValueError as e:
            raise PortMappingError(str(e)) from None
        return [Move(tuple(torch_shapes), names, lambda t: to_flax(t, flax_shapes),
                     lambda f: to_torch(f, torch_shapes), note and note(torch_shapes, flax_shapes),
                     lambda f: to_torch(f, torch_shapes, values=True))]

    return rule


_AFFINE = {"weight": ("scale", _same, _same), "bias": ("bias", _same, _same)}
# families whose tensors each move to one Flax leaf: {torch name: (flax name, to_flax, to_torch)}
TABLES: dict[str, dict] = {
    "Linear": {"weight": ("kernel", _transpose, _transpose)},
    "Conv": {"weight": ("kernel", _conv_to_flax, _conv_to_torch)},
    "ConvTranspose": {"weight": ("kernel", layouts.conv_transpose_kernel_to_flax, layouts.conv_transpose_kernel_to_torch)},
    "BatchNorm": {**_AFFINE, "running_mean": ("mean", _same, _same), "running_var": ("var", _same, _same)},
    "LayerNorm": _AFFINE,
    "GroupNorm": _AFFINE,
    "RMSNorm": _AFFINE,
    "Embedding": {"weight": ("embedding", _same, _same)},
    "same names": {},
}


def conv1d(module, torch_shapes: dict, flax_shapes: dict, flax_kind: str | None = None) -> list[Move]:
    """transformers' Conv1D keeps its weight (in, out), as a Dense kernel is; that library's own
    FlaxConv1D stores it (out, in)."""
    transposed = flax_kind == "FlaxConv1D" or (
        flax_kind is None and tuple(flax_shapes.get("kernel", ())) == tuple(torch_shapes.get("weight", ()))[::-1])
    kernel = ("kernel", _transpose, _transpose) if transposed else ("kernel", _same, _same)
    return per_tensor({"weight": kernel})(module, torch_shapes, flax_shapes)


RULES: dict[str, Callable] = {
    **{family: per_tensor(table) for family, table in TABLES.items()},
    "Conv1D": conv1d,
    "MultiheadAttention": _layouts_rule(layouts.multihead_attention_to_flax, layouts.multihead_attention_to_torch),
    "LSTM": _layouts_rule(*layouts.recurrent("LSTM")),
    "GRU": _layouts_rule(*layouts.recurrent("GRU")),
    "RNN": _layouts_rule(*layouts.recurrent("RNN")),
}
# torch (or transformers) class name -> rule; looked up along the class's bases
TORCH_CLASSES = {
    "Linear": "Linear", "Conv1d": "Conv", "Conv2d": "Conv", "Conv3d": "Conv", "ConvTranspose1d": "ConvTranspose",
    "ConvTranspose2d": "ConvTranspose", "ConvTranspose3d": "ConvTranspose", "Conv1D": "Conv1D",
    "_BatchNorm": "BatchNorm", "LayerNorm": "LayerNorm", "GroupNorm": "GroupNorm", "RMSNorm": "RMSNorm",
    "Embedding": "Embedding", "MultiheadAttention": "MultiheadAttention", "LSTM": "LSTM", "GRU": "GRU",
    "RNN": "RNN",
}
TORCH_COMPOSITES = ("MultiheadAttention", "LSTM", "GRU", "RNN")  # rules over the module and its submodules
FLAX_COMPOSITES = ("MultiHeadAttention", "MultiHeadDotProductAttention", "SelfAttention", "RNN", "Bidirectional",
                   "LSTMCell", "OptimizedLSTMCell", "GRUCell", "SimpleCell")  # a linen cell built in a compact
# method belongs to that module, not to the nn.RNN scanning it: the cell is the layer
RULE_BUFFERS = {"BatchNorm": ("running_mean", "running_var")}  # buffers that are trained state
DROPPED = ("num_batches_tracked",)


def automatic_layout(rule: str, torch_name: str, value):
    """The rule's Flax layout of one torch tensor (None for families moved as whole layers)."""
    table = TABLES.get(rule)
    if table is None:
        return None
    return table.get(torch_name, (torch_name, _same, _same))[1](value)


def given(out) -> list:
    """A weight_map callable's answer as [(flax path, value)] (empty: the automatic rule)."""
    return _given(out) or []


def rule_for(torch_module) -> str:
    """The rule's name for a torch layer ('same names' for layers no rule knows)."""
    for klass in type(torch_module).__mro__:
        if klass.__module__.startswith(("torch.nn", "transformers")) and klass.__name__ in TORCH_CLASSES:
            return TORCH_CLASSES[klass.__name__]
    return "same names"


def is_torch_layer(module) -> bool:
    """A module the mapping pairs: it owns parameters, a rule's trained buffers, or is a composite."""
    rule = rule_for(module)
    return (rule in TORCH_COMPOSITES or any(True for _ in module.parameters(recurse=False)) or bool(parametrized(module))
            or any(k in RULE_BUFFERS.get(rule, ()) for k, _ in module.named_buffers(recurse=False)))


# --------------------------------------------------------------------------- torch parametrizations


def parametrizations(module) -> dict:
    """{parametrized tensor's name: its ParametrizationList} on `module` (torch.nn.utils.parametrize)."""
    plists = getattr(module, "parametrizations", None)
    return dict(plists.items()) if plists is not None and hasattr(plists, "items") else {}


def parametrization_kinds(module) -> dict:
    """{parametrized tensor's name: [parametrization class names]} (`_WeightNorm`, `_SpectralNorm`)."""
    return {name: [type(m).__name__ for m in plist] for name, plist in parametrizations(module).items()}


def parametrized(module, buffers: bool = False) -> dict:
    """{relative name: tensor} of the parametrizations on `module`: `parametrizations.weight.original0`,
    ... belong to the layer they parametrize; with `buffers`, also the parametrization's own state
    (spectral_norm's `parametrizations.weight.0._u`, `_v`)."""
    plists = parametrizations(module)
    out = {f"parametrizations.{p}.{k}": v for p, plist in plists.items() for k, v in plist.named_parameters(recurse=False)}
    if buffers:
        out.update({f"parametrizations.{p}.{k}": v for p, plist in plists.items() for k, v in plist.named_buffers()
                    if v.is_floating_point()})
    return out


def _factor_leaf(flax_shapes: dict, leaf: str, *names: str) -> str | None:
    """The port's leaf for a parametrization's factor: Flax's wrappers keep it as `kernel/<name>` (linen's
    WeightNorm `kernel/scale`, SpectralNorm `kernel/u`), a hand-written port under the factor's name."""
    return next((n for n in (*(f"{leaf}/{x}" for x in names), *names) if n in flax_shapes), None)


def _axis_order(shape: tuple, dim: int, to_flax: Callable, what: str) -> None:
    """Raise unless the layout keeps torch's axis `dim` (the one normalised per entry) as the port's last
    axis, the one Flax's wrappers keep per entry (a Linear's out: yes; a Linear with dim=1: no)."""
    index = np.zeros(shape, np.int64) + np.arange(shape[dim]).reshape([-1 if a == dim else 1 for a in range(len(shape))])
    laid = np.asarray(to_flax(index))
    if laid.shape[-1] != shape[dim] or not np.array_equal(laid, np.broadcast_to(np.arange(shape[dim]), laid.shape)):
        raise PortMappingError(f"{what}(dim={dim}) on a weight of shape {tuple(shape)}: the port's layout does not "
                               "keep that axis last, where its per-output factors live; pass a callable weight_map "
                               "for these tensors")


def _weight_norm(module, name: str, rule_name: str, torch_shapes: dict, flax_shapes: dict) -> list[Move]:
    """weight_norm on tensor `w` (original0 = g, original1 = v): in the port as `w_g` and `w_v` (torch's
    legacy weight_norm names), as they are but for g's shape; or as the family's leaf for `w` (v in that
    family's layout) and its scale (`kernel/scale` under linen's nn.WeightNorm, or `scale`)."""
    g, v = f"parametrizations.{name}.original0", f"parametrizations.{name}.original1"
    plist = module.parametrizations[name]
    shape = tuple(plist.original1.shape)
    if f"{name}_g" in flax_shapes and f"{name}_v" in flax_shapes:
        to_g, to_v, layout = f"{name}_g", f"{name}_v", (_same, _same)
    else:
        to_v, to_flax, to_torch = leaf_for(TABLES.get(rule_name, {}), name, shape, flax_shapes)
        to_g, layout = _factor_leaf(flax_shapes, to_v, "scale") or "scale", (to_flax, to_torch)
        if to_flax is not _same and plist.original0.numel() > 1:  # dim=None: one g
            _axis_order(shape, plist[0].dim, to_flax, "weight_norm")
    g_flax, g_torch = tuple(flax_shapes.get(to_g, ())), tuple(plist.original0.shape)
    moves = [one(g, to_g, lambda a, s=g_flax: np.asarray(a).reshape(s), lambda a, s=g_torch: np.asarray(a).reshape(s)),
             one(v, to_v, *layout)]
    return [m for m in moves if m.torch[0] in torch_shapes]  # what a weight_map converts itself is not here


def _column_order(shape: tuple, dim: int, to_flax: Callable) -> np.ndarray:
    """torch's columns of the weight matrix (the weight with `dim` moved first, flattened) in the order of
    the port's kernel rows (the kernel flattened to (-1, out)): each element's column number laid out as
    the family lays out weights."""
    rest = np.arange(int(np.prod(shape)) // shape[dim]).reshape(tuple(np.delete(shape, dim)))
    columns = np.asarray(to_flax(np.moveaxis(np.broadcast_to(rest, (shape[dim], *rest.shape)), 0, dim)))
    return columns.reshape(-1, columns.shape[-1])[:, 0]


def _spectral_note(kept: set, flax_wrapper: bool) -> str:
    theirs = ("Flax's nn.SpectralNorm keeps u only and iterates v = W^T u, u = Wv, dividing by |Wv|" if flax_wrapper
              else f"the port keeps {' and '.join(sorted(kept)) or 'no power-iteration state'}")
    return (f"torch's spectral_norm keeps u and v and iterates u = Wv, v = W^T u before dividing by sigma = |W^T u|; "
            f"{theirs}: the normalised weights differ until the power iteration converges, and differ again "
            "whenever the weight moves")


def _spectral_norm(module, name: str, rule_name: str, torch_shapes: dict, flax_shapes: dict) -> list[Move]:
    """spectral_norm on tensor `w` (original, and the power iteration's unit vectors `0._u` (rows of the
    weight matrix) and `0._v` (its columns)): `original` as the family's leaf; `_u` and `_v` to the port's
    `kernel/u` and `kernel/v` (or `u`, `v`): the columns in the order of the port's kernel rows. A port
    without both (Flax's nn.SpectralNorm keeps u, and a sigma it never reads) is mapped, and a note says
    why the two cannot agree. A 1-D weight is w / |w|: no iteration, nothing else to map."""
    plist = module.parametrizations[name]
    sn, shape = plist[0], tuple(plist.original.shape)
    original, u, v = (f"parametrizations.{name}.{k}" for k in ("original", "0._u", "0._v"))
    leaf, to_flax, to_torch = leaf_for(TABLES.get(rule_name, {}), name, shape, flax_shapes)
    moves = [one(original, leaf, to_flax, to_torch)]
    if len(shape) == 1:
        return [m for m in moves if m.torch[0] in torch_shapes]
    if to_flax is _same:  # the port keeps torch's layout, and so its columns
        order = np.arange(int(np.prod(shape)) // shape[sn.dim])
    else:
        _axis_order(shape, sn.dim, to_flax, "spectral_norm")
        order = _column_order(shape, sn.dim, to_flax)
    kept = set()
    for factor, names, forth, back in (
            (u, ("u", "_u"), lambda a: a, lambda a: a),
            (v, ("v", "_v"), lambda a: a[order], lambda a: a[np.argsort(order)])):
        target = _factor_leaf(flax_shapes, leaf, *names)
        if target is None:
            continue
        kept.add(names[0])
        s_flax, s_torch = tuple(flax_shapes[target]), tuple(torch_shapes.get(factor, getattr(sn, names[1]).shape))
        moves.append(one(factor, target, lambda a, f=forth, s=s_flax: f(np.asarray(a).reshape(-1)).reshape(s),
                         lambda a, b=back, s=s_torch: b(np.asarray(a).reshape(-1)).reshape(s)))
    sigma = _factor_leaf(flax_shapes, leaf, "sigma")
    if sigma is not None:  # Flax's SpectralNorm stores the last sigma and never reads it
        moves.append(Move((), (sigma,), lambda t: {}, lambda f: {}))
    if kept != {"u", "v"}:
        moves[0] = dataclasses.replace(moves[0], note=_spectral_note(kept, kept == {"u"} and sigma is not None))
    return [m for m in moves if not m.torch or m.torch[0] in torch_shapes]


# torch parametrization class -> the rule moving its factors: one small function each
PARAMETRIZATIONS = {"_WeightNorm": _weight_norm, "_SpectralNorm": _spectral_norm}


def parametrization_moves(module, rule_name: str, torch_shapes: dict, flax_shapes: dict) -> list[Move]:
    """The parametrizations' factors on `module`, each by its class's rule; no two write one Flax leaf."""
    moves = []
    for name, kinds in parametrization_kinds(module).items():
        if len(kinds) > 1:
            raise PortMappingError(f"{type(module).__name__}.{name} has a chain of parametrizations "
                                   f"({', '.join(kinds)}), which no rule maps; pass a callable weight_map for its tensors")
        if kinds[0] not in PARAMETRIZATIONS:
            raise PortMappingError(f"{type(module).__name__}.{name} is parametrized by {kinds[0]}, which no rule maps "
                                   f"({', '.join(k.strip('_') for k in PARAMETRIZATIONS)} are mapped); pass a callable "
                                   "weight_map for its tensors")
        moves += PARAMETRIZATIONS[kinds[0]](module, name, rule_name, torch_shapes, flax_shapes)
    targets = [leaf for m in moves for leaf in m.flax]
    twice = sorted({leaf for leaf in targets if targets.count(leaf) > 1})
    if twice:
        raise PortMappingError(f"{type(module).__name__}'s parametrizations ({', '.join(module.parametrizations)}) "
                               f"would each take the port's {', '.join(twice)}; pass a callable weight_map for them")
    return moves


WRAPPER_LEAVES = ("scale", "u", "v", "sigma")  # what Flax's WeightNorm / SpectralNorm keep per wrapped tensor


def unwrapped(path: str, params) -> str:
    """A leaf a wrapper (nn.WeightNorm, nn.SpectralNorm) keeps for a tensor of the layer it wraps, named as
    that tensor's factor: linen's `WeightNorm_0.Dense_0/kernel/scale` is `Dense_0.kernel/scale` (the wrapped
    layer beside its wrapper, in the parent's scope; or inside it), NNX's `fc.scales.('kernel',)` is
    `fc.layer_instance.kernel/scale` and `fc.batch_stats.('kernel', 'u')` `fc.layer_instance.kernel/u`.
    `params`: the port's parameter paths, which the wrapped tensor must be one of."""
    nnx = re.match(r"^(?:(.*)\.)?(scales|batch_stats)\.(\(.*\))$", path)
    if nnx:
        key = tuple(str(k) for k in ast.literal_eval(nnx.group(3)))
        *param, stat = (*key, "scale") if nnx.group(2) == "scales" else key
        candidates = [_join(_join(nnx.group(1) or "", "layer_instance"), ".".join(param))]
    else:
        head, _, leaf = path.rpartition(".")
        *param, stat = leaf.split("/")
        if len(param) < 2 or stat not in WRAPPER_LEAVES:
            return path
        candidates = [_join(layer, ".".join(param)) for layer in (head.rpartition(".")[0], head)]
    return next((f"{c}/{stat}" for c in candidates if c in params), path)


# --------------------------------------------------------------------------- the mapping


@dataclasses.dataclass(frozen=True)
class Mapping:
    """The pairing of one torch model with one Flax port: layers and moves, both ways. Names are
    absolute: torch's `named_parameters()`/buffer names, Flax's dotted leaf paths."""

    layers: list  # [(torch module name, flax module path, rule name)] in torch's call order
    moves: list  # [(Move, {torch rel: abs}, {flax rel: abs real path}, buffer)]
    torch_types: dict  # torch module name -> class name
    weight_map: Callable | None = None
    notes: list = dataclasses.field(default_factory=list)  # [(torch layer, sentence)]: what cannot train alike
    unused: list = dataclasses.field(default_factory=list)  # parameters one side owns and never calls
    guesses: list = dataclasses.field(default_factory=list)  # equal-shape siblings paired by call order alone

    @property
    def tensors(self) -> list:
        """[(torch tensor name, is a buffer)], each once."""
        seen = {}
        for _, torch_names, _, buffer in self.moves:
            for name in torch_names.values():
                seen.setdefault(name, buffer)
        return list(seen.items())

    def buffer_names(self) -> set:
        return {n for n, b in self.tensors if b}

    def to_flax(self, model: PureModel, weights: dict):
        """torch state_dict values (numpy) -> (params, buffers) trees of the Flax port."""
        params, buffers = {}, {}
        trained = set(leaves_by_path(model.params))
        for move, torch_names, flax_paths, _ in self.moves:
            values = move.to_flax({rel: np.asarray(weights[name]) for rel, name in torch_names.items()})
            for rel, value in values.items():
                (params if flax_paths[rel] in trained else buffers)[flax_paths[rel]] = value
        return replace_leaves(model.params, params), replace_leaves(model.buffers, buffers)

    def to_torch(self, tree, buffers: bool = False, values: bool = False) -> dict:
        """A params-shaped tree (params, grads, updates) or a buffers tree -> {torch name: float64 numpy}.
        A torch tensor the port uses twice (an untied head) is read from its first leaf. `values`: the
        tree holds weights to load into torch (a Flax bias standing for torch's two goes to the first)."""
        leaves, out = leaves_by_path(tree), {}
        for move, torch_names, flax_paths, buffer in self.moves:
            if buffer != buffers or not all(p in leaves for p in flax_paths.values()):
                continue
            back = move.to_torch_values if values and move.to_torch_values else move.to_torch
            values_ = back({rel: np.asarray(leaves[p], np.float64) for rel, p in flax_paths.items()})
            for rel, value in values_.items():
                out.setdefault(torch_names[rel], np.asarray(value, np.float64))
        return out

    def torch_name_of_layer(self, flax_path: str) -> str | None:
        return next((t for t, f, _ in self.layers if f == flax_path), None)

    def rule_of(self, torch_layer: str) -> str | None:
        return next((r for t, _, r in self.layers if t == torch_layer), None)


def _describe(named_shapes: dict) -> str:
    return ", ".join(f"{name} {tuple(shape)}" for name, shape in named_shapes.items()) or "nothing"


def _is_state(leaf) -> bool:
    """Floating-point leaves are model state; integer counters and PRNG keys (NNX Dropout's) are not."""
    import jax.numpy as jnp

    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def _name_key(name: str) -> str:
    """A layer name with containers' spellings removed: `layers.0.fc`, `layers_0.fc`, `0.fc` alike."""
    parts = [p for p in re.sub(r"_(\d+)(?=\.|$)", r".\1", name).split(".") if p not in ("layers", "")]
    return ".".join(parts)


def _pair(torch_layers: list, flax_layers: list, overrides: dict) -> dict:
    """torch layer -> flax layer: the overrides, then equal names, then call order for the rest."""
    pairs = dict(overrides)
    taken = set(overrides.values())
    by_key: dict = {}
    for path in flax_layers:
        by_key.setdefault(_name_key(path), []).append(path)
    for name in torch_layers:
        match = [p for p in by_key.get(_name_key(name), []) if p not in taken]
        if name not in pairs and len(match) == 1:
            pairs[name] = match[0]
            taken.add(match[0])
    free_torch = [t for t in torch_layers if t not in pairs]
    free_flax = [p for p in flax_layers if p not in taken]
    if len(free_torch) == len(free_flax):
        pairs.update(zip(free_torch, free_flax))
        return pairs
    return {}


def _given(out) -> list | None:
    """A weight_map callable's answer as [(flax path, value)] (None: the automatic rule)."""
    if out is None:
        return None
    return [out] if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], str) else list(out)


def _way_back(out: np.ndarray, array: np.ndarray):
    """torch's layout from a value a weight_map gave: as is, transposed or reshaped (None: unknown)."""
    if out.shape == array.shape and np.array_equal(out, array):
        return _same
    if out.shape == array.T.shape and np.array_equal(out, array.T):
        return _transpose
    if out.size == array.size and np.array_equal(out.reshape(-1), array.reshape(-1)):
        return lambda a: np.asarray(a).reshape(array.shape)
    return None


def _user_moves(weight_map: Callable, torch_layer: str, tensors: dict, flax_state: dict) -> list[Move]:
    """Moves for what a callable weight_map converts itself (torch names relative to the layer,
    Flax names absolute). Its values go back to torch's layout when they are torch's values
    as they are, transposed or reshaped; otherwise they are not compared."""
    moves = []
    for rel, value in tensors.items():
        name, array = _join(torch_layer, rel), value.detach().cpu().numpy()
        for k, (path, out) in enumerate(_given(weight_map(name, array)) or []):
            out = np.asarray(out)
            if path not in flax_state:
                raise PortMappingError(f"weight_map maps {name} to {path!r}, which is not a Flax leaf")
            if tuple(out.shape) != tuple(flax_state[path].shape):
                raise PortMappingError(f"weight_map gives {path} shape {tuple(out.shape)}; the port's is "
                                       f"{tuple(flax_state[path].shape)}")
            back = _way_back(out, array)
            moves.append(Move(
                (rel,), (path,),
                lambda t, name=name, rel=rel, path=path, k=k: {path: np.asarray(_given(weight_map(name, t[rel]))[k][1])},
                (lambda f, rel=rel, path=path, back=back: {rel: back(f[path])}) if back else (lambda f: {})))
    return moves


def build_mapping(torch_layers: list, flax_layers: list, torch_model, model: PureModel,
                  weight_map=None, flax_kinds: dict | None = None) -> Mapping:
    """Pair the layers (torch names in call order; Flax paths in call order, `jaxtrain.flax_model`
    calls of layers), then their tensors by the layer's rule.

    `weight_map`: {torch module name: flax module path} overrides the pairing; a callable
    `(torch tensor name, numpy value) -> (flax leaf path, value) | [(flax path, value), ...] | None`
    converts tensors itself before any rule (None: the automatic rule)."""
    modules = dict(torch_model.named_modules())
    canonical = {}  # a Parameter's first name (named_parameters drops its second use)
    for name, p in torch_model.named_parameters():
        canonical.setdefault(id(p), name)
    overrides = weight_map if isinstance(weight_map, dict) else {}
    params, buffers = leaves_by_path(model.params), leaves_by_path(model.buffers)
    buffers = {k: v for k, v in buffers.items() if _is_state(v)}
    # a linen buffer's path starts with its collection ("batch_stats.bn.mean"): its layer is "bn"; a wrapper's
    # leaf for the layer it wraps is that layer's
    name_of = {**{k: unwrapped(k, params) for k in params},
               **{k: unwrapped(k.split(".", 1)[1] if model.kind == "linen" else k, params) for k in buffers}}
    real_path = {name_of[k]: k for k in (*params, *buffers)}
    flax_state = {name_of[k]: v for k, v in (*params.items(), *buffers.items())}
    # a frozen torch layer (requires_grad=False: a sinusoidal table) whose port reads its table without calling
    # the module (stop_gradient(self.pos.embedding)): the uncalled Flax module of the same name is its layer
    prefixes = {k.rsplit(".", 1)[0] for k in flax_state if "." in k}
    for t in torch_layers:
        named = [p for p in prefixes if _name_key(p) == _name_key(t) and p not in flax_layers]
        if _frozen(modules[t]) and len(named) == 1 and not any(p.startswith(named[0] + ".") for p in flax_layers):
            flax_layers.append(named[0])
    flax_owned = {p: _owned(flax_state, p, flax_layers) for p in flax_layers}
    # a module applied with weights that live elsewhere (a tied head: embedding.T) owns nothing here
    flax_layers = [p for p in flax_layers if flax_owned[p]]
    flax_owned = {p: flax_owned[p] for p in flax_layers}

    def torch_owned(name: str) -> dict:
        module = modules[name]
        rule = rule_for(module)
        recurse = rule in TORCH_COMPOSITES
        own = {**dict(module.named_parameters(recurse=recurse, remove_duplicate=False)),
               **parametrized(module, buffers=True)}
        wanted = RULE_BUFFERS.get(rule)
        for k, v in module.named_buffers(recurse=recurse):
            if k not in DROPPED and v.is_floating_point() and (wanted is None or k in wanted):
                own.setdefault(k, v)
        return own

    unknown = [k for k in overrides if k not in modules]
    if unknown:
        raise PortMappingError(f"weight_map names torch modules that do not exist: {', '.join(unknown)}; torch's "
                               f"layers: {', '.join(torch_layers)}")
    # a layer whose parameters all belong to an earlier layer (a tied head) is that layer's second use
    first_use: dict = {}
    tied = []
    for name in torch_layers:
        ps = [p for p in modules[name].parameters(recurse=rule_for(modules[name]) in TORCH_COMPOSITES)]
        if ps and all(id(p) in first_use for p in ps) and name not in overrides:
            tied.append(name)
        for p in ps:
            first_use.setdefault(id(p), name)
    # what a callable weight_map converts itself is paired by it: torch layers it converts whole, and
    # Flax layers it fills whole, leave the automatic pairing
    user = {}
    if callable(weight_map):
        for name in torch_layers:
            user[name] = _user_moves(weight_map, name, torch_owned(name), flax_state)
    # a tensor one side keeps as a buffer and the other as a parameter (final_logits_bias: a torch buffer, a
    # Flax Param behind stop_gradient) pairs by name and shape, never as a layer of its own
    by_name = _loose_tensors(torch_model, torch_layers, torch_owned, flax_layers, flax_owned)
    flax_layers = [p for p in flax_layers if p not in by_name]
    user_flax = {path for ms in user.values() for m in ms for path in m.flax}
    by_user = [t for t in torch_layers if user.get(t) and len({m.torch[0] for m in user[t]}) == len(torch_owned(t))]
    pairing_torch = [t for t in torch_layers if t not in by_user]
    pairing_flax = [p for p in flax_layers if not all(_join(p, k) in user_flax for k in flax_owned[p])]
    pairs = _pair(pairing_torch, pairing_flax, overrides)
    if not pairs and tied:
        pairs = _pair([t for t in pairing_torch if t not in tied], pairing_flax, overrides)
    # a layer whose parameters no optimizer trains (requires_grad=False: RoFormer's sinusoidal table) may be
    # a constant in the port
    frozen = [t for t in pairing_torch if t not in overrides and _frozen(modules[t])]
    if not pairs and frozen:
        for dropped in (frozen, frozen + tied):
            pairs = pairs or _pair([t for t in pairing_torch if t not in dropped], pairing_flax, overrides)
    if not pairs and pairing_torch and len(pairing_torch) == len(pairing_flax):
        raise PortMappingError(
            f"the layers cannot be paired: as many on each side ({len(pairing_torch)}), but some pair by name and the "
            f"rest are left unequal (torch [{'; '.join(pairing_torch)}], Flax [{'; '.join(pairing_flax)}]); pass "
            "weight_map={torch_module: flax_path} for the ones that do not pair by name or call order")
    partly = [t for t in pairing_torch if user.get(t)]
    if not pairs and partly:
        t = partly[0]
        done = sorted({m.torch[0] for m in user[t]})
        left = [k for k in torch_owned(t) if k not in done]
        filled = [p for p in flax_layers if p not in pairing_flax]
        raise PortMappingError(
            f"the weight_map converts some of {t}'s tensors ({', '.join(done)}) but not {', '.join(left)}, which "
            f"it leaves to the automatic rule, while the Flax tensors it fills leave no layer for that rule "
            f"({', '.join(filled) or 'none left'}): return a Flax leaf and its value for {', '.join(left)} too, or "
            "None for every tensor of the layer to let the rule convert it whole (it names what cannot train alike)")
    if not pairs and pairing_torch:
        raise PortMappingError(
            f"the models have different numbers of layers with weights{' left to pair' if by_user or user_flax else ''}: "
            f"torch {len(pairing_torch)} "
            f"[{'; '.join(f'{t}: ' + _describe({k: v.shape for k, v in torch_owned(t).items()}) for t in pairing_torch)}]"
            f", Flax {len(pairing_flax)} "
            f"[{'; '.join(f'{p}: ' + _describe({k: v.shape for k, v in flax_owned[p].items()}) for p in pairing_flax)}]"
            + (f" (the weight_map converts some tensors itself: torch layers it converts whole leave the pairing, "
               f"Flax layers it fills whole too)" if by_user or user_flax else "")
            + "; pass weight_map={torch_module: flax_path} for the ones that do not pair by name or call order")
    pairs.update({t: None for t in by_user})

    layers, moves, notes, used_flax = [], [], [], set()
    for flax_layer, tensors in by_name.items():
        for flax_rel, (torch_name, tensor) in tensors.items():
            flax_name = _join(flax_layer, flax_rel)
            trained_in_port = real_path[flax_name] in params
            moves.append((one(torch_name, flax_name), {torch_name: torch_name}, {flax_name: real_path[flax_name]},
                          not trained_in_port))  # read back from the tree the port keeps it in
            used_flax.add(flax_name)
            if trained_in_port and not tensor.requires_grad:
                notes.append((torch_name, f"torch never trains {torch_name} (a buffer or requires_grad=False); the "
                                          f"port keeps {real_path[flax_name]} as a parameter, which an optimizer with "
                                          "weight decay moves even behind stop_gradient"))
    for torch_name in torch_layers:
        if torch_name not in pairs:
            continue  # a tied layer the port does not have: its tensor is the earlier layer's
        flax_path = pairs[torch_name]
        if flax_path is None:  # converted whole by the weight_map
            for move in user[torch_name]:
                param_names = dict(modules[torch_name].named_parameters(
                    recurse=rule_for(modules[torch_name]) in TORCH_COMPOSITES, remove_duplicate=False))
                tensors = torch_owned(torch_name)
                moves.append((move, {k: canonical.get(id(tensors[k]), _join(torch_name, k)) for k in move.torch},
                              {k: real_path[k] for k in move.flax}, any(k not in param_names for k in move.torch)))
                used_flax.update(move.flax)
            layers.append((torch_name, None, "weight_map"))
            continue
        if flax_path not in flax_owned:
            raise PortMappingError(f"weight_map: {flax_path!r} is not a Flax layer with weights; Flax's layers: "
                                   f"{', '.join(flax_layers)}")
        module, rule_name = modules[torch_name], rule_for(modules[torch_name])
        tensors, flax_tensors = torch_owned(torch_name), dict(flax_owned[flax_path])
        param_names = {**dict(module.named_parameters(recurse=rule_name in TORCH_COMPOSITES, remove_duplicate=False)),
                       **parametrized(module)}
        absolute = {rel: canonical.get(id(v), f"{torch_name}.{rel}" if torch_name else rel) for rel, v in tensors.items()}
        if callable(weight_map):
            for move in user[torch_name]:
                moves.append((move, {k: absolute[k] for k in move.torch}, {k: real_path[k] for k in move.flax},
                              any(k not in param_names for k in move.torch)))
                used_flax.update(move.flax)
                tensors.pop(move.torch[0], None)
            flax_tensors = {k: v for k, v in flax_tensors.items() if _join(flax_path, k) not in used_flax}
        if tensors:
            torch_shapes = {k: tuple(v.shape) for k, v in tensors.items()}
            flax_shapes = {k: tuple(v.shape) for k, v in flax_tensors.items()}
            rule_moves = []
            if parametrized(module):  # the parametrization's factors first, then the family's rule for the rest
                rule_moves = parametrization_moves(module, rule_name, torch_shapes, flax_shapes)
                taken = {k for m in rule_moves for k in m.flax}
                torch_shapes = {k: v for k, v in torch_shapes.items() if not k.startswith("parametrizations.")}
                flax_shapes = {k: v for k, v in flax_shapes.items() if k not in taken}
            rule_moves += RULES[rule_name](module, torch_shapes, flax_shapes, (flax_kinds or {}).get(flax_path))
            torch_shapes = {k: tuple(v.shape) for k, v in tensors.items()}
            flax_shapes = {k: tuple(v.shape) for k, v in flax_tensors.items()}
            for move in rule_moves:
                _check_move(move, torch_name, flax_path, rule_name, torch_shapes, flax_shapes)
                buffer = any(k not in param_names for k in move.torch)
                frozen_in_port = [real_path[_join(flax_path, k)] for k in move.flax if real_path[_join(flax_path, k)]
                                  not in params]
                if frozen_in_port and not buffer and any(tensors[k].requires_grad for k in move.torch):
                    why = " (nnx.WeightNorm keeps its scales so)" if any(".scales." in p for p in frozen_in_port) else ""
                    notes.append((torch_name, f"torch trains {', '.join(absolute[k] for k in move.torch)}; the port "
                                              f"keeps {', '.join(frozen_in_port)} outside its parameters, where no "
                                              f"optimizer trains it{why}"))
                moves.append((move, {k: absolute[k] for k in move.torch},
                              {k: real_path[_join(flax_path, k)] for k in move.flax}, buffer))
                used_flax.update(_join(flax_path, k) for k in move.flax)
                if move.note:
                    notes.append((torch_name, move.note))
        left = [k for k in flax_tensors if _join(flax_path, k) not in used_flax]
        if left:
            raise PortMappingError(
                f"Flax layer {flax_path} has tensors torch layer {torch_name} lacks: " +
                _describe({k: flax_tensors[k].shape for k in sorted(left)}) +
                f" (torch: {_describe({k: v.shape for k, v in tensors.items()})})")
        if rule_name == "Embedding" and getattr(module, "padding_idx", None) is not None:
            notes.append((torch_name, f"nn.Embedding(padding_idx={module.padding_idx}): torch never trains that row"))
        layers.append((torch_name, flax_path, rule_name))
    unused = [f"Flax {k}" for k in flax_state if k not in used_flax]
    unused += [f"torch {t} (not trained: requires_grad=False; a constant in the port)" for t in frozen
               if t not in pairs]
    called = {id(p) for t in torch_layers for p in [*modules[t].parameters(recurse=rule_for(modules[t]) in TORCH_COMPOSITES),
                                                     *parametrized(modules[t]).values()]}
    called |= {id(tensor) for tensors in by_name.values() for _, tensor in tensors.values()}  # paired by name
    unused += [f"torch {n}" for n, p in torch_model.named_parameters() if id(p) not in called]
    return Mapping(layers, moves, {t: type(modules[t]).__name__ for t in torch_layers},
                   weight_map if callable(weight_map) else None, notes, unused,
                   _order_guesses(pairs, overrides, {t: torch_owned(t) for t in pairs if pairs[t] is not None}))


def _loose_tensors(torch_model, torch_layers: list, torch_owned: Callable, flax_layers: list,
                   flax_owned: dict) -> dict:
    """{Flax layer: {its leaf: (torch name, tensor)}} for the Flax layers all of whose leaves are torch tensors
    of the same name and shape that no torch layer owns (a buffer on the model itself: final_logits_bias)."""
    owned = {id(v) for t in torch_layers for v in torch_owned(t).values()}
    saved = torch_model.state_dict()  # a non-persistent buffer (rotary inv_freq) is no weight to carry
    loose = {_name_key(n): (n, v) for n, v in [*torch_model.named_buffers(), *torch_model.named_parameters()]
             if n in saved and v.is_floating_point() and id(v) not in owned and n.rsplit(".", 1)[-1] not in DROPPED}
    out = {}
    for layer in flax_layers:
        leaves = flax_owned[layer]
        found = {rel: loose.get(_name_key(_join(layer, rel))) for rel in leaves}
        if leaves and all(v is not None and tuple(v[1].shape) == tuple(leaves[rel].shape) for rel, v in found.items()):
            out[layer] = found
    return out


def _order_guesses(pairs: dict, overrides: dict, owned: dict) -> list[str]:
    """Pairs made by call order alone whose torch layer has an equal-shape sibling (same parent, same
    tensor shapes) also paired by call order: if the port calls them in another order they pair wrongly,
    and only names or a weight_map can tell. Said, not hidden."""
    def shapes(t):
        return tuple(sorted((k, tuple(v.shape)) for k, v in owned[t].items()))

    by_order = [t for t, f in pairs.items() if f is not None and t not in overrides and _name_key(t) != _name_key(f)]
    out = []
    for t in by_order:
        siblings = [s for s in by_order if s != t and s.rpartition(".")[0] == t.rpartition(".")[0]
                    and shapes(s) == shapes(t)]
        if siblings:
            out.append(f"{t} paired with {pairs[t]} by call order; equal-shape sibling(s) {', '.join(siblings)}: "
                       "if the port calls them in another order, pass weight_map={torch: flax} for them")
    return out


def _frozen(module) -> bool:
    ps = list(module.parameters(recurse=False))
    return bool(ps) and not any(p.requires_grad for p in ps)


def _join(layer: str, rel: str) -> str:
    return f"{layer}.{rel}" if layer else rel


def _owned(flax_state: dict, layer: str, flax_layers: list) -> dict:
    """The leaves of a Flax layer by their path relative to it: its own, and its submodules' unless
    those are layers themselves (a composite's submodules are its own)."""
    others = [p for p in flax_layers if p != layer and (not layer or p.startswith(layer + "."))]
    out = {}
    for path, leaf in flax_state.items():
        if (layer and not path.startswith(layer + ".")) or any(path.startswith(o + ".") for o in others):
            continue
        out[path[len(layer) + 1:] if layer else path] = leaf
    return out


def _check_move(move: Move, torch_name, flax_path, rule_name, torch_shapes, flax_shapes) -> None:
    """Every leaf a move writes exists with the shape the rule gives it."""
    try:
        expected = move.to_flax({k: np.zeros(torch_shapes[k], np.float32) for k in move.torch})
    except (ValueError, KeyError) as e:
        raise PortMappingError(f"{torch_name} ({rule_name} rule) cannot be laid out as Flax layer {flax_path} "
                               f"[{_describe(flax_shapes)}]: {e}") from None
    for name, value in expected.items():
        got = flax_shapes.get(name)
        if got is None or tuple(got) != tuple(np.shape(value)):
            raise PortMappingError(
                f"{'+'.join(f'{_join(torch_name, k)} {tuple(torch_shapes[k])}' for k in move.torch)} ({rule_name} "
                f"rule: Flax {name} {tuple(np.shape(value))}) has "
                f"no match in Flax layer {flax_path} [{_describe(flax_shapes)}]; torch layer {torch_name} "
                f"[{_describe(torch_shapes)}]")
