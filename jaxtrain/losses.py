"""Losses with torch's reductions (twin: torchref/losses.py): loss(outputs, targets) -> scalar."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    """nn.CrossEntropyLoss(label_smoothing=e): mean over the batch (and every position of sequence
    targets) of -log softmax(logits)[label], the last axis holding the classes; with e, the target is
    (1 - e) one-hot + e / C everywhere, as torch mixes them."""
    if not label_smoothing:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    return -((1 - label_smoothing) * picked + label_smoothing * log_probs.mean(axis=-1)).mean()


def nll(logits, labels):
    """nn.NLLLoss() applied to F.log_softmax(logits, dim=-1)."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1).mean()


def mse(outputs, targets, reduction: str = "mean"):
    """nn.MSELoss(reduction=...). Integer class labels are compared as one-hot vectors."""
    if jnp.issubdtype(targets.dtype, jnp.integer):
        targets = jax.nn.one_hot(targets, outputs.shape[-1], dtype=outputs.dtype)
    squared = jnp.square(outputs - targets.reshape(outputs.shape))
    return squared.sum() if reduction == "sum" else squared.mean()


def loss_by_name(name: str, mse_reduction: str = "mean", label_smoothing: float = 0.0):
    """loss(outputs, targets) -> scalar, as `--loss` names it."""
    if name == "cross_entropy":
        return lambda logits, labels: cross_entropy(logits, labels, label_smoothing)
    if name == "nll":
        return nll
    if name == "mse":
        return lambda outputs, targets: mse(outputs, targets, mse_reduction)
    raise ValueError(f"unknown loss {name!r} (cross_entropy, nll, mse)")


def make_loss(config):
    return loss_by_name(config.loss, config.mse_reduction, config.label_smoothing)
