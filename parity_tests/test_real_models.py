"""check_port on models shaped like users' code: token inputs as tuples and dicts, sequence
targets, structured outputs, attention and recurrent layers, tied weights, a callable weight_map
that runs before the rules, modules named `value`, and float64 that stays float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxtrain.errors import PortMappingError
from jaxtrain.parity import check_port
from jaxtrain.parity.corpus import real as corpus_real
from jaxtrain.parity.corpus.real import (N, SHORT, LinenLSTM, LinenTagger, NnxAttention, NnxBag, NnxPackedAttention,
                                        NnxTiedLM, NnxValue, TorchAttention, TorchBag, TorchLSTM, TorchTagger,
                                        TorchTiedLM, TorchValue, tokens)


# --------------------------------------------------------------------------- inputs and outputs


def test_tuple_of_integer_inputs_and_structured_outputs():
    ids, mask, y = tokens()
    report = check_port(TorchBag(), NnxBag(), train=((ids, mask), y), test=((ids[:48], mask[:48]), y[:48]),
                        flax_output=lambda out: out.scores, **SHORT)
    assert report.passed, report
    assert report.layers == ["embed", "head"]


def test_dict_inputs_are_keyword_arguments():
    ids, mask, y = tokens(1)
    report = check_port(TorchBag(), NnxBag(), train=({"mask": mask, "ids": ids}, y), test=None,
                        flax_output=lambda out: out.scores, **SHORT)
    assert report.passed, report


def test_wrong_selector_and_unequal_rows_are_one_line_errors():
    ids, mask, y = tokens()
    with pytest.raises(PortMappingError, match="torch_output"):
        check_port(TorchBag(), NnxBag(), train=((ids, mask), y), torch_output=lambda out: out,
                   flax_output=lambda out: out.scores, **SHORT)
    from jaxtrain.errors import ConfigError

    with pytest.raises(ConfigError, match="different numbers of samples"):
        check_port(TorchBag(), NnxBag(), train=((ids, mask[:10]), y), **SHORT)


def test_sequence_targets_with_linen_port():
    ids, _, _ = tokens(2)
    report = check_port(TorchTagger(), LinenTagger(), train=(ids, ids % 4), test=(ids[:32], ids[:32] % 4), **SHORT)
    assert report.passed, report
    runs = report.trajectories
    jax_acc, torch_acc = (runs[(f, "float64")].record["epochs"][-1]["test_accuracy"] for f in ("jax", "torch"))
    assert 0.0 < jax_acc < 1.0 and jax_acc == pytest.approx(torch_acc, abs=1e-12)  # per position, both alike


# --------------------------------------------------------------------------- attention and recurrent layers


@pytest.mark.corpus  # the corpus' real_* case trains the same pair; the suite's 20-minute budget
def test_multihead_attention_rule_trains_alike():
    ids, _, y = tokens(3)
    report = check_port(TorchAttention(), NnxAttention(), train=(ids, y), test=(ids[:32], y[:32]), **SHORT)
    assert report.passed, report
    assert report.layers == ["embed", "attn", "norm", "head"]


@pytest.mark.corpus  # the corpus' real_* case trains the same pair; the suite's 20-minute budget
def test_lstm_port_keeping_torch_tensors_trains_alike():
    ids, _, y = tokens(4)
    report = check_port(TorchLSTM(), LinenLSTM(), train=(ids, y), test=(ids[:32], y[:32]), **SHORT)
    assert report.passed, report


def test_lstm_port_on_flax_cell_names_the_bias_trap():
    """Flax's LSTMCell has one bias per gate: the forward pass maps (torch's two are summed), but
    torch trains both, so the check fails and says why."""
    ids, _, y = tokens(4)
    report = check_port(TorchLSTM(), LinenLSTM(cell="flax"), train=(ids, y), test=None,
                        optimizer="sgd", optimizer_kwargs={"lr": 0.5}, batch_size=32, steps=4, dtypes=("float64",))
    assert not report.passed
    check = report.checks[0]
    assert check["layer"] == "lstm" or (check["tensor"] or "").startswith("lstm."), check
    assert "twice as fast" in report.diagnosis["sentence"]
    assert any(n.startswith("lstm: ") and "twice as fast" in n for n in report.mapping_notes)  # said up front too
    assert "MAPPING: lstm: " in str(report)


# --------------------------------------------------------------------------- tied weights, weight_map, names


def test_tied_embedding_and_head_are_one_tensor():
    ids, _, _ = tokens(5)
    report = check_port(TorchTiedLM(), NnxTiedLM(), train=(ids[:, :-1], ids[:, 1:]), test=None, **SHORT)
    assert report.passed, report


def test_a_module_named_value_keeps_its_tensors():
    x = np.random.default_rng(6).normal(size=(N, 4)).astype(np.float32)
    report = check_port(TorchValue(), NnxValue(), train=(x, (x[:, 0] > 0).astype(np.int64)), test=None, **SHORT)
    assert report.passed, report
    assert report.layers == ["key", "value"]


def test_callable_weight_map_runs_before_the_rules():
    def weight_map(name, value):
        table = {"attn.in_proj_weight": ("qkv.kernel", value.T), "attn.in_proj_bias": ("qkv.bias", value),
                 "attn.out_proj.weight": ("proj.kernel", value.T), "attn.out_proj.bias": ("proj.bias", value)}
        return table.get(name)

    ids, _, y = tokens(7)
    report = check_port(TorchAttention(), NnxPackedAttention(), train=(ids, y), test=None, weight_map=weight_map,
                        **SHORT)
    assert report.passed, report


def test_a_torch_model_failing_in_one_dtype_is_one_line_naming_the_run():
    """A model that runs in float32 but not in float64 (transformers' XGLM builds its causal mask with
    float64's min in a float32 tensor): one PortMappingError naming the run, not a traceback."""
    import torch

    from jaxtrain.errors import PortMappingError
    from jaxtrain.parity import check_port
    from jaxtrain.parity.corpus.real import LinenTagger, TorchTagger, tokens

    class Float32Only(TorchTagger):
        def forward(self, ids):
            out = super().forward(ids)
            if out.dtype == torch.float64:
                torch.full((2, 2), torch.finfo(torch.float64).min, dtype=torch.float32)
            return out

    ids, _, _ = tokens(12, 64)
    with pytest.raises(PortMappingError, match=r"the torch model fails in the float64 run \(epoch 1\): RuntimeError"):
        check_port(Float32Only(), LinenTagger(), train=(ids, ids % 4), optimizer="sgd", batch_size=32, steps=2)


def test_equal_shape_siblings_paired_by_call_order_are_named_not_hidden():
    """Two Linear(4, 8) siblings whose names do not pair (up/gate against wi_0/wi_1) pair by call order;
    the mapping says so for both, so a swapped call order in the port cannot pass unnoticed."""
    import torch
    from flax import nnx

    from jaxtrain.parity.check import mapping_notes, pair_models

    class TorchGated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.gate, self.down = torch.nn.Linear(4, 8), torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.down(torch.relu(self.gate(x)) * self.up(x))

    class NnxGated(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            self.wi_0, self.wi_1, self.wo = nnx.Linear(4, 8, rngs=rngs), nnx.Linear(4, 8, rngs=rngs), nnx.Linear(
                8, 3, rngs=rngs)

        def __call__(self, x):
            return self.wo(nnx.relu(self.wi_0(x)) * self.wi_1(x))

    x = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    notes = mapping_notes(pair_models(TorchGated(), NnxGated(), x).mapping)
    assert any(n.startswith("gate paired with wi_0 by call order") and "up" in n for n in notes), notes
    assert any(n.startswith("up paired with wi_1 by call order") for n in notes), notes
    assert not any(n.startswith("down") for n in notes), notes


# --------------------------------------------------------------------------- torch parametrizations


class _TorchWeightNorm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(6, 8))
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.fc(x)))


class _NnxWeightNormLinear(nnx.Module):
    """A user's weight-normed Linear keeping torch's legacy names: w = g * v / ||v|| (each output row)."""

    def __init__(self, fan_in, fan_out, axis=1, rngs=None):
        self.weight_g = nnx.Param(jnp.ones((fan_out,)))
        self.weight_v = nnx.Param(jax.random.normal(rngs.params(), (fan_out, fan_in)))
        self.bias = nnx.Param(jnp.zeros((fan_out,)))
        self.axis = axis  # 1: torch's norm over each output row; 0 the porting mistake (over each input column)

    def __call__(self, x):
        v = self.weight_v[...]
        w = v / jnp.sqrt((v ** 2).sum(self.axis, keepdims=True)) * self.weight_g[...][:, None]
        return x @ w.T + self.bias[...]


class _NnxWeightNorm(nnx.Module):
    def __init__(self, axis=1):
        rngs = nnx.Rngs(0)
        self.fc = _NnxWeightNormLinear(6, 8, axis, rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.tanh(self.fc(x)))


def _weight_norm_data():
    x = np.random.default_rng(3).normal(size=(96, 6)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)


def test_weight_norm_parametrization_belongs_to_its_layer_and_trains_alike():
    """torch's parametrizations.weight.original0/1 (g, v) are layer fc's, mapped to the port's weight_g /
    weight_v; a port normalising over the wrong axis is caught at fc, step 1."""
    x, y = _weight_norm_data()
    common = dict(train=(x[:64], y[:64]), test=(x[64:], y[64:]), optimizer="adam", optimizer_kwargs={"lr": 1e-2},
                  batch_size=32, steps=6)
    report = check_port(_TorchWeightNorm(), _NnxWeightNorm(), **common)
    assert report.passed, report.checks
    assert report.layers == ["fc", "head"] and not report.mapping_notes, (report.layers, report.mapping_notes)
    bad = check_port(_TorchWeightNorm(), _NnxWeightNorm(axis=0), dtypes=("float64",), **common)
    assert not bad.passed and bad.checks[0]["layer"] == "fc" and bad.checks[0]["first_failing_step"] == 1, bad.checks


def test_weight_norm_round_trips_through_convert():
    from jaxtrain.convert import flax_to_torch, torch_to_flax

    x, _ = _weight_norm_data()
    torch_model = _TorchWeightNorm()
    port = torch_to_flax(torch_model, _NnxWeightNorm(), x)
    np.testing.assert_array_equal(np.asarray(port.fc.weight_g[...]),
                                  torch_model.fc.parametrizations.weight.original0.detach().numpy()[:, 0])
    fresh = _TorchWeightNorm()
    with torch.no_grad():
        fresh.fc.parametrizations.weight.original1.add_(1)
    flax_to_torch(port, fresh, x)
    for key, value in torch_model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_a_parametrization_no_rule_maps_is_one_line_naming_it():
    class TorchOrthogonal(_TorchWeightNorm):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.utils.parametrizations.orthogonal(torch.nn.Linear(6, 8))

    x, y = _weight_norm_data()
    with pytest.raises(PortMappingError, match="parametrized by _Orthogonal, which no rule maps"):
        check_port(TorchOrthogonal(), _NnxWeightNorm(), train=(x, y), steps=1)


def _normed_case(norm, port=None, **kwargs):
    case = corpus_real._normed(norm, port, **kwargs)(None)
    return {**case, "steps": 6, "dtypes": ("float64",)}


@pytest.mark.corpus  # the suite's budget: the round trip below checks u and v exactly; 30 steps in the corpus
def test_spectral_norm_factors_map_to_a_hand_written_port_and_train_alike():
    """spectral_norm's original, _u and _v (buffers torch moves in every training call) map to the port's
    kernel, u and v; v's columns follow the port's kernel rows (a conv's (kh, kw, in), torch's (in, kh, kw))."""
    report = check_port(**{**_normed_case("spectral"), "dtypes": ("float32", "float64")})
    assert report.passed, report.checks
    assert report.layers == ["conv", "head"] and not report.mapping_notes, report.mapping_notes


def test_spectral_norm_port_that_never_iterates_is_named():
    report = check_port(**_normed_case("spectral", iterate=False))
    assert not report.passed and report.checks[0]["layer"] == "conv", report.checks
    assert report.checks[0]["first_failing_step"] == 1 and report.checks[0]["stage"] == "forward", report.checks
    assert report.diagnosis["trap"] == "spectral_norm power iteration", report.diagnosis


def test_flax_spectral_norm_wrapper_pairs_and_its_other_power_iteration_is_named():
    """Flax's nn.SpectralNorm keeps its u (and a sigma it never reads) beside the wrapped layer: both pair
    with torch's layer; torch's v has no place, and the difference is the two libraries' power iterations."""
    report = check_port(**_normed_case("spectral", "flax spectral"))
    assert not report.passed and report.checks[0]["layer"] == "conv", report.checks
    assert report.diagnosis["trap"] == "layer parametrisation" and "Flax's nn.SpectralNorm" in report.diagnosis[
        "sentence"], report.diagnosis
    assert [n.split(":")[0] for n in report.mapping_notes] == ["conv", "head"], report.mapping_notes


def test_flax_weight_norm_wrapper_pairs_with_torch_weight_norm():
    """linen's nn.WeightNorm keeps its scale as `WeightNorm_0.conv/kernel/scale`, beside the layer it wraps:
    it is the layer's g, its kernel torch's v (a conv's layout), and the two train alike."""
    report = check_port(**_normed_case("weight"))
    assert report.passed, report.checks
    assert report.layers == ["conv", "head"], report.layers


def test_spectral_norm_round_trips_through_convert():
    from jaxtrain.convert import flax_to_torch, torch_to_flax

    x = np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32)
    torch_model = corpus_real.TorchNormedConv("spectral")
    variables = torch_to_flax(torch_model, corpus_real.LinenNormedConv("spectral"), x, flax_input="nhwc")
    torch_model.eval()
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    got = corpus_real.LinenNormedConv("spectral").apply(variables, x.transpose(0, 2, 3, 1), train=False)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
    fresh = corpus_real.TorchNormedConv("spectral")
    with torch.no_grad():
        for tensor in fresh.state_dict().values():  # parameters and the power iteration's u, v
            tensor.add_(1)
    flax_to_torch(variables, fresh, x, flax_model=corpus_real.LinenNormedConv("spectral"), flax_input="nhwc")
    for key, value in torch_model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key

# --------------------------------------------------------------------------- attention, fitted


def _rotary_case(torch_theta=10000.0, **port):
    case = corpus_real._rotary(torch_theta, **port)(None)
    return {**case, "steps": 2, "dtypes": ("float64",)}


@pytest.mark.corpus  # the suite's budget: the RoPE mistakes below run the same pair; 30 steps in the corpus
def test_rotary_attention_port_trains_alike():
    report = check_port(**{**_rotary_case(), "steps": 6, "dtypes": ("float32", "float64")})
    assert report.passed, report.checks
    assert report.layers == ["embed", "q_proj", "k_proj", "v_proj", "o_proj", "head"], report.layers


@pytest.mark.parametrize("port, torch_theta, trap, words", [
    ({"layout": "interleaved"}, 10000.0, "RoPE layout", "pairs (2i, 2i + 1)"),
    ({}, 500000.0, "RoPE base", "base theta 500000 and the port's with 10000"),
])
def test_rotary_mistakes_are_named_from_the_attention_output(port, torch_theta, trap, words):
    """The attention output, recomputed from the q/k/v projections (which agree) under each rotary layout and
    base, heads split, causal mask and scale: the one torch's computation fits and the one the port's does."""
    report = check_port(**_rotary_case(torch_theta, **port))
    assert not report.passed and report.checks[0]["layer"] == "o_proj", report.checks
    assert report.diagnosis["trap"] == trap and words in report.diagnosis["sentence"], report.diagnosis


def test_nnx_spectral_norm_wrapper_pairs_and_its_other_power_iteration_is_named():
    report = check_port(**{**_normed_case("spectral", "nnx"), "steps": 2})
    assert not report.passed and report.checks[0]["layer"] == "conv", report.checks
    assert "Flax's nn.SpectralNorm keeps u only" in report.diagnosis["sentence"], report.diagnosis


def test_spectral_norm_on_an_axis_the_port_does_not_keep_last_is_one_line():
    class TorchRows(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(6, 8), dim=1)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.fc(x))

    class NnxRows(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            self.fc, self.head = nnx.Linear(6, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.head(self.fc(x))

    x, y = _weight_norm_data()
    with pytest.raises(PortMappingError, match=r"spectral_norm\(dim=1\) on a weight of shape \(8, 6\)"):
        check_port(TorchRows(), NnxRows(), train=(x, y), steps=1)


def test_wrapper_leaves_belong_to_the_wrapped_tensor():
    from jaxtrain.parity.mapping import unwrapped

    params = {"Dense_0.kernel", "SpectralNorm_0.layer_instance.kernel", "fc.layer_instance.layers.0.kernel"}
    assert unwrapped("WeightNorm_0.Dense_0/kernel/scale", params) == "Dense_0.kernel/scale"  # beside its wrapper
    assert unwrapped("SpectralNorm_0.layer_instance/kernel/u", params) == "SpectralNorm_0.layer_instance.kernel/u"
    assert unwrapped("fc.scales.('layers', 0, 'kernel')", params) == "fc.layer_instance.layers.0.kernel/scale"
    assert unwrapped("attn.a/b/c", params) == "attn.a/b/c"  # not a wrapper's leaf


class _Heads(torch.nn.Module):
    """What the attention fit reads of a torch model: the attention module's head size and rotary base."""

    def __init__(self):
        super().__init__()
        self.attn = torch.nn.Module()
        self.attn.head_dim, self.attn.rope_theta = 8, 10000.0


def _fitted(torch_variant: dict, port_variant: dict):
    from types import SimpleNamespace

    from jaxtrain.parity.diagnose import _attend, _attention_fit

    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(2, 6, 32)), rng.normal(size=(2, 6, 16)), rng.normal(size=(2, 6, 16))  # GQA: 4 q, 2 kv heads
    outputs = [_attend(q, k, v, 8, variant.get("causal", True), variant.get("rope", ("half", 10000.0)),
                       8 ** -0.5 if variant.get("scaled", True) else 1.0) for variant in (torch_variant, port_variant)]
    evidence = {"torch": {"layers": {"attn.q_proj": q, "attn.k_proj": k, "attn.v_proj": v},
                          "inputs": {"attn.o_proj": outputs[0]}}, "jax": {"inputs": {"attn.o_proj": outputs[1]}}}
    return _attention_fit("attn.o_proj", ["attn.q_proj", "attn.k_proj", "attn.v_proj"],
                          SimpleNamespace(torch_model=_Heads()), evidence)


@pytest.mark.parametrize("port, trap", [
    ({"causal": False}, "attention mask"), ({"scaled": False}, "attention scaling"),
    ({"rope": ("interleaved", 10000.0)}, "RoPE layout"), ({"rope": ("half", 500000.0)}, "RoPE base"),
    ({"rope": None}, "rotary embedding"),
])
def test_attention_fit_names_what_differs_with_grouped_query_heads(port, trap):
    assert _fitted({}, port)["trap"] == trap


def test_attention_fit_says_agree_when_one_computation_gives_both():
    assert _fitted({}, {}) == "agree"
