"""check_port on habits of real torch code that are not porting bugs: a model that changes its inputs in
place (`position_ids += offset`), a 0-dimensional parameter (`logit_scale`), a causal mask filled with
`torch.finfo` of one dtype into a tensor of torch's default dtype; and a failure of jaxtrain's own code
reported as ours, never as the model's."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxtrain.errors import InternalError, PortMappingError
from jaxtrain.parity import check_port

VOCAB, T, D, OFFSET = 13, 6, 8, 2


class TorchHabits(torch.nn.Module):
    """A one-head causal attention LM, written with three habits of transformers' code."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, D)
        self.positions = torch.nn.Embedding(T + OFFSET, D)
        self.value = torch.nn.Linear(D, D)
        self.head = torch.nn.Linear(D, VOCAB)
        self.logit_scale = torch.nn.Parameter(torch.tensor(0.7))  # 0-dimensional

    def forward(self, ids, position_ids):
        position_ids += OFFSET  # in place, on the tensor it was given (OPT's learned positions start at 2)
        h = self.embed(ids) + self.positions(position_ids)
        causal = torch.ones(T, T, dtype=torch.bool).triu(1)
        mask = torch.zeros(T, T).masked_fill(causal, torch.finfo(h.dtype).min)  # torch's default dtype
        scores = h @ h.transpose(1, 2) / math.sqrt(D) + mask
        return self.head(torch.softmax(scores, -1) @ self.value(h)) * self.logit_scale.exp()


class NnxHabits(nnx.Module):
    def __init__(self, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
        self.positions = nnx.Embed(T + OFFSET, D, rngs=rngs)
        self.value = nnx.Linear(D, D, rngs=rngs)
        self.head = nnx.Linear(D, VOCAB, rngs=rngs)
        self.logit_scale = nnx.Param(jnp.asarray(0.0))

    def __call__(self, ids, position_ids):
        h = self.embed(ids) + self.positions(position_ids + OFFSET)
        causal = jnp.triu(jnp.ones((T, T), bool), 1)
        scores = jnp.where(causal, jnp.finfo(h.dtype).min, h @ jnp.swapaxes(h, 1, 2) / math.sqrt(D))
        return self.head(nnx.softmax(scores, -1) @ self.value(h)) * jnp.exp(self.logit_scale[...])


def lm_data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (n, T))
    positions = np.broadcast_to(np.arange(T), (n, T)).copy()
    return (ids, positions), np.roll(ids, -1, axis=1)


CHECK = dict(optimizer="adam", optimizer_kwargs={"lr": 1e-2}, batch_size=32, steps=4)


def test_in_place_inputs_scalar_parameter_and_default_dtype_mask_need_no_glue():
    (ids, positions), y = lm_data()
    kept = positions.copy()
    report = check_port(TorchHabits(), NnxHabits(), train=((ids, positions), y), test=((ids[:32], positions[:32]),
                                                                                      y[:32]), **CHECK)
    assert report.passed, report
    np.testing.assert_array_equal(positions, kept)  # the model's `+=` never reached the user's arrays
    assert torch.get_default_dtype() == torch.float32  # restored after the float64 runs


def test_a_planted_bug_beside_the_habits_is_still_found():
    class Shifted(NnxHabits):  # forgets the position offset
        def __call__(self, ids, position_ids):
            return super().__call__(ids, position_ids - OFFSET)

    (ids, positions), y = lm_data()
    report = check_port(TorchHabits(), Shifted(), train=((ids, positions), y), dtypes=("float64",), **CHECK)
    assert not report.passed
    assert report.checks[-1]["first_failing_step"] == 1 and report.checks[-1]["layer"] == "positions"


def test_our_own_failure_is_reported_as_ours(monkeypatch):
    from jaxtrain.parity import runners

    # a bug planted in jaxtrain's torch' run: its per-step hook calls one of our methods with the wrong arguments
    monkeypatch.setattr(runners.TorchRunner, "_nudge", runners.TorchRunner._inject_mask)
    (ids, positions), y = lm_data()
    with pytest.raises(InternalError, match=r"jaxtrain failed in the float64 torch_rounding run .*not the model: "
                                            r"TypeError: .*at jaxtrain/parity/runners.py:\d+ in _count_step"):
        check_port(TorchHabits(), NnxHabits(), train=((ids, positions), y), dtypes=("float64",), **CHECK)


def test_the_models_own_failure_is_still_the_models():
    class Fails(TorchHabits):
        def forward(self, ids, position_ids):
            if self.training and ids.dtype == torch.int64 and self.logit_scale.dtype == torch.float64:
                raise RuntimeError("the user's float64 path is broken")
            return super().forward(ids, position_ids)

    (ids, positions), y = lm_data()
    with pytest.raises(PortMappingError, match="the torch model fails in the float64 run .*RuntimeError: the user's"):
        check_port(Fails(), NnxHabits(), train=((ids, positions), y), dtypes=("float64",), **CHECK)


# --------------------------------------------------------------------------- a computation across a layer boundary


class ScaledEmbedding(torch.nn.Embedding):
    """An embedding that scales its own output by sqrt(d), as several transformers families' do."""

    def forward(self, ids):
        return super().forward(ids) * math.sqrt(self.embedding_dim)


class TorchScaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.embed = ScaledEmbedding(VOCAB, D)
        self.proj = torch.nn.Linear(D, D)
        self.head = torch.nn.Linear(D, VOCAB)

    def forward(self, ids):
        return self.head(torch.tanh(self.proj(self.embed(ids))).mean(1))


class NnxScaled(nnx.Module):
    """The port scales after its nn.Embed: the same model, the boundary elsewhere."""

    def __init__(self, activation=jnp.tanh, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
        self.proj = nnx.Linear(D, D, rngs=rngs)
        self.head = nnx.Linear(D, VOCAB, rngs=rngs)
        self.activation = activation

    def __call__(self, ids):
        return self.head(self.activation(self.proj(self.embed(ids) * math.sqrt(D))).mean(1))


def test_a_scale_moved_across_a_layer_boundary_is_no_difference_and_is_said():
    (ids, _), y = lm_data()
    report = check_port(TorchScaled(), NnxScaled(), train=(ids, y[:, 0]), test=(ids[:32], y[:32, 0]), **CHECK)
    assert report.passed, report
    assert any("embed's output differs but proj receives the same input" in f for f in report.findings), report


def test_a_bug_after_a_moved_boundary_is_localised_at_its_own_layer():
    (ids, _), y = lm_data()
    report = check_port(TorchScaled(), NnxScaled(activation=nnx.relu), train=(ids, y[:, 0]), **CHECK)
    assert not report.passed
    assert [(c["dtype"], c["layer"], c["first_failing_step"]) for c in report.checks] == [
        ("float32", "head", 1), ("float64", "head", 1)], report


# --------------------------------------------------------------------------- buffers, parameters and frozen tensors


class TorchBiasBuffer(torch.nn.Module):
    """A tied LM head and a logits bias kept as a buffer on the model itself (BART/Marian's final_logits_bias)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.embed = torch.nn.Embedding(VOCAB, D)
        self.proj = torch.nn.Linear(D, D)
        self.lm_head = torch.nn.Linear(D, VOCAB, bias=False)
        self.lm_head.weight = self.embed.weight
        self.register_buffer("final_logits_bias", 0.1 * torch.randn(1, VOCAB))
    def forward(self, ids):
        return self.lm_head(torch.tanh(self.proj(self.embed(ids)))) + self.final_logits_bias

class NnxBiasParam(nnx.Module):
    def __init__(self, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.embed = nnx.Embed(VOCAB, D, rngs=rngs); self.proj = nnx.Linear(D, D, rngs=rngs)
        self.final_logits_bias = nnx.Param(jnp.zeros((1, VOCAB)))
    def __call__(self, ids):
        return self.embed.attend(jnp.tanh(self.proj(self.embed(ids)))) + jax.lax.stop_gradient(self.final_logits_bias[...])

class TorchFrozenTable(torch.nn.Module):
    """A position table torch freezes (requires_grad_(False)); the port reads its table behind stop_gradient."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.embed = torch.nn.Embedding(VOCAB, D)
        self.pos = torch.nn.Embedding(T, D); self.pos.requires_grad_(False)
        self.head = torch.nn.Linear(D, VOCAB)
    def forward(self, ids):
        return self.head(torch.tanh(self.embed(ids) + self.pos(torch.arange(ids.shape[1]))))

class NnxFrozenTable(nnx.Module):
    def __init__(self, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.embed = nnx.Embed(VOCAB, D, rngs=rngs); self.pos = nnx.Embed(T, D, rngs=rngs); self.head = nnx.Linear(D, VOCAB, rngs=rngs)
    def __call__(self, ids):
        pos = jax.lax.stop_gradient(self.pos.embedding[...])
        return self.head(jnp.tanh(self.embed(ids) + pos[None, : ids.shape[1]]))


ADAMW = {**CHECK, "optimizer": "adamw", "optimizer_kwargs": {"lr": 1e-2, "weight_decay": 0.1}}


@pytest.mark.parametrize("torch_model, port", [(TorchBiasBuffer, NnxBiasParam), (TorchFrozenTable, NnxFrozenTable)])
def test_a_tensor_torch_never_trains_pairs_by_name_and_passes_without_decay(torch_model, port):
    (ids, _), y = lm_data()
    report = check_port(torch_model(), port(), train=(ids, y), test=(ids[:32], y[:32]), **CHECK)
    assert report.passed, report


@pytest.mark.parametrize("torch_model, port", [(TorchBiasBuffer, NnxBiasParam), (TorchFrozenTable, NnxFrozenTable)])
def test_weight_decay_on_a_tensor_torch_never_trains_is_named(torch_model, port):
    (ids, _), y = lm_data()
    report = check_port(torch_model(), port(), train=(ids, y), dtypes=("float64",), **ADAMW)
    assert not report.passed and report.diagnosis["trap"] == "frozen tensor trained", report
