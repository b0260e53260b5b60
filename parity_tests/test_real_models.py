"""check_port on models shaped like users' code: token inputs as tuples and dicts, sequence
targets, structured outputs, attention and recurrent layers, tied weights, a callable weight_map
that runs before the rules, modules named `value`, and float64 that stays float64."""

import numpy as np
import pytest

from jaxtrain.errors import PortMappingError
from jaxtrain.parity import check_port
from jaxtrain.parity.corpus_real import (N, SHORT, LinenLSTM, LinenTagger, NnxAttention, NnxBag, NnxPackedAttention,
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


def test_multihead_attention_rule_trains_alike():
    ids, _, y = tokens(3)
    report = check_port(TorchAttention(), NnxAttention(), train=(ids, y), test=(ids[:32], y[:32]), **SHORT)
    assert report.passed, report
    assert report.layers == ["embed", "attn", "norm", "head"]


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
    from jaxtrain.parity.corpus_real import LinenTagger, TorchTagger, tokens

    class Float32Only(TorchTagger):
        def forward(self, ids):
            out = super().forward(ids)
            if out.dtype == torch.float64:
                torch.full((2, 2), torch.finfo(torch.float64).min, dtype=torch.float32)
            return out

    ids, _, _ = tokens(12, 64)
    with pytest.raises(PortMappingError, match=r"the torch model fails in the float64 run \(epoch 1\): RuntimeError"):
        check_port(Float32Only(), LinenTagger(), train=(ids, ids % 4), optimizer="sgd", batch_size=32, steps=2)
