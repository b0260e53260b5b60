"""What a port-writer rule returns, shared by the module rules (`modules`) and the op rules (`ops`).

A layout is how a value's axes are laid out in the port: "torch" (torch's own order) or "last" (channels last:
Flax's convolutions, poolings and normalisations over images, rank 3 or more). A rule says which layout its
inputs must have ("any": it is elementwise, either will do) and the writer moves values between the two only
where a rule needs it, as a careful porter transposes once before a flatten.
"""

from __future__ import annotations

import dataclasses
from typing import Callable


class Untranslatable(Exception):
    """A torch module or op the writer has no rule for, or a use of it a rule cannot write (the message says
    why)."""


@dataclasses.dataclass
class Value:
    """An argument as a rule sees it: its source in the port, its layout, its rank (None: not a tensor) and, for
    a constant, the constant itself."""

    src: str
    layout: str = "torch"
    rank: int | None = None
    const: object = None
    is_const: bool = False

    @classmethod
    def constant(cls, value) -> "Value":
        return cls(literal(value), const=value, is_const=True)


def const(value: Value, what: str):
    """A rule's argument that must be a constant (a dim, a kernel size): its value."""
    if not value.is_const:
        raise Untranslatable(f"{what} computed while the model runs ({value.src})")
    return value.const


@dataclasses.dataclass
class Layer:
    """A torch module in the port: `init` builds it in the port's `__init__` (None: nothing to hold, the call
    is written inline); `call(attribute, inputs)` is its call's expression; `layout` what its inputs need."""

    init: str | None
    call: Callable[[str, list], str]
    layout: str = "torch"
    imports: tuple[str, ...] = ()
    inputs: int = 1  # how many positional inputs its call may take
    keywords: bool = False  # whether its call takes keyword arguments (given to `call` as "name=source")


@dataclasses.dataclass
class Expr:
    """An op in the port: its expression, the layout its tensor inputs need and the layout of its result
    ("same": the inputs' layout)."""

    source: str
    layout: str = "torch"
    result: str = "torch"
    imports: tuple[str, ...] = ()


def literal(value) -> str:
    """Python source for a constant argument (ints, floats, tuples, slices, None, dtypes)."""
    if isinstance(value, slice):
        parts = ["" if v is None else literal(v) for v in (value.start, value.stop, value.step)]
        return ":".join(parts[:2]) + (f":{parts[2]}" if parts[2] else "")
    if isinstance(value, tuple):
        return "(" + ", ".join(literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "jnp.inf" if value > 0 else "-jnp.inf"
    if type(value).__name__ == "dtype" and type(value).__module__ == "torch":
        return f"jnp.{str(value).removeprefix('torch.')}"
    if value is Ellipsis:
        return "..."
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    raise Untranslatable(f"a constant argument of type {type(value).__name__}")


def render(item) -> str:
    """A rule's argument, or a constant inside one (an index tuple mixing both), as source."""
    return item.src if isinstance(item, Value) else literal(item)


def pair(value, n: int) -> tuple:
    """torch's int-or-tuple hyperparameters as an n-tuple."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n
