"""What a written port imports besides JAX and Flax: the pieces of torch libraries' semantics that are not a layer.

- `Outputs`: a model's named outputs, as transformers' `ModelOutput` gives them: by key (`out["logits"]`), by
  attribute (`out.logits`) and by position (`out[0]`: the first output present).
- `causal_mask`: transformers' `create_causal_mask` for eager attention: 0 where a query may attend, the
  dtype's lowest value where not (a later key, or a padded one).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


class Outputs(dict):
    """A dict of a model's outputs, also read by attribute and by position (a pytree: its values are leaves)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return tuple(self.values())[key]
        return super().__getitem__(key)


jax.tree_util.register_pytree_node(Outputs, lambda o: (tuple(o.values()), tuple(o.keys())),
                                   lambda keys, values: Outputs(zip(keys, values)))


def causal_mask(input_embeds, attention_mask=None, sliding_window=None):
    """(batch, 1, queries, keys) additive mask of a causal model over `input_embeds` (batch, length, ...),
    `attention_mask` (batch, length) marking the real tokens with 1 (None: all real); with `sliding_window`, a
    query sees only the keys less than that many positions back."""
    batch, length = input_embeds.shape[:2]
    allowed = jnp.tril(jnp.ones((length, length), bool))
    if sliding_window is not None:
        allowed = allowed & jnp.triu(jnp.ones((length, length), bool), -(sliding_window - 1))
    allowed = allowed[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.astype(bool)[:, None, None, :]
    allowed = jnp.broadcast_to(allowed, (batch, 1, length, length))
    return jnp.where(allowed, 0.0, jnp.finfo(input_embeds.dtype).min).astype(input_embeds.dtype)
