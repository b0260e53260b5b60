"""Corpus cases for training loops as users write them: clipping, param groups, label smoothing,
per-batch warmup + cosine, OneCycle, ReduceLROnPlateau, accumulation.

Each case is `data -> check_port keyword arguments` on the tutorial's MLP (data: the corpus'
FashionMNIST splits). The torch side is the user's loop (their optimizer factory, scheduler,
torch_step); a healthy port's JAX side is `from_torch` of it (or what a careful user writes), a
planted bug's JAX side is a mistake people make when porting that loop.
"""

from __future__ import annotations

import optax

def _torch():
    import torch

    return torch, torch.optim.lr_scheduler


def _models():
    import torch

    from jaxtrain.config import make_config
    from jaxtrain.models import make_model
    from torchref.models import make_model as make_torch_model

    torch.manual_seed(0)
    return make_torch_model(make_config()), make_model(make_config())


def _case(data, steps=40, **kw) -> dict:
    torch_model, flax_model = _models()
    train, test = data
    return dict(torch_model=torch_model, flax_model=flax_model, train=(train.images[:, None], train.labels),
                test=(test.images[:, None], test.labels), steps=steps, **kw)


def no_decay_groups(params):
    """The recipe users copy: biases (and norm weights) in a group without weight decay."""
    params = list(params)
    return [{"params": [p for p in params if p.ndim > 1]}, {"params": [p for p in params if p.ndim <= 1],
                                                            "weight_decay": 0.0}]


def _twin(factory, **kw):
    """A from_torch twin of `factory`'s objects, made from the user's own model as they would make it."""
    from jaxtrain.optim import from_torch

    torch_model, _ = _models()
    made = factory(torch_model.parameters())
    optimizer, scheduler = made if isinstance(made, tuple) else (made, None)
    return from_torch(optimizer, scheduler, model=torch_model, **kw)


def clip_in_loop(max_norm):
    torch, _ = _torch()
    return lambda model, optimizer: torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def sgd_momentum(params):
    torch, _ = _torch()
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def adamw_groups(params):
    torch, _ = _torch()
    return torch.optim.AdamW(no_decay_groups(params), lr=2e-3, weight_decay=0.05)


def warmup_cosine(params):
    """Linear warmup over 5 optimizer steps, then cosine: the transformer recipe, stepped per batch."""
    torch, S = _torch()
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    return optimizer, S.SequentialLR(optimizer, [S.LinearLR(optimizer, 0.1, total_iters=5),
                                                 S.CosineAnnealingLR(optimizer, T_max=35)], milestones=[5])


def optax_adamw_masked():
    """adamw_groups as users write it in optax: weight decay masked off the biases (and norm weights)."""
    import jax

    return optax.adamw(2e-3, weight_decay=0.05, mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params))


def optax_warmup_cosine(init_value):
    """warmup_cosine as users write it in optax (from `init_value`): its learning rate is float32 in float64 runs."""
    return optax.sgd(optax.warmup_cosine_decay_schedule(init_value, 0.1, 5, 40, 0.0), momentum=0.9)


def one_cycle(params, cycle_momentum=True):
    torch, S = _torch()
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    return optimizer, S.OneCycleLR(optimizer, max_lr=3e-3, total_steps=41, cycle_momentum=cycle_momentum)


def plateau(params):
    torch, S = _torch()
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    return optimizer, S.ReduceLROnPlateau(optimizer, factor=0.5, patience=0, threshold=0.5)  # cuts every epoch


# --------------------------------------------------------------------------- healthy loops

HEALTHY = {
    "loop_clip_grad_norm": lambda data: _case(data, optimizer=sgd_momentum, clip_grad_norm=0.5),
    "loop_clip_in_torch_step": lambda data: _case(
        data, optimizer=(sgd_momentum, _twin(sgd_momentum, clip_grad_norm=0.5)), torch_step=clip_in_loop(0.5)),
    "loop_no_decay_groups": lambda data: _case(data, optimizer=adamw_groups),
    "loop_label_smoothing": lambda data: _case(data, optimizer="adam", label_smoothing=0.1),
    "loop_warmup_cosine_per_batch": lambda data: _case(data, optimizer=warmup_cosine, scheduler_interval="step"),
    "loop_one_cycle": lambda data: _case(data, optimizer=one_cycle, scheduler_interval="step"),
    "loop_plateau": lambda data: _case(data, optimizer=plateau, steps=None, epochs=4),
    "loop_accumulate": lambda data: _case(data, optimizer=sgd_momentum, accumulate=2),
    # AdamW with a second param group without decay, ported as optax.adamw with a decay mask (optax's float32
    # bias correction: a finding, not a failure)
    "loop_optax_adamw_decay_mask": lambda data: _case(data, optimizer=(adamw_groups, optax_adamw_masked())),
    # the user's own optax schedule, which computes the learning rate in float32 inside the float64 run
    "loop_optax_warmup_cosine_float32": lambda data: _case(
        data, optimizer=(warmup_cosine, optax_warmup_cosine(0.01)), scheduler_interval="step"),
}


# --------------------------------------------------------------------------- planted loop bugs


def _sgd(params):
    torch, _ = _torch()
    return torch.optim.SGD(params, lr=0.05)


def _warmup_per_epoch(data):
    return _case(data, optimizer=(warmup_cosine, _twin(warmup_cosine, interval="epoch", steps_per_epoch=10, steps=40)),
                 scheduler_interval="step")


def _label_smoothing_forgotten(data):
    from jaxtrain.losses import cross_entropy
    from torchref.losses import loss_by_name

    return _case(data, optimizer="adam", loss=(loss_by_name("cross_entropy", label_smoothing=0.1), cross_entropy))


# name -> (case, stage, step, tensor prefix, why, diagnosis)
BUGS = {
    "loop_clip_torch_only": (
        lambda data: _case(data, optimizer=_sgd, torch_step=clip_in_loop(0.5)), "updates", 1,
        "linear_relu_stack.0.weight", "clip_grad_norm_ in the torch loop, no clipping in the port's optax chain",
        "gradient clipping"),
    "loop_clip_per_tensor": (
        lambda data: _case(data, optimizer=(_sgd, optax.chain(optax.clip_by_block_rms(0.01), optax.sgd(0.05))),
                           clip_grad_norm=0.5),
        "updates", 1, "linear_relu_stack.0.weight",
        "clip_grad_norm_ (one global norm) ported as optax.clip_by_block_rms (each tensor on its own)",
        "per-tensor vs global norm clipping"),
    "loop_clip_optax_global_norm": (
        lambda data: _case(data, optimizer=(_sgd, optax.chain(optax.clip_by_global_norm(0.5), optax.sgd(0.05))),
                           clip_grad_norm=0.5),
        "updates", 1, "linear_relu_stack.0.weight",
        "clip_grad_norm_(0.5) ported as optax.clip_by_global_norm(0.5): torch divides by norm + 1e-6",
        "gradient clipping"),
    "loop_decay_on_biases": (
        lambda data: _case(data, optimizer=(adamw_groups, optax.adamw(2e-3, eps=1e-8, weight_decay=0.05))),
        "updates", 1, "linear_relu_stack.0.bias",
        "AdamW with a no-decay group for biases ported as optax.adamw decaying everything",
        "decay on biases and norms"),
    "loop_label_smoothing_forgotten": (
        _label_smoothing_forgotten, "loss", 1, None,
        "CrossEntropyLoss(label_smoothing=0.1) ported as plain cross-entropy", None),
    "loop_warmup_per_epoch": (
        _warmup_per_epoch, "updates", 2, "linear_relu_stack.0.weight",
        "a warmup + cosine schedule the torch loop steps per batch, ported as stepped per epoch",
        "learning rate at this step"),
    "loop_one_cycle_without_momentum": (
        lambda data: _case(data, optimizer=(one_cycle, _twin(lambda p: one_cycle(p, cycle_momentum=False),
                                                             interval="step", steps=40)),
                           scheduler_interval="step"),
        "updates", 2, "linear_relu_stack.0.weight",
        "OneCycleLR ported as its lr schedule alone: torch also cycles Adam's beta1", None),
    "loop_plateau_forgotten": (
        lambda data: _case(data, optimizer=(plateau, _twin(lambda p: plateau(p)[0])), steps=None, epochs=4),
        "updates", 21, "linear_relu_stack.0.weight",
        "ReduceLROnPlateau (its first cut after epoch 2) left out of the port: its lr never drops", "learning rate at this step"),
    "loop_optax_warmup_from_zero": (
        lambda data: _case(data, optimizer=(warmup_cosine, optax_warmup_cosine(0.0)), scheduler_interval="step"),
        "updates", 1, "linear_relu_stack.0.weight",
        "torch's LinearLR warms up from 0.1 x lr, the optax schedule from 0 (and computes in float32)",
        "learning rate at this step"),
    "loop_accumulated_sum": (
        lambda data: _case(data, optimizer=(_sgd, optax.MultiSteps(optax.sgd(0.05), 2, use_grad_mean=False)
                                            .gradient_transformation()), accumulate=2),
        "updates", 2, "linear_relu_stack.0.weight",
        "accumulation over 2 batches applying their sum (torch's loop divides each loss by 2)",
        "accumulated sum instead of mean"),
}
