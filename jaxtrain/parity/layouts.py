"""Layouts of the layers whose torch tensors are not one Flax leaf each: pure numpy, both ways.

Each family has `to_flax(torch {name: array}, flax {name: shape}) -> {flax name: array}` and
`to_torch(flax {name: array}, torch {name: shape}) -> {torch name: array}`, names relative to the
layer. Flax leaves are found by the end of their path, so a cell inside `nn.RNN` (`cell.ii.kernel`),
in `nn.Bidirectional` (`forward_rnn.cell.ii.kernel`) or fused in NNX (`cell.dense_i.kernel`) is
found alike. What has no place raises ValueError naming it.

`to_torch` is the adjoint of `to_flax`: it carries gradients and updates exactly. Where `to_flax`
sums two torch tensors into one leaf (torch's two recurrent biases, one in Flax's cells), both
torch tensors read that leaf back, and `recurrent_note` says why such a port cannot train alike.
"""

from __future__ import annotations

import re

import numpy as np

# --------------------------------------------------------------------------- ConvTranspose


def conv_transpose_kernel_to_flax(w) -> np.ndarray:
    """torch ConvTranspose weight (in, out, *k) -> Flax ConvTranspose kernel (*k, in, out), spatially
    flipped (Flax's default `transpose_kernel=False` runs a plain convolution over the dilated input)."""
    w = np.asarray(w)
    n = w.ndim
    k = np.transpose(w, tuple(range(2, n)) + (0, 1))
    return np.ascontiguousarray(np.flip(k, axis=tuple(range(n - 2))))


def conv_transpose_kernel_to_torch(k) -> np.ndarray:
    k = np.asarray(k)
    n = k.ndim
    k = np.flip(k, axis=tuple(range(n - 2)))
    return np.ascontiguousarray(np.transpose(k, (n - 2, n - 1) + tuple(range(n - 2))))


# --------------------------------------------------------------------------- attention


def _find(names, suffix: str) -> str | None:
    hits = [n for n in names if n == suffix or n.endswith("." + suffix)]
    if len(hits) > 1:
        raise ValueError(f"more than one Flax leaf ends in {suffix}: {', '.join(hits)}")
    return hits[0] if hits else None


def _need(names, suffix: str) -> str:
    found = _find(names, suffix)
    if found is None:
        raise ValueError(f"no Flax leaf ends in {suffix} (has {', '.join(names) or 'nothing'})")
    return found


_QKV = ("query", "key", "value")


def _attention_torch(torch_tensors: dict) -> dict:
    """torch MultiheadAttention's tensors as {q/k/v/out: (weight (out, in), bias or None)}."""
    unknown = set(torch_tensors) - {"in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight",
                                    "v_proj_weight", "out_proj.weight", "out_proj.bias"}
    if unknown:
        raise ValueError(f"nn.MultiheadAttention's {', '.join(sorted(unknown))} (add_bias_kv) has no Flax place")
    e = np.asarray(torch_tensors["out_proj.weight"]).shape[0]
    if "in_proj_weight" in torch_tensors:
        w = np.asarray(torch_tensors["in_proj_weight"])
        weights = [w[:e], w[e:2 * e], w[2 * e:]]
    else:
        weights = [np.asarray(torch_tensors[f"{c}_proj_weight"]) for c in "qkv"]
    b = torch_tensors.get("in_proj_bias")
    biases = [None] * 3 if b is None else [np.asarray(b)[i * e:(i + 1) * e] for i in range(3)]
    out = dict(zip(_QKV, zip(weights, biases)))
    out["out"] = (np.asarray(torch_tensors["out_proj.weight"]), torch_tensors.get("out_proj.bias"))
    return out


def multihead_attention_to_flax(torch_tensors: dict, flax_shapes: dict) -> dict:
    """in_proj (3E, E) split into query/key/value kernels (E, heads, head dim); out_proj (E, E) to
    out kernel (heads, head dim, E). Flax's 2-D kernels (a port of plain Dense layers) fit too."""
    out = {}
    for proj, (weight, bias) in _attention_torch(torch_tensors).items():
        kernel = _need(flax_shapes, f"{proj}.kernel")
        out[kernel] = np.ascontiguousarray(np.asarray(weight).T.reshape(flax_shapes[kernel]))
        flax_bias = _find(flax_shapes, f"{proj}.bias")
        if bias is not None:
            if flax_bias is None:
                raise ValueError(f"torch's attention has a {proj} bias, the port has none")
            out[flax_bias] = np.asarray(bias).reshape(flax_shapes[flax_bias])
    return out


def multihead_attention_to_torch(flax_leaves: dict, torch_shapes: dict, values: bool = False) -> dict:
    names = list(flax_leaves)
    e = torch_shapes["out_proj.weight"][0]
    weights, biases = [], []
    for proj in _QKV:
        k = np.asarray(flax_leaves[_need(names, f"{proj}.kernel")])
        weights.append(k.reshape(k.shape[0], -1).T)
        b = _find(names, f"{proj}.bias")
        biases.append(None if b is None else np.asarray(flax_leaves[b]).reshape(-1))
    out = {}
    if "in_proj_weight" in torch_shapes:
        out["in_proj_weight"] = np.concatenate(weights, axis=0)
    else:
        out.update({f"{c}_proj_weight": w for c, w in zip("qkv", weights)})
    if "in_proj_bias" in torch_shapes:
        out["in_proj_bias"] = np.concatenate(biases, axis=0)
    k = np.asarray(flax_leaves[_need(names, "out.kernel")])
    out["out_proj.weight"] = np.ascontiguousarray(k.reshape(-1, e).T)
    if "out_proj.bias" in torch_shapes:
        out["out_proj.bias"] = np.asarray(flax_leaves[_need(names, "out.bias")]).reshape(-1)
    return out


# --------------------------------------------------------------------------- recurrent layers

# torch's gate order, which Flax's cells share (LSTM i f g o, GRU r z n, Elman one)
GATES = {"LSTM": ("i", "f", "g", "o"), "GRU": ("r", "z", "n"), "RNN": ("",)}
_INPUT_KERNEL = re.compile(r"^(.*?)(dense_i|i[a-z]?_?)\.kernel$")


def _natural(text: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _cells(flax_shapes: dict, kind: str) -> list[str]:
    """Each cell's path prefix, in torch's order (layer by layer, forward before backward)."""
    gates = GATES[kind]
    prefixes = set()
    for name in flax_shapes:
        m = _INPUT_KERNEL.match(name)
        if m and (m.group(2) == "dense_i" or m.group(2).rstrip("_") in {"i" + g for g in gates}):
            prefixes.add(m.group(1))
    return sorted(prefixes, key=lambda p: (_natural(p.replace("backward", "~").replace("reverse", "~"))))


def _suffixes(torch_shapes: dict, count: int) -> list[str]:
    directions = 2 if any(k.endswith("_reverse") for k in torch_shapes) else 1
    return [f"_l{k // directions}" + ("_reverse" if k % directions else "") for k in range(count)]


def _slots(prefix: str, flax_shapes: dict, kind: str) -> list[dict]:
    """Per gate: where its input/hidden kernels and biases live, as (flax name, column slice | None)."""
    gates = GATES[kind]
    if prefix + "dense_i.kernel" in flax_shapes:  # NNX: one Dense per side, gates side by side
        h = flax_shapes[prefix + "dense_h.kernel"][0]
        cols = [slice(j * h, (j + 1) * h) for j in range(len(gates))]
        loc = {side: prefix + f"dense_{side}" for side in "ih"}
        return [{side + "k": (loc[side] + ".kernel", c) for side in "ih"} |
                {side + "b": (loc[side] + ".bias", c) for side in "ih" if loc[side] + ".bias" in flax_shapes}
                for c in cols]
    slots = []
    for g in gates:
        slot = {}
        for side in "ih":
            base = next((prefix + side + g + end for end in ("", "_") if prefix + side + g + end + ".kernel"
                         in flax_shapes), None)
            if base is None:
                raise ValueError(f"no Flax kernel for {kind} gate {g or 'input'} ({side} side) under {prefix or 'the cell'}")
            slot[side + "k"] = (base + ".kernel", None)
            if base + ".bias" in flax_shapes:
                slot[side + "b"] = (base + ".bias", None)
        slots.append(slot)
    return slots


def _bias_plan(kind: str, gate: str, slot: dict) -> dict:
    """torch bias side -> Flax bias slot: one to one where Flax has both, else both into the one
    (GRU's n gate keeps its hidden bias inside the reset product: it cannot move to the input side)."""
    if "ib" in slot and "hb" in slot:
        return {"ih": "ib", "hh": "hb"}
    only = "ib" if "ib" in slot else "hb" if "hb" in slot else None
    if only is None:
        return {}
    if kind == "GRU" and gate == "n":
        return {"ih": "ib"} if only == "ib" else {"hh": "hb"}
    return {"ih": only, "hh": only}


def _recurrent_plan(kind: str, torch_shapes: dict, flax_shapes: dict):
    unknown = [k for k in torch_shapes if not re.match(r"^(weight|bias)_(ih|hh)_l\d+(_reverse)?$", k)]
    if unknown:
        raise ValueError(f"torch {kind}'s {', '.join(unknown)} (proj_size) has no Flax place")
    prefixes = _cells(flax_shapes, kind)
    layers = len([k for k in torch_shapes if k.startswith("weight_ih")])
    if len(prefixes) != layers:
        raise ValueError(f"torch's {kind} has {layers} layer(s)×direction(s), the port {len(prefixes)} cell(s)")
    return [(sfx, _slots(p, flax_shapes, kind)) for sfx, p in zip(_suffixes(torch_shapes, layers), prefixes)]


def _put(out: dict, flax_shapes: dict, where: tuple, value: np.ndarray) -> None:
    name, cols = where
    if cols is None:
        out[name] = value
    else:
        out.setdefault(name, np.zeros(flax_shapes[name], np.asarray(value).dtype))[..., cols] += value


def _take(flax_leaves: dict, where: tuple) -> np.ndarray:
    name, cols = where
    value = np.asarray(flax_leaves[name])
    return value if cols is None else value[..., cols]


def recurrent(kind: str):
    """(to_flax, to_torch, note) for torch's nn.LSTM / nn.GRU / nn.RNN (tanh)."""
    gates = GATES[kind]

    def to_flax(torch_tensors: dict, flax_shapes: dict) -> dict:
        out: dict = {}
        torch_shapes = {k: np.shape(v) for k, v in torch_tensors.items()}
        for sfx, slots in _recurrent_plan(kind, torch_shapes, flax_shapes):
            for side in ("ih", "hh"):
                w = np.split(np.asarray(torch_tensors[f"weight_{side}{sfx}"]), len(gates), axis=0)
                b = torch_tensors.get(f"bias_{side}{sfx}")
                b = None if b is None else np.split(np.asarray(b), len(gates))
                for j, (gate, slot) in enumerate(zip(gates, slots)):
                    _put(out, flax_shapes, slot[side[0] + "k"], np.ascontiguousarray(w[j].T))
                    target = _bias_plan(kind, gate, slot).get(side)
                    if b is not None and target is not None:
                        name, cols = slot[target]
                        if cols is None and name in out and side == "hh":
                            out[name] = out[name] + b[j]  # the second torch bias summed into Flax's one
                        else:
                            _put(out, flax_shapes, slot[target], b[j])
        return out

    def to_torch(flax_leaves: dict, torch_shapes: dict, values: bool = False) -> dict:
        """Flax leaves (or their gradients) -> torch's tensors. A Flax bias standing for torch's two
        (bias_ih + bias_hh) is each one's gradient; as a value (`values`) it is all bias_ih's."""
        out = {}
        flax_shapes = {k: np.shape(v) for k, v in flax_leaves.items()}
        for sfx, slots in _recurrent_plan(kind, torch_shapes, flax_shapes):
            for side in ("ih", "hh"):
                out[f"weight_{side}{sfx}"] = np.concatenate(
                    [_take(flax_leaves, slot[side[0] + "k"]).T for slot in slots], axis=0)
                if f"bias_{side}{sfx}" in torch_shapes:
                    parts = []
                    for gate, slot in zip(gates, slots):
                        target = _bias_plan(kind, gate, slot).get(side)
                        h = torch_shapes[f"bias_{side}{sfx}"][0] // len(gates)
                        summed = side == "hh" and target is not None and target == _bias_plan(kind, gate, slot).get("ih")
                        parts.append(np.zeros(h) if target is None or (values and summed)
                                     else _take(flax_leaves, slot[target]))
                    out[f"bias_{side}{sfx}"] = np.concatenate(parts)
        return out

    def note(torch_shapes: dict, flax_shapes: dict) -> str | None:
        if not any(k.startswith("bias_") for k in torch_shapes):
            return None
        plans = [(gate, _bias_plan(kind, gate, slot)) for _, slots in _recurrent_plan(kind, torch_shapes, flax_shapes)
                 for gate, slot in zip(gates, slots)]
        if any(len(plan) < 2 for _, plan in plans):
            return (f"torch's {kind} bias_hh (or bias_ih) has no place in the port's cell: it is dropped, and "
                    f"the outputs differ unless it is zero")
        if any(len(plan) == 2 and plan["ih"] == plan["hh"] for _, plan in plans):
            return (f"torch's {kind} has two biases per gate (bias_ih + bias_hh), the port's cell one: the forward "
                    f"pass matches (they are summed), but torch trains both, so their sum moves twice as fast")
        return None

    return to_flax, to_torch, note
