"""torch.optim in optax: every optimizer's rule, torch's schedulers and clipping, exact.

- rules.py: one per-tensor update rule per torch.optim class, and the optax wrapper;
- schedules.py: the Config's schedulers, any torch scheduler tabulated, ReduceLROnPlateau;
- clip.py: clip_grad_norm_ / clip_grad_value_ twins;
- from_torch.py: a live torch optimizer (+ scheduler, + clipping) -> one optax transformation;
- named.py: the optimizers `jaxtrain train` names.
"""

from jaxtrain.optim.clip import clip_grad_norm, clip_grad_value
from jaxtrain.optim.from_torch import from_torch
from jaxtrain.optim.named import adagrad, adam, adamw, make_optimizer, rmsprop, sgd
from jaxtrain.optim.rules import RULES, transform
from jaxtrain.optim.schedules import for_config, has_plateau, lr_schedule, plateau_step

__all__ = ["RULES", "adagrad", "adam", "adamw", "clip_grad_norm", "clip_grad_value", "for_config", "from_torch", "has_plateau",
           "lr_schedule", "make_optimizer", "plateau_step", "rmsprop", "sgd", "transform"]
