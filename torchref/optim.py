"""torch.optim optimizers and schedulers from a config (twin: jaxtrain/optim.py)."""

import torch


def make_optimizer(config, params) -> torch.optim.Optimizer:
    c = config
    if c.optimizer == "sgd":
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, dampening=c.dampening,
                               weight_decay=c.weight_decay, nesterov=c.nesterov)
    if c.optimizer == "adam":
        return torch.optim.Adam(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay,
                                amsgrad=c.amsgrad)
    if c.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay,
                                 amsgrad=c.amsgrad)
    if c.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=c.lr, alpha=c.alpha, eps=c.eps, weight_decay=c.weight_decay,
                                   momentum=c.momentum, centered=c.centered)
    if c.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=c.lr, lr_decay=c.lr_decay, weight_decay=c.weight_decay,
                                   initial_accumulator_value=c.initial_accumulator_value, eps=c.eps)
    raise ValueError(f"unknown optimizer {c.optimizer!r}")


def make_scheduler(config, optimizer):
    """A scheduler stepped once per epoch (scheduler.step() after each epoch), or None."""
    c = config
    if c.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=c.step_size, gamma=c.gamma)
    if c.scheduler == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(c.milestones), gamma=c.gamma)
    if c.scheduler == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=c.gamma)
    if c.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=c.t_max, eta_min=c.eta_min)
    return None
