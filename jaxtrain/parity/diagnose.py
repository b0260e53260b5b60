"""A named diagnosis of the first difference: the porting traps and what they look like.

`diagnose(finding, port, config)` reads the localised finding (and, for float64,
the stage tensors of the failing step it carries as `evidence`) and returns one
sentence, or a general pointer when no known signature fits. The traps:

| trap                                   | signature                                                      |
|----------------------------------------|----------------------------------------------------------------|
| flatten order (NCHW vs NHWC)           | the first Linear after a conv/4-D layer differs, all before agree |
| weights in the wrong layout            | a layer's mapped weights are torch's values in another order    |
| biased vs unbiased running variance    | running_var update is (n-1)/n of torch's                       |
| BatchNorm momentum convention          | running statistics move a constant factor faster/slower        |
| weight-decay default / convention      | the update differs by c * theta (c / lr = the decay difference) |
| loss function                          | the loss differs while the model output agrees                 |
| eval-mode behaviour (dropout, BN)      | training agrees, model.eval() differs at a layer               |
| matmul precision below float32         | the typical element of a float32 product off ~1e-3 (TF32/bf16) |
| localized difference (float32)         | some elements beyond torch's rounding, the rest as precise     |
| float32 arithmetic                     | float64 agrees; only JAX's float32 results stray from float64  |
| Embedding(padding_idx) row trained     | an embedding's gradient differs only in the padding row        |
| layer parametrisation                  | the mapping's note on the layer: two LSTM/GRU biases in one     |
| untied head                            | a tensor torch uses twice (tied) has two leaves in the port     |
| attention computation                  | the first layer after attention projections differs (scale, mask, RoPE) |
| RoPE layout / RoPE base / rotary embedding / attention mask / attention scaling / attention heads | the attention output is, from the same q/k/v, what one computation gives in torch and another in the port |
| activation function                    | a layer's input is another activation of the layer before's output |
| AvgPool count_include_pad              | a pooled input differs at the borders only, by a count factor   |
| between layers                         | a layer's input differs, the layer before agrees (no signature) |
| BatchNorm running statistics in training | training output = normalised by the running statistics        |
| LayerNorm eps / RMSNorm eps            | the port's output is what another eps gives                    |
| recurrent cell                         | an LSTM/GRU/RNN's output differs, its input agrees             |
| spectral_norm power iteration          | a spectral_norm layer's output less bias is torch's times one constant |
| float32 range                          | JAX's float32 tensor is inf/NaN where float64 and torch's float32 are finite |
| one-pass variance                      | a norm's float32 error is what E[x^2] - E[x]^2 in float32 gives     |
| frozen tensor trained                  | the port's optimizer moves a tensor torch never updates (decay)     |
"""

from __future__ import annotations

import itertools

import numpy as np

from jaxtrain.data import batches_per_epoch
from jaxtrain.parity import mapping as mapping_lib

LOW_PRECISION_ERROR = 1e-5  # float32 rounding is ~1e-7; TF32 ~1e-3, bfloat16 ~1e-2
NOT_ROUNDING = 5e-2  # a typical element this far off float64 is a different computation, at any precision
NO_MATMUL = ("BatchNorm", "LayerNorm", "GroupNorm", "RMSNorm", "Embedding")  # layers no matmul precision touches
FLOAT32_RTOL = 1e-4  # float32 rounding through a few layers, relative to a tensor's largest element


def diagnose(finding: dict | None, port, config) -> dict | None:
    """{"trap": short name, "sentence": one sentence} for a failing check's finding, or None."""
    if not finding:
        return None
    evidence = finding.pop("evidence", None)
    stage, layer = finding.get("stage"), finding.get("layer")
    if "results" in finding:  # float32 test results beyond the rounding spread
        return _float32_results(finding)
    if "jax_error" in finding:  # float32 precision finding
        if finding.get("element") is not None and not np.isfinite(finding.get("element_error", 0.0)) \
                and np.isfinite(finding.get("element_torch_error", np.inf)):
            return _float32_range(finding)
        median, rule = finding.get("jax_median_error", 0.0), _kind(port, layer) if layer else None
        names = [t for t, _, _ in port.mapping.layers]
        # a matmul precision setting shows at the first matrix product; this one comes after some that agree
        matmul_before = layer in names and any(_kind(port, t) not in NO_MATMUL for t in names[: names.index(layer)])
        if stage == "forward" and layer is not None and median > LOW_PRECISION_ERROR and (
                median > NOT_ROUNDING or rule in NO_MATMUL or matmul_before):
            if evidence is not None:  # JAX float32 against torch float64: float32 rounding is no difference
                evidence["rtol"] = FLOAT32_RTOL
            return _layer_forward(finding, port, evidence)  # no matmul precision explains it
        return _precision(finding)
    frozen = _frozen_trained(port, evidence)  # an update can move a forward pass from step 2 on, or be the update
    if frozen is not None and (stage == "forward" and (finding.get("step") or 1) > 1
                               or stage == "updates" and finding.get("tensor") in frozen["tensors"]):
        return {"trap": frozen["trap"], "sentence": frozen["sentence"]}
    noted = _mapping_note(finding, port)
    if noted is not None:
        return noted
    if stage == "forward" and layer is not None:
        return _layer_forward(finding, port, evidence)
    if stage == "eval":
        where = f"at {layer}" if layer else "at the model output"
        return {"trap": "eval-mode behaviour",
                "sentence": f"training agrees but model.eval() differs {where}: a layer behaves differently in eval "
                            "mode (dropout left on, or BatchNorm normalising with batch statistics instead of the "
                            "running ones: model.eval() / use_running_average)."}
    if stage == "buffers" and evidence is not None:
        return _buffers(finding, port, evidence)
    if stage == "updates" and evidence is not None:
        return _updates(finding, _learning_rate(port, config), evidence, port.optimizers)
    if stage == "loss":
        return {"trap": "loss function",
                "sentence": "the loss differs while the model output agrees: the loss is computed differently "
                            "(cross-entropy on softmax outputs, i.e. softmax applied twice; sum vs mean reduction; "
                            "one-hot vs class-index targets)."}
    if stage == "grads":
        padding = _padding_row(finding, port, evidence)
        if padding is not None:
            return padding
        uses = [f for move, names, paths, _ in port.mapping.moves for rel, f in paths.items()
                if finding.get("tensor") in names.values()]
        if len(uses) > 1:
            return {"trap": "untied head",
                    "sentence": f"{finding.get('tensor')} is one tensor in torch, used by two modules (an LM head "
                                f"tied to its embedding), and two in the port ({', '.join(uses)}): torch's gradient "
                                "is the sum of both uses and it trains as one; tie them in the port "
                                "(embed.attend / tie_word_embeddings=True)."}
        return {"trap": "backward pass",
                "sentence": f"the gradient of {finding.get('tensor')} differs while the loss agrees: the backward "
                            "pass (a stop_gradient, or a loss returned differently from the one differentiated)."}
    if stage == "forward":
        return {"trap": "model output",
                "sentence": "the model output differs while every mapped layer agrees: look at what the port does "
                            "after its last layer with weights (activation, softmax, reshaping)."}
    return None


def _frozen_trained(port, evidence) -> dict | None:
    """A tensor torch never trains (requires_grad=False, or a buffer) that the port's optimizer moves: kept as a
    parameter behind stop_gradient, its gradient is zero, but weight decay still shrinks it."""
    if evidence is None:
        return None
    model = port.torch_model
    never = [n for n, p in model.named_parameters() if not p.requires_grad] + [n for n, _ in model.named_buffers()]
    for name in never:
        ours, theirs = evidence["jax"]["updates"].get(name), evidence["torch"]["updates"].get(name)
        if ours is not None and np.any(np.asarray(ours) != 0) and (theirs is None or not np.any(theirs)):
            return {"trap": "frozen tensor trained", "tensors": [name],
                    "sentence": f"torch never updates {name} (requires_grad=False or a buffer); the port's optimizer "
                                f"does (by {np.abs(ours).max():.1e} at this step): a stop_gradient zeroes its gradient, "
                                "but weight decay still moves it. Keep it out of the port's parameters (an "
                                "nnx.Variable, not nnx.Param) or mask it out of the optimizer (optax.masked)."}
    return None


def _mapping_note(finding: dict, port) -> dict | None:
    """What the mapping already knew cannot train alike (torch's two recurrent biases in one Flax
    leaf, a bias with no place), when the difference is in that layer."""
    where = [finding.get("layer") or "", finding.get("tensor") or ""]
    for layer, note in port.mapping.notes:
        if any(w == layer or w.startswith(layer + ".") or w.startswith(layer + " ") for w in where if w):
            if "padding_idx" in note:
                continue  # a fact about torch, not a difference by itself
            return {"trap": "layer parametrisation", "sentence": f"{layer}: {note}."}
    return None


def _padding_row(finding: dict, port, evidence) -> dict | None:
    """An nn.Embedding(padding_idx) whose port trains the padding row: the port's gradient of that row
    has the lookups' part torch leaves out, and the rest of the table agrees."""
    layer, name = finding.get("layer"), finding.get("tensor")
    module = dict(port.torch_model.named_modules()).get(layer)
    row = getattr(module, "padding_idx", None)
    if row is None or evidence is None or name not in evidence["torch"]["grads"]:
        return None
    jax_grad, torch_grad = (np.asarray(evidence[k]["grads"][name]) for k in ("jax", "torch"))
    if jax_grad.shape != torch_grad.shape:
        return None
    diff = np.abs(jax_grad - torch_grad)
    others = np.delete(diff, row, axis=0)
    # the row differs by a whole gradient (torch's row may still have one from a head tied to the table); the
    # others by rounding at most (float32's, where a run computes in it)
    if not np.any(diff[row]) or others.max(initial=0.0) > 1e-3 * diff[row].max():
        return None
    return {"trap": "Embedding(padding_idx) row trained",
            "sentence": f"{name} differs only in row {row}: torch's nn.Embedding(padding_idx={row}) never gives that "
                        "row a gradient, the port trains it like any other (zero its gradient, e.g. "
                        "jnp.where on the row, or never feed the padding id)."}


def _float32_results(finding: dict) -> dict:
    """Only the float32 results differ. With float64 agreeing step by step, that is float32
    arithmetic (JAX's less accurate here than torch's, amplified by training), not the math."""
    r = finding["results"]
    if not np.isfinite(r["rms_rel_test_loss_error_jax"]):
        return {"trap": "float32 range",
                "sentence": "JAX's float32 test loss is not finite where float64's and torch's float32 are: somewhere in "
                            "training a formula of the port left float32's range (exp without the max subtracted, the "
                            "log of a softmax that underflowed); use the stable form torch's op computes."}
    ratio = r["rms_rel_test_loss_error_jax"] / max(r["rms_rel_test_loss_error_torch"], 1e-300)
    sizes = (f"JAX's float32 test loss is {r['rms_rel_test_loss_error_jax']:.1e} from float64 (RMS, relative), "
             f"torch's {r['rms_rel_test_loss_error_torch']:.1e} ({ratio:.2g}x)")
    if finding.get("float64_agrees"):
        return {"trap": "float32 arithmetic",
                "sentence": f"{sizes}, while float64 agrees step by step and step 1 in float32 is as precise as "
                            "torch's: JAX's float32 arithmetic is less accurate than torch's somewhere in this run "
                            "(a reduction under cancellation, an accumulation torch keeps in higher precision) and "
                            "training amplified it. Not a porting mistake; compare in float64, or over fewer steps."}
    return {"trap": "float32 results",
            "sentence": f"{sizes}: the port computes something else, or its float32 arithmetic is less accurate; "
                        "the float64 check (dtypes including float64) tells the two apart."}


def _float32_range(finding: dict) -> dict:
    """JAX's float32 tensor holds inf or NaN where float64 (and torch's float32) is finite: a formula that
    leaves float32's range, which torch's fused op keeps inside it."""
    where = f"{finding['stage']} {finding['tensor']}" + (f" (element {list(finding['element'])})"
                                                       if finding.get("element") else "")
    return {"trap": "float32 range",
            "sentence": f"at step {finding.get('step', 1)} JAX's float32 {where} is not finite where float64 and "
                        "torch's float32 are: the port computes a formula that leaves float32's range (exp of a large "
                        "logit without subtracting the max, the log of a softmax that underflowed to 0); use the "
                        "stable form torch's op computes (jax.nn.log_softmax, jax.nn.logsumexp, jax.nn.softmax)."}


def _precision(finding: dict) -> dict:
    """A precision *pattern* (the tensor's typical element off by ~1e-3: a TF32/bfloat16 product) is
    told apart from a difference confined to some elements, which no precision setting explains."""
    median_jax, median_torch = finding.get("jax_median_error", 0.0), finding.get("torch_median_error", 0.0)
    where = f"element {list(finding['element'])} of " if finding.get("element") else ""
    size = (f"{where}JAX's float32 {finding['tensor']} is off float64 by {finding.get('element_error', 0.0):.1e} "
            f"(torch's by {finding.get('element_torch_error', 0.0):.1e}, allowed {finding['allowed']:.1e})")
    if finding["stage"] in ("forward", "grads", "loss") and median_jax > LOW_PRECISION_ERROR \
            and median_jax > 100 * median_torch:
        return {"trap": "matmul precision below float32",
                "sentence": f"JAX's float32 {finding['tensor']} is off by {median_jax:.1e} relative on its typical "
                            f"element (torch's by {median_torch:.1e}): matrix products below float32 precision "
                            "(TF32 or bfloat16); use jax_default_matmul_precision='highest' and float32 params."}
    if median_jax > 4 * max(median_torch, 1e-300) and median_jax > 0:
        return {"trap": "float32 rounding",
                "sentence": f"{size}, and its typical element carries {median_jax / max(median_torch, 1e-300):.1f}x "
                            "torch's rounding error: part of the step is computed in lower precision or with a less "
                            "stable formula (float32 where torch keeps a scalar in float64, eps inside a sqrt, log of "
                            "a softmax)."}
    return {"trap": "localized difference",
            "sentence": f"{size}, while its typical element is as precise as torch's: the difference is confined to "
                        "some elements (a padding row that should stay zero, a masked position, part of a table), "
                        "not a precision setting."}


def _layer_forward(finding: dict, port, evidence) -> dict:
    layer = finding["layer"]
    mapping = port.mapping
    rule = mapping.rule_of(layer)
    names = [t for t, _, _ in mapping.layers]
    before = names[: names.index(layer)] if layer in names else []
    if mapping.weight_map is not None:
        for move, torch_names, _, buffer in mapping.moves:
            if buffer or len(move.torch) != 1 or torch_names[move.torch[0]].rpartition(".")[0] != layer:
                continue
            name = torch_names[move.torch[0]]
            given = dict(mapping_lib.given(mapping.weight_map(name, np.asarray(port.weights[name]))))
            expected = mapping_lib.automatic_layout(rule, move.torch[0], np.asarray(port.weights[name]))
            if given and expected is not None and any(
                    not np.array_equal(np.asarray(v).reshape(-1), expected.reshape(-1))
                    and np.array_equal(np.sort(np.asarray(v), axis=None), np.sort(expected, axis=None))
                    for v in given.values()):
                return {"trap": "weights in the wrong layout",
                        "sentence": f"{layer} differs from step 1 and the weight_map gives {name} to the "
                                    f"port as torch's values in another order: a {rule} weight must be laid out as "
                                    f"Flax expects ({_layout(rule)})."}
    torch_type, rule = mapping.torch_types.get(layer, ""), _kind(port, layer)
    previous_names = [n.rsplit(".", 1)[-1] for n in before[-3:]]
    if rule == "MultiheadAttention" or rule in ("Linear", "Conv1D") and set().union(
            *PROJECTIONS, {"c_attn"}) & set(previous_names[-1:]) or (rule in ("Linear", "Conv1D") and any(
            w in layer.rsplit(".", 1)[0] for w in ("attn", "attention")) and layer.endswith(("o_proj", "out_proj",
                                                                                              "c_proj", "dense"))):
        fitted = _attention_fit(layer, before, port, evidence)
        if fitted == "agree":  # the attention agrees: the projection after it differs
            return _generic_layer(layer, mapping, rule)
        if fitted is not None:
            return fitted
        return {"trap": "attention computation",
                "sentence": f"{layer} ({torch_type}) is the first layer of an attention (or after its projections) whose "
                            "output differs, every layer before it agrees: the attention itself differs; compare the scaling "
                            "(1/sqrt(head_dim), applied once), the masks (causal, padding), rotary embeddings (base "
                            "theta; interleaved vs half-rotated pairs) and the softmax axis."}
    previous = before[-1] if before else None
    inputs = _layer_inputs(evidence, layer)
    if inputs is not None and not _close(*inputs, _rtol(evidence)):  # the layer's input differs: what lies between layers
        return _between(layer, before[-2:], rule, inputs, evidence)
    if inputs is None:  # no recorded input: the layout evidence alone
        # a flatten of a channel-carrying conv output feeds this Linear: the paired layer right before it
        # is a convolution (or BatchNorm after one) with a 4-D output, and this Linear takes 2-D input
        conv_before = previous is not None and mapping.rule_of(previous) in ("Conv", "BatchNorm") and (
            previous in port.channels_last or (evidence is not None
                                               and np.ndim(evidence["torch"]["layers"].get(previous, 0)) >= 4))
        four_d_before = conv_before and (evidence is None or np.ndim(evidence["torch"]["layers"].get(layer, 0)) == 2)
        if rule == "Linear" and four_d_before:
            return {"trap": "flatten order (NCHW vs NHWC)",
                    "sentence": f"{layer} is the first Linear after a convolutional layer and differs while every layer "
                                "before it agrees: the port flattens its NHWC activations as (H, W, C) where torch "
                                "flattens (C, H, W); transpose to NCHW before the reshape "
                                "(x.transpose(0, 3, 1, 2).reshape(n, -1)) or permute the Linear's input rows."}
    for signature in (_running_statistics_in_training, _one_pass_variance, _norm_eps, _recurrent, _spectral_sigma):
        found = signature(layer, rule, port, evidence)
        if found is not None:
            return found
    if rule in ("BatchNorm", "LayerNorm", "GroupNorm", "RMSNorm"):
        return {"trap": f"{rule} computation",
                "sentence": f"{layer} ({rule}) is the first layer whose output differs, every layer before it agrees: "
                            f"compare eps (torch 1e-5; Flax's LayerNorm defaults to 1e-6; a config's layer_norm_eps / "
                            f"rms_norm_eps), the normalised axes and, "
                            f"in training, which variance normalises the batch (biased, as torch)."}
    return _generic_layer(layer, mapping, rule)


def _generic_layer(layer, mapping, rule) -> dict:
    return {"trap": "layer computation",
            "sentence": f"{layer} ({mapping.torch_types.get(layer, rule)}) is the first layer whose output differs, "
                        "every layer before it agrees: compare how the port computes it (padding, stride, dilation, "
                        "groups, the activation right after it, what feeds it)."}


# --------------------------------------------------------------------------- attention, fitted

PROJECTIONS = ({"q_proj", "query", "q"}, {"k_proj", "key", "k"}, {"v_proj", "value", "v"})
ROPE_BASES = (10000.0, 500000.0, 1000000.0, 100000.0, 50000.0)


def _rotate(x, layout: str, base: float):
    """x (B, T, H, D) rotated at positions 0..T-1: `half` pairs (i, i + D/2) (Llama's rotate_half),
    `interleaved` pairs (2i, 2i + 1) (GPT-J's rotate_every_two, RoFormer)."""
    d = x.shape[-1]
    angle = np.arange(x.shape[1])[:, None] * base ** (-np.arange(0, d, 2) / d)[None, :]
    cos, sin = np.cos(angle)[None, :, None, :], np.sin(angle)[None, :, None, :]
    first, second = (slice(0, d // 2), slice(d // 2, d)) if layout == "half" else (slice(0, d, 2), slice(1, d, 2))
    x1, x2 = x[..., first], x[..., second]
    out = np.empty_like(x)
    out[..., first], out[..., second] = x1 * cos - x2 * sin, x2 * cos + x1 * sin
    return out


def _attend(q, k, v, head_dim: int, causal: bool, rope, scale: float):
    """Softmax attention of (B, T, heads * head_dim) projections (key/value heads shared by groups of query
    heads), its output as the projection after it takes it: (B, T, heads * head_dim)."""
    b, t, _ = q.shape
    q, k, v = (a.reshape(b, t, -1, head_dim).transpose(0, 2, 1, 3) for a in (q, k, v))  # (B, H, T, D)
    if rope is not None:
        q, k = (_rotate(a.transpose(0, 2, 1, 3), *rope).transpose(0, 2, 1, 3) for a in (q, k))
    k, v = (np.repeat(a, q.shape[1] // a.shape[1], axis=1) for a in (k, v))
    scores = q @ k.transpose(0, 1, 3, 2) * scale
    if causal:
        scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    return ((scores / scores.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(b, t, -1)


HEAD_ATTRIBUTES = ("head_dim", "attention_head_size", "head_size")
HEAD_COUNTS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "heads")


def _head_dims(port, q_layer: str, width: int, kv_width: int) -> list[int]:
    """Head sizes to try: what the attention module holding the q projection (or its config) says, else
    every even size from 8 that splits both widths into query heads a whole number of key/value heads."""
    attention = dict(port.torch_model.named_modules()).get(q_layer.rpartition(".")[0])
    said = set()
    for holder in (attention, getattr(attention, "config", None)):
        for attr in HEAD_ATTRIBUTES:
            if isinstance(getattr(holder, attr, None), int):
                said.add(getattr(holder, attr))
        for attr in HEAD_COUNTS:
            if isinstance(getattr(holder, attr, None), int) and getattr(holder, attr) > 0:
                said.add(width // getattr(holder, attr))
    fits = [d for d in range(2, width + 1, 2) if width % d == 0 and kv_width % d == 0 and (width // d) % (kv_width // d) == 0]
    return [d for d in fits if d in said] or [d for d in fits if d >= 8] or fits


def _rope_bases(port) -> list[float]:
    """Rotary bases to try: the usual ones and what the model's modules or config say."""
    bases = list(ROPE_BASES)
    for module in port.torch_model.modules():
        for attr in ("rope_theta", "base", "rotary_emb_base"):
            value = getattr(getattr(module, "config", module), attr, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 1 and float(value) not in bases:
                bases.append(float(value))
    return bases


def _attention_fit(layer, before, port, evidence):
    """The attention computations (heads, rotary layout and base, causal mask, 1/sqrt(head_dim)) that give
    torch's input of `layer` and the port's from the q/k/v projections' outputs (which agree), fitted on
    the batch's first example: what differs between the two, named; "agree" when one computation gives
    both. None when none gives both (masks from inputs, ALiBi, partial rotary: the general sentence)."""
    inputs = _layer_inputs(evidence, layer)
    names = [n for n in before[-4:] if n.rsplit(".", 1)[-1] in set().union(*PROJECTIONS)]
    found = [next((n for n in names if n.rsplit(".", 1)[-1] in kinds), None) for kinds in PROJECTIONS]
    if inputs is None or None in found:
        return None
    q, k, v = (np.asarray(evidence["torch"]["layers"].get(n), np.float64)[:1] for n in found)
    if q.ndim != 3 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or inputs[0].shape[1:] != q.shape[1:]:
        return None
    targets = [np.asarray(side[:1], np.float64) for side in inputs]
    rtol, bases = _rtol(evidence, 1e-5), _rope_bases(port)
    fits = ([], [])
    for head_dim, rope, causal, scaled in itertools.product(
            _head_dims(port, found[0], q.shape[-1], k.shape[-1]),
            [None, *itertools.product(("half", "interleaved"), bases)], (True, False), (True, False)):
        out = _attend(q, k, v, head_dim, causal, rope, head_dim ** -0.5 if scaled else 1.0)
        variant = {"head_dim": head_dim, "rope": rope, "causal": causal, "scaled": scaled}
        for fit, target in zip(fits, targets):
            if _close(out, target, rtol):
                fit.append(variant)
    if not fits[0] or not fits[1]:
        return None
    ours, theirs = min(((t, p) for t in fits[0] for p in fits[1]),
                       key=lambda tp: sum(tp[0][key] != tp[1][key] for key in tp[0]))
    return _attention_difference(layer, ours, theirs) or "agree"


def _rope_words(rope) -> str:
    if rope is None:
        return "no rotary embedding"
    layout, base = rope
    pairs = "pairs (i, i + D/2) (rotate_half: Llama, GPT-NeoX)" if layout == "half" else \
        "pairs (2i, 2i + 1) (interleaved: GPT-J, RoFormer)"
    return f"rotary embedding over {pairs}, base theta {base:g}"


def _attention_difference(layer, ours: dict, theirs: dict) -> dict | None:
    where = f"{layer}'s input (the attention output) is, from the same q, k, v,"
    if ours["head_dim"] != theirs["head_dim"]:
        return {"trap": "attention heads",
                "sentence": f"{where} torch's attention over heads of {ours['head_dim']} and the port's over heads "
                            f"of {theirs['head_dim']}: split the projections into torch's heads."}
    if ours["rope"] != theirs["rope"]:
        if ours["rope"] and theirs["rope"] and ours["rope"][0] == theirs["rope"][0]:
            return {"trap": "RoPE base",
                    "sentence": f"{where} torch's attention with rotary base theta {ours['rope'][1]:g} and the port's "
                                f"with {theirs['rope'][1]:g}: build the port's rotary table with torch's base "
                                "(config.rope_theta)."}
        if ours["rope"] and theirs["rope"]:
            return {"trap": "RoPE layout",
                    "sentence": f"{where} torch's attention with {_rope_words(ours['rope'])} and the port's with "
                                f"{_rope_words(theirs['rope'])}: rotate the same pairs (a checkpoint's q/k rows are "
                                "permuted between the two layouts)."}
        fix = "apply torch's rotary embedding to q and k" if ours["rope"] else "drop the port's rotary embedding"
        return {"trap": "rotary embedding",
                "sentence": f"{where} torch's attention with {_rope_words(ours['rope'])} and the port's with "
                            f"{_rope_words(theirs['rope'])}: {fix}."}
    if ours["causal"] != theirs["causal"]:
        return {"trap": "attention mask",
                "sentence": f"{where} torch's attention {'with' if ours['causal'] else 'without'} a causal mask and "
                            f"the port's {'with' if theirs['causal'] else 'without'}."}
    if ours["scaled"] != theirs["scaled"]:
        return {"trap": "attention scaling",
                "sentence": f"{where} torch's attention with scores scaled by "
                            f"{'1/sqrt(head_dim)' if ours['scaled'] else '1'} and the port's by "
                            f"{'1/sqrt(head_dim)' if theirs['scaled'] else '1'}: apply the scale once."}
    return None


def _kind(port, layer: str) -> str | None:
    """The layer's family: its mapping rule, or for a layer the mapping copies by name (a library's own
    RMSNorm/LayerNorm class), the family its class name says."""
    rule = port.mapping.rule_of(layer)
    if rule not in (None, "same names"):
        return rule
    name = port.mapping.torch_types.get(layer, "").lower()
    return next((k for k in ("RMSNorm", "LayerNorm", "GroupNorm", "BatchNorm") if name.endswith(k.lower())), rule)


def _layout(rule: str) -> str:
    return {"Conv": "torch (O, I, kH, kW) -> Flax (kH, kW, I, O): w.transpose(2, 3, 1, 0)",
            "ConvTranspose": "torch (I, O, kH, kW) -> Flax (kH, kW, I, O) with the kernel flipped in space: "
                             "w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1), or transpose_kernel=True",
            "Linear": "torch (out, in) -> Flax (in, out): w.T"}.get(rule, "see the mapping table")


# --------------------------------------------------------------------------- a layer's input differs

FLATTEN = ("flatten order (NCHW vs NHWC)",
           "{layer} takes the same values as torch in another order, and every layer before it agrees: the port "
           "flattens its NHWC activations as (H, W, C) where torch flattens (C, H, W); transpose to NCHW before the "
           "reshape (x.transpose(0, 3, 1, 2).reshape(n, -1)) or permute the Linear's input rows.")


def _gelu_exact(x):
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


# What users put between two layers with weights, as torch names it; each a function of the first
# layer's output (float64 numpy).
ACTIVATIONS = {
    "identity": lambda x: x,
    "ReLU": lambda x: np.maximum(x, 0),
    "GELU (exact, erf)": _gelu_exact,
    "GELU (tanh approximation)": _gelu_tanh,
    "SiLU": lambda x: x / (1 + np.exp(-x)),
    "Tanh": np.tanh,
    "Sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "LeakyReLU(0.01)": lambda x: np.where(x > 0, x, 0.01 * x),
    "ELU": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
}


def _rtol(evidence, at_least: float = 0.0) -> float:
    """How close two recorded tensors must be to count as equal: float64 rounding amplified by a few
    layers, or float32's where the evidence is a float32 run's."""
    return max((evidence or {}).get("rtol", 1e-6), at_least)


def _close(a, b, rtol: float = 1e-6) -> bool:
    """Equal but for float64 rounding amplified by a few layers (a real difference is far larger)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= rtol * max(np.max(np.abs(a), initial=0.0), 1e-300)))


def _layer_inputs(evidence, layer):
    """(torch's, the port's) input of `layer` in the failing step, torch's layout; None when not recorded."""
    if evidence is None:
        return None
    pair = [np.asarray(evidence[k].get("inputs", {}).get(layer)) for k in ("torch", "jax")]
    if any(p.dtype == object for p in pair):
        return None
    if pair[0].shape != pair[1].shape and np.size(pair[0]) == np.size(pair[1]):
        pair[1] = pair[1].reshape(pair[0].shape)
    return tuple(pair) if pair[0].shape == pair[1].shape else None


def _between(layer, before, rule, inputs, evidence) -> dict:
    """`layer`'s input differs while the paired layers `before` it (the last two) agree: name what lies between."""
    torch_in, port_in = inputs
    previous = before[-1] if before else None
    gated = _gated_activation(layer, before, inputs, evidence)
    if gated is not None:
        return gated
    if rule == "Linear" and _close(np.sort(torch_in, axis=None), np.sort(port_in, axis=None), _rtol(evidence)):
        return {"trap": FLATTEN[0], "sentence": FLATTEN[1].format(layer=layer)}
    source = None if previous is None else evidence["torch"]["layers"].get(previous)
    if source is not None and np.shape(source) == torch_in.shape:
        theirs = [n for n, f in ACTIVATIONS.items() if _close(f(source), torch_in, _rtol(evidence, 1e-5))]
        ours = [n for n, f in ACTIVATIONS.items() if _close(f(source), port_in, _rtol(evidence, 1e-5))]
        if theirs and ours:
            return {"trap": "activation function",
                    "sentence": f"{layer}'s input is {ours[0]} of {previous}'s output in the port and {theirs[0]} in "
                                f"torch, every layer before agrees: use the same activation (torch's nn.GELU() is exact, "
                                "jax.nn.gelu defaults to the tanh approximation: approximate=False)."}
    pooled = _pool_padding(torch_in, port_in, source, _rtol(evidence))
    if pooled is not None:
        return pooled
    return {"trap": "between layers",
            "sentence": f"{layer}'s input differs while {previous or 'the model input'} agrees: what the port computes "
                        "between them (an activation, pooling, a residual, a mask, a reshape) differs from torch's."}


def _gated_activation(layer, before, inputs, evidence) -> dict | None:
    """A gated MLP (Llama's down_proj(act(gate_proj(x)) * up_proj(x))): the input is one activation of a
    layer's output times the other's in torch, another activation in the port."""
    layers = evidence["torch"]["layers"] if evidence else {}
    if len(before) < 2 or any(np.shape(layers.get(b)) != inputs[0].shape for b in before):
        return None
    for gate, up in (before, before[::-1]):
        g, u = (np.asarray(layers[gate], np.float64), np.asarray(layers[up], np.float64))
        theirs = [n for n, f in ACTIVATIONS.items() if _close(f(g) * u, inputs[0], _rtol(evidence, 1e-5))]
        ours = [n for n, f in ACTIVATIONS.items() if _close(f(g) * u, inputs[1], _rtol(evidence, 1e-5))]
        if theirs and ours and theirs[0] != ours[0]:
            return {"trap": "activation function",
                    "sentence": f"{layer}'s input is {ours[0]}({gate}) * {up} in the port and {theirs[0]}({gate}) * "
                                f"{up} in torch (a gated MLP), every layer before agrees: use the config's activation "
                                "(hidden_act) in the port."}
    return None


def _pool_padding(torch_in, port_in, source, rtol: float) -> dict | None:
    """An average pool that counts padding differently: only border windows differ, by a factor (the
    number of cells each one averages), the interior agrees."""
    if source is None or np.ndim(source) != 4:
        return None
    n, c = np.shape(source)[:2]
    side = int(round(np.sqrt(torch_in.size / (n * c))))
    if side < 3 or n * c * side * side != torch_in.size:
        return None
    t, p = torch_in.reshape(n, c, side, side), port_in.reshape(n, c, side, side)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    border = np.ones((side, side), bool)
    border[1:-1, 1:-1] = False
    differs = np.abs(t - p) > rtol * np.abs(t).max()
    if not _close(t[inner], p[inner], rtol) or not differs[:, :, border].any() or differs[:, :, ~border].any():
        return None
    ratio = p[:, :, border] / np.where(t[:, :, border] == 0, np.nan, t[:, :, border])
    if not np.nanmin(ratio) > 0:
        return None
    return {"trap": "AvgPool count_include_pad",
            "sentence": f"the pooled values differ only at the borders, by a factor {np.nanmedian(ratio):.3g} (the "
                        "interior agrees): torch's AvgPool2d counts the zero padding in each average "
                        "(count_include_pad=True), the port does not; nnx.avg_pool(..., count_include_pad=True)."}


# --------------------------------------------------------------------------- a layer's input agrees, its output not

def _weights_before(evidence, layer) -> dict:
    """torch's parameters of `layer` at the start of the failing step (after it, minus the update)."""
    params, updates = evidence["torch"]["params"], evidence["torch"]["updates"]
    return {k[len(layer) + 1:]: np.asarray(params[k]) - np.asarray(updates.get(k, 0.0))
            for k in params if k.startswith(layer + ".") and "." not in k[len(layer) + 1:]}


def _running_statistics_in_training(layer, rule, port, evidence) -> dict | None:
    """A BatchNorm called without its train flag: in training it normalises with the running statistics."""
    if rule != "BatchNorm" or evidence is None:
        return None
    x = (evidence["torch"].get("inputs") or {}).get(layer)
    w = _weights_before(evidence, layer)
    stats = [evidence["buffers_before"].get(f"{layer}.running_{s}") for s in ("mean", "var")]
    if x is None or any(s is None for s in stats) or "weight" not in w:
        return None
    eps = getattr(dict(port.torch_model.named_modules()).get(layer), "eps", 1e-5)
    shape = (1, -1) + (1,) * (np.ndim(x) - 2)
    out = (x - stats[0].reshape(shape)) / np.sqrt(stats[1].reshape(shape) + eps) * w["weight"].reshape(shape) \
        + w.get("bias", np.zeros_like(w["weight"])).reshape(shape)
    if not _close(out, evidence["jax"]["layers"].get(layer), _rtol(evidence, 1e-5)):
        return None
    return {"trap": "BatchNorm running statistics in training",
            "sentence": f"in training the port's {layer} normalises with its running statistics, not the batch's: "
                        "it is called without its train flag (use_running_average=not train; nnx: model.train())."}


def _one_pass_variance(layer, rule, port, evidence) -> dict | None:
    """A LayerNorm/BatchNorm whose float32 error is what the one-pass variance E[x^2] - E[x]^2 gives (its
    cancellation when the mean is large against the spread): the port's output, from torch's input, is as
    far off float64 as that formula computed in float32 is, and far beyond the two-pass formula's."""
    if rule not in ("LayerNorm", "BatchNorm") or evidence is None or evidence.get("rtol") is None:
        return None  # a float32 finding only: in float64 both formulas are exact enough
    x = (evidence["torch"].get("inputs") or {}).get(layer)
    module = dict(port.torch_model.named_modules()).get(layer)
    eps = getattr(module, "eps", None)
    port_out, torch_out = (np.asarray(evidence[k]["layers"].get(layer), np.float64) for k in ("jax", "torch"))
    if x is None or not isinstance(eps, float) or port_out.shape != np.shape(x):
        return None
    axes = -1 if rule == "LayerNorm" else tuple(a for a in range(np.ndim(x)) if a != 1)
    x32, w = np.asarray(x, np.float32), _weights_before(evidence, layer)

    def normalised(one_pass: bool) -> np.ndarray:
        mean = x32.mean(axes, keepdims=True)
        var = (np.square(x32).mean(axes, keepdims=True) - np.square(mean)) if one_pass else \
            np.square(x32 - mean).mean(axes, keepdims=True)
        out = (x32 - mean) / np.sqrt(np.maximum(var, 0) + np.float32(eps))
        shape = (-1,) + (1,) * (np.ndim(x) - 2) if rule == "BatchNorm" else (-1,)
        return out * np.reshape(w.get("weight", 1.0), shape) + np.reshape(w.get("bias", 0.0), shape)

    error = lambda out: float(np.median(np.abs(np.asarray(out, np.float64) - torch_out)))  # noqa: E731
    port_error, one, two = error(port_out), error(normalised(True)), error(normalised(False))
    if not (one > 10 * two and one / 10 <= port_error <= 10 * one):
        return None
    return {"trap": "one-pass variance",
            "sentence": f"{layer} ({rule}) is off float64 by {port_error:.1e} (median) in float32, as the one-pass "
                        f"variance E[x^2] - E[x]^2 computed in float32 is ({one:.1e}), where torch's two-pass "
                        f"variance is off by {two:.1e}: its input's mean is large against its spread and the "
                        "subtraction cancels; compute the variance of x - mean (Flax: use_fast_variance=False)."}


def _norm_eps(layer, rule, port, evidence) -> dict | None:
    """A LayerNorm/RMSNorm whose port's output is what another eps gives."""
    if rule not in ("LayerNorm", "RMSNorm") or evidence is None:
        return None
    x = (evidence["torch"].get("inputs") or {}).get(layer)
    w = _weights_before(evidence, layer)
    module = dict(port.torch_model.named_modules()).get(layer)
    ours = next((getattr(module, a) for a in ("eps", "variance_epsilon", "epsilon") if
                 isinstance(getattr(module, a, None), float)), None)
    if x is None or ours is None:
        return None
    scale = w.get("weight", np.ones(np.shape(x)[-1]))
    if type(module).__name__.startswith("Gemma"):
        scale = 1 + scale

    def norm(eps):
        centred = x if rule == "RMSNorm" else x - x.mean(-1, keepdims=True)
        return centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + eps) * scale + w.get("bias", 0.0)

    torch_out, port_out = (np.asarray(evidence[k]["layers"].get(layer)) for k in ("torch", "jax"))
    if not _close(norm(ours), torch_out, 1e-5):
        return None  # not the formula this module computes
    error = {eps: np.abs(norm(eps) - port_out).max() for eps in (1e-12, 1e-8, 1e-6, 1e-5, 1e-3, 1e-2, ours)}
    best = min(error, key=error.get)
    if best != ours and error[ours] > 100 * error[best]:
        return {"trap": f"{rule} eps",
                "sentence": f"the port's {layer} computes what {rule} with eps={best:g} gives; torch's uses "
                            f"eps={ours:g} (Flax's LayerNorm/RMSNorm default to 1e-6, torch's LayerNorm to 1e-5; "
                            "pass epsilon= or the config's layer_norm_eps / rms_norm_eps)."}
    return None


def _spectral_sigma(layer, rule, port, evidence) -> dict | None:
    """A spectral_norm layer whose port divides the same weight by another sigma: the port's output less
    the bias is torch's times one constant, which explains the whole difference."""
    kinds = mapping_lib.parametrization_kinds(dict(port.torch_model.named_modules()).get(layer))
    if evidence is None or not any("_SpectralNorm" in k for k in kinds.values()):
        return None
    torch_out, port_out = (np.asarray(evidence[k]["layers"].get(layer), np.float64) for k in ("torch", "jax"))
    bias = _weights_before(evidence, layer).get("bias")
    if torch_out.shape != port_out.shape or torch_out.ndim < 2:
        return None
    if bias is not None:
        shape = (1, -1) + (1,) * (torch_out.ndim - 2) if rule in ("Conv", "ConvTranspose") else (-1,)
        torch_out, port_out = torch_out - bias.reshape(shape), port_out - bias.reshape(shape)
    c, _ = _factor(port_out.ravel(), torch_out.ravel())
    difference = np.max(np.abs(port_out - torch_out))
    if difference == 0 or np.max(np.abs(port_out - c * torch_out)) > 1e-3 * difference:
        return None
    return {"trap": "spectral_norm power iteration",
            "sentence": f"the port's {layer} divides the same weight by another sigma (torch's sigma / {c:.9g}): "
                        "torch's spectral_norm runs its power iteration (u = normalize(W v), then v = normalize(W^T u), "
                        "n_power_iterations times) in every training call, before sigma = u . W v, and not in eval; "
                        "the port iterates otherwise, from other u, v, not in training, or does not normalise the "
                        "weight at all (then the factor is sigma itself)."}


def _recurrent(layer, rule, port, evidence) -> dict | None:
    if rule not in ("LSTM", "GRU", "RNN"):
        return None
    return {"trap": "recurrent cell",
            "sentence": f"{layer} ({rule}) is the first layer whose output differs, its input agrees: compare the gate "
                        "order (torch's LSTM i, f, g, o; GRU r, z, n, with n = tanh(W_in x + b_in + r * (W_hn h + "
                        "b_hn))), torch's two biases b_ih + b_hh, the initial state and the direction."}


def _buffers(finding: dict, port, evidence) -> dict | None:
    name = finding["tensor"]
    jax_value = np.asarray(evidence["jax"]["buffers"][name])
    torch_value = np.asarray(evidence["torch"]["buffers"][name])
    old = np.asarray(evidence["buffers_before"][name])
    layer = finding["layer"]
    module = dict(port.torch_model.named_modules()).get(layer)
    momentum = getattr(module, "momentum", 0.1) or 0.1
    moved_jax, moved_torch = jax_value - old, torch_value - old
    ok = np.abs(moved_torch) > 1e-12 * max(np.max(np.abs(torch_value)), 1e-300)
    speed = float(np.median(moved_jax[ok] / moved_torch[ok])) if ok.any() else float("nan")
    if name.endswith("running_var"):
        batch_var_jax = (jax_value - (1 - momentum) * old) / momentum
        batch_var_torch = (torch_value - (1 - momentum) * old) / momentum
        ratio = float(np.median(batch_var_jax / batch_var_torch))
        n = _elements_per_channel(evidence, layer)
        if n and abs(ratio - (n - 1) / n) < 0.1 / n:
            return {"trap": "biased vs unbiased running variance",
                    "sentence": f"{name} first differs at step {finding['step']}: the port updates it with the batch "
                                f"variance times {ratio:.4f} = (n-1)/n for n = {n}, the biased variance; torch keeps the "
                                "unbiased one (jaxtrain.layers.TorchBatchNorm does, or multiply by n/(n-1))."}
    if np.isfinite(speed) and abs(speed - 1) > 0.2:
        return {"trap": "BatchNorm momentum convention",
                "sentence": f"{name} first differs at step {finding['step']}: the port's running statistics move "
                            f"{speed:.3g}x as far per step as torch's (momentum {momentum:g}): torch's momentum m is "
                            f"Flax's 1 - m (torch 0.1 = Flax momentum=0.9)."}
    return {"trap": "running statistics",
            "sentence": f"{name} first differs at step {finding['step']} while the layer outputs agree: the port "
                        "updates its running statistics differently (momentum, variance estimator, which batch rows)."}


def _elements_per_channel(evidence, layer) -> int | None:
    """Values per feature the layer normalised in the step: batch size (x spatial size for conv features)."""
    output = evidence["torch"]["layers"].get(layer)
    if output is None or np.ndim(output) < 2:
        return None
    return int(np.size(output) // np.shape(output)[1])


def _learning_rate(port, config) -> float:
    """The torch optimizer's learning rate at step 1 (the user's own pair carries it, not the config)."""
    import copy

    batches = batches_per_epoch(len(port.train), config.batch_size)
    return float(port.optimizers.make_torch(config, copy.deepcopy(port.torch_model), batches)[0].param_groups[0]["lr"])


def _updates(finding: dict, lr: float, evidence, optimizers=None) -> dict:
    """An update that differs while the gradients agree: the first of the update diagnoses that the
    evidence (every tensor's update and gradient at the failing step) bears out, else the optimizer."""
    for diagnosis in (_update_scale, _decay):
        found = diagnosis(finding, lr, evidence, optimizers)
        if found is not None:
            return found
    return {"trap": "optimizer",
            "sentence": f"the update of {finding['tensor']} differs while its gradient agrees: the optimizer differs "
                        "(its hyperparameters and defaults: eps and where it enters, momentum/nesterov, bias "
                        "correction, when the schedule steps)."}


def _factor(a, b) -> tuple[float, float]:
    """(c, residual): a ~ c * b by least squares, and how much of a that leaves unexplained."""
    c = float(a @ b / max(b @ b, 1e-300))
    return c, float(np.linalg.norm(a - c * b) / max(np.linalg.norm(a), 1e-300))


def _update_scale(finding: dict, lr: float, evidence, optimizers) -> dict | None:
    """Every tensor's update is torch's times a factor: one factor for all (the lr, a global clip, a
    sum for a mean) or one per tensor (clipping tensor by tensor)."""
    factors, torch_updates = {}, evidence["torch"]["updates"]
    rms = {name: float(np.sqrt(np.mean(np.square(u)))) if np.size(u) else 0.0 for name, u in torch_updates.items()}
    for name, tu in torch_updates.items():
        ju, tu = np.asarray(evidence["jax"]["updates"].get(name, np.nan)).ravel(), np.asarray(tu).ravel()
        if ju.shape != tu.shape or rms[name] <= 1e-6 * max(rms.values()):
            continue  # no update to compare (a conv bias before a BatchNorm gets only rounding noise)
        c, residual = _factor(ju, tu)
        if residual > 1e-6:
            return None
        factors[name] = c
    if not factors or all(abs(c - 1) < 1e-6 for c in factors.values()):
        return None
    values = np.array(list(factors.values()))
    step, n = finding["step"], getattr(optimizers, "accumulate", 1)
    clipped = bool(getattr(optimizers, "clip", None) or getattr(optimizers, "torch_step", None))
    if values.max() - values.min() > 1e-6 * np.abs(values).max():
        return {"trap": "per-tensor vs global norm clipping",
                "sentence": f"at step {step} each tensor's update is torch's times a factor of its own "
                            f"({values.min():.3g} to {values.max():.3g}): the gradients are clipped tensor by tensor "
                            "(a per-parameter norm, optax.clip_by_block_rms) where torch's clip_grad_norm_ scales "
                            "them all by one factor from their global norm."}
    c = float(values.mean())
    if n > 1 and min(abs(c - n), abs(c - 1 / n)) < 1e-6 * n:
        return {"trap": "accumulated sum instead of mean",
                "sentence": f"at step {step}, an accumulation's last micro-batch, every update is {c:.4g} x torch's "
                            f"with accumulate={n}: one side sums the {n} micro-batches' gradients where the other "
                            "averages them (torch's loss / N per micro-batch; optax.MultiSteps takes the mean)."}
    if clipped:
        return {"trap": "gradient clipping",
                "sentence": f"at step {step} every update is {c:.4g} x torch's, one factor for all tensors: the "
                            "gradients are clipped on one side only or to another bound (torch's clip_grad_norm_ "
                            "scales by max_norm / (norm + 1e-6) over all gradients; optax.clip_by_global_norm has "
                            "no 1e-6)."}
    return {"trap": "learning rate at this step",
            "sentence": f"at step {step} every update is {c:.4g} x torch's, one factor for all tensors: the learning "
                        "rate differs at this step (a schedule stepped per epoch instead of per batch, a warmup off "
                        "by one step, or another lr)."}


def _decay(finding: dict, lr: float, evidence, optimizers) -> dict | None:
    """The difference is a multiple of the parameter itself: weight decay, where torch has other (or none)."""
    name = finding["tensor"]
    ju, tu = (np.asarray(evidence[k]["updates"][name]).ravel() for k in ("jax", "torch"))
    theta = np.asarray(evidence["torch"]["params"][name]).ravel() - tu  # the parameter before the step
    c, residual = _factor(ju - tu, theta)
    if residual >= 1e-3:
        return None
    matrices_agree = all(_close(evidence["jax"]["updates"].get(n), t) for n, t in evidence["torch"]["updates"].items()
                         if np.ndim(t) >= 2)
    if np.ndim(evidence["torch"]["params"][name]) <= 1 and matrices_agree:
        return {"trap": "decay on biases and norms",
                "sentence": f"the step-{finding['step']} update of {name}, a bias or norm weight, differs from "
                            f"torch's by {c:.3g} x the parameter itself: the port decays it ({-c / lr:+.3g} off "
                            "torch's) where the torch optimizer's param groups give it another weight_decay (the "
                            "common no-decay group of biases and norms; optax.masked / multi_transform)."}
    return {"trap": "weight-decay default",
            "sentence": f"the step-{finding['step']} update of {name} differs from torch's by {c:.3g} x the "
                        f"parameter itself: the port's weight decay is {-c / lr:+.3g} off torch's (lr {lr:g}), e.g. "
                        "optax.adamw's default weight_decay=1e-4 against torch.optim.AdamW's 1e-2, or L2 "
                        "added to the gradient where AdamW decays the weights."}
