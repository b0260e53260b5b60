"""train_step / eval_step against hand-computed numpy math, and the on-device epoch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import data as data_lib
from jaxtrain import train as train_lib
from jaxtrain.config import Config
from jaxtrain.flax_model import leaves_by_path, pure_model
from jaxtrain.models import make_model


def numpy_mlp_step(params, x, y, lr):
    """Forward, cross-entropy, backward and SGD for the tutorial MLP, by hand."""
    (w1, b1), (w2, b2), (w3, b3) = params
    h1 = np.maximum(x @ w1 + b1, 0)
    h2 = np.maximum(h1 @ w2 + b2, 0)
    logits = h2 @ w3 + b3
    shifted = logits - logits.max(1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    n = len(y)
    loss = -np.log(probs[np.arange(n), y]).mean()
    d_logits = probs.copy()
    d_logits[np.arange(n), y] -= 1
    d_logits /= n
    d_h2 = (d_logits @ w3.T) * (h2 > 0)
    d_h1 = (d_h2 @ w2.T) * (h1 > 0)
    grads = [(x.T @ d_h1, d_h1.sum(0)), (h1.T @ d_h2, d_h2.sum(0)), (h2.T @ d_logits, d_logits.sum(0))]
    new = [(w - lr * gw, b - lr * gb) for (w, b), (gw, gb) in zip(params, grads)]
    return loss, logits, new


def as_numpy_params(params):
    """(kernel, bias) of the NNX MLP's three Linear layers (linear_relu_stack.layers.{0,2,4})."""
    leaves = leaves_by_path(params)
    return [(np.asarray(leaves[f"linear_relu_stack.layers.{i}.kernel"], np.float64),
             np.asarray(leaves[f"linear_relu_stack.layers.{i}.bias"], np.float64)) for i in (0, 2, 4)]


@pytest.fixture
def tiny_batch():
    rng = np.random.default_rng(1)
    x = rng.random((3, 784))
    y = np.array([2, 7, 7])
    return x, y


def test_train_step_matches_hand_computed_sgd(tiny_batch):
    train_lib.configure_jax("float64")
    config = Config(dtype="float64", lr=0.1)
    x, y = tiny_batch
    state = train_lib.create_state(config, steps_per_epoch=1)
    expected_loss, _, expected_params = numpy_mlp_step(as_numpy_params(state.params), x, y, 0.1)
    batch = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    state, metrics = jax.jit(train_lib.train_step, donate_argnums=0)(state, batch)
    assert float(metrics["loss"]) == pytest.approx(expected_loss, rel=1e-12)
    for (w, b), (ew, eb) in zip(as_numpy_params(state.params), expected_params):
        np.testing.assert_allclose(w, ew, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(b, eb, rtol=1e-10, atol=1e-14)
    assert int(state.step) == 1


def test_partial_last_batch_is_the_batch_torch_sees(fashion):
    """100 samples in batches of 64: the epoch runs one scanned full batch and the last 36 rows at
    their own shape; the same as stepping through the two DataLoader batches."""
    train_lib.configure_jax("float64")
    train, test = fashion[0].take(100), fashion[1].take(70)
    config = Config(dtype="float64", lr=0.1, optimizer="adam", eps=1e-8, batch_size=64)
    trainer = train_lib.Trainer(config, train, test)
    state = train_lib.create_state(config, trainer.steps_per_epoch)
    stepwise = []
    for images, labels in data_lib.iterate(train, trainer.batches(0)):
        assert len(images) in (64, 36)
        state, m = train_lib.train_step(state, {"x": jnp.asarray(images, jnp.float64), "y": jnp.asarray(labels)})
        stepwise.append(float(m["loss"]))
    np.testing.assert_allclose(trainer.train_one_epoch(0), stepwise, rtol=1e-13)
    jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-15), trainer.state.params, state.params)
    loss, accuracy = trainer.evaluate()  # test batches of 64 and 6: the mean of the two batch means
    batches = [train_lib.eval_step(state, {"x": jnp.asarray(test.images[a:b], jnp.float64),
                                           "y": jnp.asarray(test.labels[a:b])}) for a, b in ((0, 64), (64, 70))]
    assert loss == pytest.approx(np.mean([float(b["loss"]) for b in batches]), rel=1e-13)
    assert accuracy == sum(int(b["correct"]) for b in batches) / 70


def test_eval_step_loss_and_correct_count(tiny_batch):
    train_lib.configure_jax("float64")
    config = Config(dtype="float64")
    x, y = tiny_batch
    state = train_lib.create_state(config, 1)
    _, logits, _ = numpy_mlp_step(as_numpy_params(state.params), x, y, 0.0)
    out = train_lib.eval_step(state, {"x": jnp.asarray(x), "y": jnp.asarray(y)})
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    assert float(out["loss"]) == pytest.approx(-log_probs[np.arange(3), y].mean(), rel=1e-12)
    assert int(out["correct"]) == int((logits.argmax(1) == y).sum())


def test_torch_init_is_uniform_within_one_over_sqrt_fan_in():
    params = leaves_by_path(pure_model(make_model(Config())).params)
    for index, fan_in in ((0, 784), (2, 512), (4, 512)):
        bound = fan_in ** -0.5
        for leaf in (params[f"linear_relu_stack.layers.{index}.kernel"], params[f"linear_relu_stack.layers.{index}.bias"]):
            leaf = np.asarray(leaf)
            assert np.abs(leaf).max() <= bound
            if leaf.size > 1000:
                assert leaf.std() == pytest.approx(bound / np.sqrt(3), rel=0.02)
    flax_params = leaves_by_path(pure_model(make_model(Config(init="flax"))).params)
    assert not np.asarray(flax_params["linear_relu_stack.layers.0.bias"]).any()  # Flax: zero biases


def test_scan_epoch_equals_step_by_step_and_loss_falls(fashion):
    train, test = fashion[0].take(640), fashion[1].take(200)
    config = Config(epochs=3, batch_size=64, lr=0.05, shuffle=True, seed=4)
    trainer = train_lib.Trainer(config, train, test)
    state = train_lib.create_state(config, trainer.steps_per_epoch)
    step = jax.jit(train_lib.train_step)
    stepwise = []
    for images, labels in data_lib.iterate(train, trainer.batches(0)):
        state, m = step(state, {"x": jnp.asarray(images), "y": jnp.asarray(labels)})
        stepwise.append(float(m["loss"]))
    record = train_lib.fit(config, train, test, trainer=trainer)
    scanned = [s["loss"] for s in record["steps"][:10]]
    np.testing.assert_allclose(scanned, stepwise, rtol=2e-5)
    losses = [e["test_loss"] for e in record["epochs"]]
    assert losses[2] < losses[0] and record["epochs"][2]["train_loss"] < record["epochs"][0]["train_loss"]


def test_non_finite_loss_stops_with_step_and_epoch(fashion):
    from jaxtrain.errors import DivergedError

    config = Config(epochs=2, lr=1e6, optimizer="sgd")
    with pytest.raises(DivergedError, match=r"at step \d+ \(epoch 1\)"):
        train_lib.fit(config, fashion[0].take(1280), fashion[1].take(64))


@pytest.mark.corpus  # the suite's budget on the slowest kind (AMD Zen 3): among the long checks, make corpus
def test_tutorial_ten_epochs_reaches_the_tutorials_accuracy(fashion):
    """Defaults (SGD lr 1e-3, batch 64, torch init): the tutorial printed 71.0% at epoch 10."""
    record = train_lib.fit(Config(), *fashion)
    final = record["epochs"][-1]
    assert 0.68 <= final["test_accuracy"] <= 0.74
    assert 0.70 <= final["test_loss"] <= 0.85
    assert len(record["steps"]) == 9380
