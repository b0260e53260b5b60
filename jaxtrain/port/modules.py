"""The port writer's module rules: one small function per torch.nn family, from the torch module (its own
hyperparameters) and its call's fx node to a `rules.Layer` (what the port's `__init__` builds, what its call
writes, which layout its input needs).

Layers with weights become the Flax layer `check_port` and `convert` pair with torch's (nnx.Linear, nnx.Conv,
jaxtrain.layers.TorchBatchNorm, nnx.LayerNorm, nnx.Embed, ...); layers without weights are written inline.
`RULES` is looked up by the torch class's name along its bases.
"""

from __future__ import annotations

from typing import Callable

from jaxtrain.port.ops import ACTIVATIONS, flatten_expr
from jaxtrain.port.rules import Layer, Untranslatable, Value, pair

_PADDING_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _input(node) -> Value:
    from jaxtrain.port.trace import shape

    s = shape(node.args[0]) if node.args else None
    return Value("x", rank=None if s is None else len(s))


def _options(**given) -> str:
    """Keyword arguments that differ from the Flax layer's defaults (given as name=(value, default))."""
    return "".join(f", {k}={v!r}" for k, (v, default) in given.items() if v != default)


def linear(m, node) -> Layer:
    return Layer(f"nnx.Linear({m.in_features}, {m.out_features}{_options(use_bias=(m.bias is not None, True))}, "
                 "rngs=rngs)",
                 lambda attr, xs: f"{attr}({xs[0]})")


def conv(m, node) -> Layer:
    n = len(m.kernel_size)
    padding = m.padding if isinstance(m.padding, str) else [(p, p) for p in pair(m.padding, n)]
    pad_call = None
    if m.padding_mode != "zeros":
        if isinstance(padding, str):
            raise Untranslatable(f"padding={m.padding!r} with padding_mode={m.padding_mode!r}")
        pads = ((0, 0), *padding, (0, 0))  # channels last
        pad_call = f"jnp.pad({{}}, {pads}, mode={_PADDING_MODES[m.padding_mode]!r})"
        padding = "VALID"
    padding = padding.upper() if isinstance(padding, str) else padding
    ones = (1,) * n
    init = (f"nnx.Conv({m.in_channels}, {m.out_channels}, kernel_size={tuple(m.kernel_size)}"
            + _options(strides=(tuple(m.stride), ones), padding=(padding, None), kernel_dilation=(tuple(m.dilation), ones),
                       feature_group_count=(m.groups, 1), use_bias=(m.bias is not None, True)) + ", rngs=rngs)")
    call = (lambda attr, xs: f"{attr}({pad_call.format(xs[0])})") if pad_call else (lambda attr, xs: f"{attr}({xs[0]})")
    return Layer(init, call, layout="last")


def conv_transpose(m, node) -> Layer:
    """Flax's ConvTranspose runs a plain convolution over the dilated input (the kernel flipped by the mapping):
    torch's padding p is k - 1 - p on each side, dilated, and output_padding more at the end."""
    n = len(m.kernel_size)
    if m.groups != 1 or m.padding_mode != "zeros":
        raise Untranslatable("ConvTranspose with groups or a padding_mode (no rule yet)")
    padding = [(d * (k - 1) - p, d * (k - 1) - p + o) for k, p, o, d in
               zip(m.kernel_size, pair(m.padding, n), pair(m.output_padding, n), pair(m.dilation, n))]
    ones = (1,) * n
    init = (f"nnx.ConvTranspose({m.in_channels}, {m.out_channels}, kernel_size={tuple(m.kernel_size)}"
            + _options(strides=(tuple(m.stride), ones), padding=(padding, None),
                       kernel_dilation=(tuple(m.dilation), ones), use_bias=(m.bias is not None, True)) + ", rngs=rngs)")
    return Layer(init, lambda attr, xs: f"{attr}({xs[0]})", layout="last")


def batch_norm(m, node) -> Layer:
    if not m.affine or not m.track_running_stats or m.momentum is None:
        raise Untranslatable("BatchNorm without affine parameters, running statistics or a momentum")
    return Layer(f"TorchBatchNorm({m.num_features}, momentum={m.momentum!r}, eps={m.eps!r})",
                 lambda attr, xs: f"{attr}({xs[0]})", layout="last",
                 imports=("from jaxtrain.layers import TorchBatchNorm",))


def layer_norm(m, node) -> Layer:
    shape = tuple(m.normalized_shape)
    axes = tuple(range(-len(shape), 0))
    extra = "" if len(shape) == 1 else f", reduction_axes={axes}, feature_axes={axes}"
    size = shape[0] if len(shape) == 1 else shape
    bias = getattr(m, "bias", None) is not None
    return Layer(f"nnx.LayerNorm({size}, epsilon={m.eps!r}, use_bias={bias}, use_scale={m.elementwise_affine}, "
                 f"use_fast_variance=False{extra}, rngs=rngs)", lambda attr, xs: f"{attr}({xs[0]})")


def group_norm(m, node) -> Layer:
    return Layer(f"nnx.GroupNorm({m.num_channels}, num_groups={m.num_groups}, epsilon={m.eps!r}, "
                 f"use_scale={m.affine}, use_bias={m.affine}, use_fast_variance=False, rngs=rngs)",
                 lambda attr, xs: f"{attr}({xs[0]})", layout="last")


def embedding(m, node) -> Layer:
    if m.max_norm is not None or m.scale_grad_by_freq or m.sparse:
        raise Untranslatable("Embedding with max_norm, scale_grad_by_freq or sparse")
    pad = m.padding_idx
    if pad is None:
        call = lambda attr, xs: f"{attr}({xs[0]})"  # noqa: E731
    else:  # torch never trains the padding row: no gradient flows into it
        call = lambda attr, xs: (f"jnp.where(({xs[0]} == {pad})[..., None], jax.lax.stop_gradient({attr}({xs[0]})), "  # noqa: E731
                                 f"{attr}({xs[0]}))")
    return Layer(f"nnx.Embed({m.num_embeddings}, {m.embedding_dim}, rngs=rngs)", call)


def dropout(m, node) -> Layer:
    return Layer(f"nnx.Dropout({m.p!r}, rngs=rngs)", lambda attr, xs: f"{attr}({xs[0]})", layout="any")


def max_pool(m, node) -> Layer:
    n = int(type(m).__name__[-2])
    if m.ceil_mode or m.return_indices or any(d != 1 for d in pair(m.dilation, n)):
        raise Untranslatable("MaxPool with ceil_mode, return_indices or dilation")
    window, strides = pair(m.kernel_size, n), pair(m.stride or m.kernel_size, n)
    padding = tuple((p, p) for p in pair(m.padding, n))
    return Layer(None, lambda attr, xs: f"nnx.max_pool({xs[0]}, {window}, strides={strides}, padding={padding})",
                 layout="last")


def avg_pool(m, node) -> Layer:
    n = int(type(m).__name__[-2])
    if m.ceil_mode or m.divisor_override is not None:
        raise Untranslatable("AvgPool with ceil_mode or divisor_override")
    window, strides = pair(m.kernel_size, n), pair(m.stride or m.kernel_size, n)
    padding = tuple((p, p) for p in pair(m.padding, n))
    include = getattr(m, "count_include_pad", True)
    return Layer(None, lambda attr, xs: (f"nnx.avg_pool({xs[0]}, {window}, strides={strides}, padding={padding}, "
                                         f"count_include_pad={include})"), layout="last")


def adaptive_avg_pool(m, node) -> Layer:
    from jaxtrain.port.trace import shape

    n = int(type(m).__name__[-2])
    spatial = shape(node.args[0])[-n:]
    out = tuple(s if o is None else o for s, o in zip(spatial, pair(m.output_size, n)))
    axes = tuple(range(1, n + 1))
    if all(o == 1 for o in out):
        return Layer(None, lambda attr, xs: f"{xs[0]}.mean(axis={axes}, keepdims=True)", layout="last")
    if any(s % o for s, o in zip(spatial, out)):
        raise Untranslatable(f"AdaptiveAvgPool from {spatial} to {out}: windows of unequal sizes")
    window = tuple(s // o for s, o in zip(spatial, out))
    return Layer(None, lambda attr, xs: f"nnx.avg_pool({xs[0]}, {window}, strides={window})", layout="last")


def recurrent(m, node) -> Layer:
    kind = type(m).__name__ if type(m).__name__ in ("LSTM", "GRU") else next(
        k.__name__ for k in type(m).__mro__ if k.__name__ in ("LSTM", "GRU"))
    if getattr(m, "proj_size", 0) or (m.dropout and m.num_layers > 1):
        raise Untranslatable(f"{kind} with proj_size or dropout between layers (no rule yet)")
    options = _options(num_layers=(m.num_layers, 1), bias=(m.bias, True), batch_first=(m.batch_first, False),
                       bidirectional=(m.bidirectional, False))
    return Layer(f"TorchRecurrent({kind!r}, {m.input_size}, {m.hidden_size}{options}, rngs=rngs)",
                 lambda attr, xs: f"{attr}({', '.join(xs)})", imports=("from jaxtrain.layers import TorchRecurrent",),
                 inputs=2)


def multihead_attention(m, node) -> Layer:
    if m.dropout or not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        raise Untranslatable("MultiheadAttention with dropout, kdim/vdim, add_bias_kv or add_zero_attn (no rule yet)")
    options = _options(bias=(m.in_proj_bias is not None, True), batch_first=(m.batch_first, False))
    return Layer(f"TorchMultiheadAttention({m.embed_dim}, {m.num_heads}{options}, rngs=rngs)",
                 lambda attr, xs: f"{attr}({', '.join(xs)})", imports=("from jaxtrain.layers import TorchMultiheadAttention",),
                 inputs=8, keywords=True)


def transformer_layer(m, node) -> Layer:
    """nn.TransformerEncoderLayer / nn.TransformerDecoderLayer as jaxtrain.layers' classes of the same names."""
    import torch.nn.functional as F

    kind = next(k.__name__ for k in type(m).__mro__ if k.__name__ in ("TransformerEncoderLayer", "TransformerDecoderLayer"))
    act = m.activation
    name = act if isinstance(act, str) else {F.relu: "relu", F.gelu: "gelu"}.get(act, type(act).__name__.lower())
    attentions = [m.self_attn] + ([m.multihead_attn] if hasattr(m, "multihead_attn") else [])
    if name not in ("relu", "gelu") or any(a.dropout for a in attentions) or m.dropout.p:
        raise Untranslatable(f"{kind} with dropout (inside its attention: no rule yet) or an activation other "
                             "than relu/gelu")
    options = _options(dim_feedforward=(m.linear1.out_features, 2048), activation=(name, "relu"),
                       layer_norm_eps=(m.norm1.eps, 1e-5), batch_first=(m.self_attn.batch_first, False),
                       norm_first=(m.norm_first, False), bias=(m.linear1.bias is not None, True))
    return Layer(f"Torch{kind}({m.self_attn.embed_dim}, {m.self_attn.num_heads}{options}, rngs=rngs)",
                 lambda attr, xs: f"{attr}({', '.join(xs)})", imports=(f"from jaxtrain.layers import Torch{kind}",),
                 inputs=8, keywords=True)


def activation(name: str, *fields: str) -> Callable:
    def rule(m, node) -> Layer:
        extra = {f: getattr(m, f) for f in fields}
        return Layer(None, lambda attr, xs: ACTIVATIONS[name](xs[0], **extra), layout="any")

    return rule


def softmax(function: str) -> Callable:
    def rule(m, node) -> Layer:
        x = _input(node)
        dim = m.dim % x.rank if x.rank else m.dim
        return Layer(None, lambda attr, xs: f"jax.nn.{function}({xs[0]}, axis={dim})")

    return rule


def flatten(m, node) -> Layer:
    x = _input(node)
    return Layer(None, lambda attr, xs: flatten_expr(Value(xs[0], rank=x.rank), m.start_dim, m.end_dim))


def unflatten(m, node) -> Layer:
    x = _input(node)
    dim = m.dim % x.rank
    sizes = ", ".join(str(s) for s in m.unflattened_size)
    return Layer(None, lambda attr, xs: f"{xs[0]}.reshape(*{xs[0]}.shape[:{dim}], {sizes}, *{xs[0]}.shape[{dim + 1}:])")


RULES: dict[str, Callable] = {
    "Linear": linear, "Conv1d": conv, "Conv2d": conv, "Conv3d": conv,
    "ConvTranspose1d": conv_transpose, "ConvTranspose2d": conv_transpose, "ConvTranspose3d": conv_transpose,
    "BatchNorm1d": batch_norm, "BatchNorm2d": batch_norm, "BatchNorm3d": batch_norm,
    "MultiheadAttention": multihead_attention, "TransformerEncoderLayer": transformer_layer,
    "TransformerDecoderLayer": transformer_layer, "LSTM": recurrent, "GRU": recurrent, "LayerNorm": layer_norm, "GroupNorm": group_norm, "Embedding": embedding, "Dropout": dropout,
    "MaxPool1d": max_pool, "MaxPool2d": max_pool, "MaxPool3d": max_pool,
    "AvgPool1d": avg_pool, "AvgPool2d": avg_pool, "AvgPool3d": avg_pool,
    "AdaptiveAvgPool1d": adaptive_avg_pool, "AdaptiveAvgPool2d": adaptive_avg_pool,
    "AdaptiveAvgPool3d": adaptive_avg_pool,
    "ReLU": activation("relu"), "ReLU6": activation("relu6"), "GELU": activation("gelu", "approximate"),
    "SiLU": activation("silu"), "Sigmoid": activation("sigmoid"), "Tanh": activation("tanh"),
    "Mish": activation("mish"), "LeakyReLU": activation("leaky_relu", "negative_slope"),
    "ELU": activation("elu", "alpha"), "Softplus": activation("softplus", "beta", "threshold"),
    "Hardtanh": activation("hardtanh", "min_val", "max_val"), "Identity": activation("identity"),
    "Softmax": softmax("softmax"), "LogSoftmax": softmax("log_softmax"), "Flatten": flatten, "Unflatten": unflatten,
}


# a torch layer's tensor read by its owner's code (`self.embed.weight.dtype`, a tied head), as the Flax layer
# holds it, in torch's layout: {torch class: {tensor: template over the layer's attribute}}
_AFFINE = {"weight": "{}.scale[...]", "bias": "{}.bias[...]"}
TENSORS: dict[str, dict] = {
    "Linear": {"weight": "{}.kernel[...].T", "bias": "{}.bias[...]"},
    "Embedding": {"weight": "{}.embedding[...]"},
    "LayerNorm": _AFFINE, "GroupNorm": _AFFINE,
    **{f"BatchNorm{n}d": {**_AFFINE, "running_mean": "{}.mean[...]", "running_var": "{}.var[...]"} for n in (1, 2, 3)},
}


def rule_for(module) -> Callable | None:
    """The rule for a torch.nn module's class, looked up along its bases (None: no rule). A parametrized
    module (spectral_norm, weight_norm) computes its weight: no rule writes that yet."""
    if getattr(module, "parametrizations", None):
        return _parametrized
    for klass in type(module).__mro__:
        if klass.__module__.startswith("torch.nn") and klass.__name__ in RULES:
            return RULES[klass.__name__]
    return None


def _parametrized(m, node) -> Layer:
    kinds = sorted({type(p).__name__.lstrip("_") for ps in m.parametrizations.values() for p in ps})
    raise Untranslatable(f"a parametrized weight ({', '.join(kinds)}): no rule yet")
