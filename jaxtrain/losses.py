"""Losses with torch's reductions, over a batch that may hold padded rows.

`weight` is 1 for a real sample and 0 for padding, so the padded last batch of
an epoch gives exactly the mean over its real samples, as torch's loss does on
the smaller batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _weighted_mean(per_example, weight):
    return jnp.sum(per_example * weight) / jnp.sum(weight)


def cross_entropy(logits, labels, weight):
    """nn.CrossEntropyLoss(): mean over the batch of -log softmax(logits)[label]."""
    return _weighted_mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels), weight)


def nll(logits, labels, weight):
    """nn.NLLLoss() applied to F.log_softmax(logits, dim=1)."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    return _weighted_mean(-picked, weight)


def mse(outputs, targets, weight, reduction: str = "mean"):
    """nn.MSELoss(reduction=...). Integer class labels are compared as one-hot vectors."""
    if jnp.issubdtype(targets.dtype, jnp.integer):
        targets = jax.nn.one_hot(targets, outputs.shape[-1], dtype=outputs.dtype)
    squared = jnp.sum(jnp.square(outputs - targets), axis=-1) * weight
    total = jnp.sum(squared)
    if reduction == "sum":
        return total
    return total / (jnp.sum(weight) * outputs.shape[-1])


def make_loss(config):
    """loss(outputs, targets, weight) -> scalar, as `--loss` names it."""
    if config.loss == "cross_entropy":
        return cross_entropy
    if config.loss == "nll":
        return nll
    return lambda outputs, targets, weight: mse(outputs, targets, weight, config.mse_reduction)
