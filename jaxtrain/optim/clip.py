"""torch.nn.utils.clip_grad_norm_ and clip_grad_value_ as optax transformations.

torch's norm clipping scales every gradient by min(1, max_norm / (total_norm + 1e-6)), where
total_norm is the norm of the per-tensor norms; optax.clip_by_global_norm has no 1e-6 and scales
by max_norm / total_norm only above the bound, so the two differ at every clipped step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _norm(x, norm_type: float):
    return jnp.linalg.vector_norm(jnp.ravel(x), ord=norm_type)


def clip_grad_norm(max_norm: float, norm_type: float = 2.0) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type), over all the gradients given."""

    def update_fn(updates, state, params=None):
        del params
        leaves = jax.tree.leaves(updates)
        if not leaves:
            return updates, state
        total = _norm(jnp.stack([_norm(g, norm_type) for g in leaves]), norm_type)
        coef = jnp.minimum(max_norm / (total + 1e-6), 1.0)
        return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def clip_grad_value(clip_value: float) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_value_(parameters, clip_value): each element into [-clip_value, clip_value]."""

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: jnp.clip(g, -clip_value, clip_value), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
