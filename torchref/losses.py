"""Losses as torch.nn writes them (twin: jaxtrain/losses.py)."""

import torch.nn.functional as F
from torch import nn


def loss_by_name(name: str, mse_reduction: str = "mean", label_smoothing: float = 0.0):
    # the last axis holds the classes: (B, C) logits, or (B, T, C) with (B, T) targets, as
    # torch users write it: loss_fn(logits.view(-1, C), y.view(-1))
    if name == "cross_entropy":
        cross_entropy = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        return lambda pred, y: cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1))
    if name == "nll":
        nll = nn.NLLLoss()
        return lambda pred, y: nll(F.log_softmax(pred, dim=-1).reshape(-1, pred.shape[-1]), y.reshape(-1))
    if name == "mse":
        mse = nn.MSELoss(reduction=mse_reduction)
        return lambda pred, y: mse(pred, y.reshape(pred.shape) if y.is_floating_point()
                                   else F.one_hot(y, pred.shape[-1]).to(pred.dtype))
    raise ValueError(f"unknown loss {name!r} (cross_entropy, nll, mse)")


def make_loss(config):
    return loss_by_name(config.loss, config.mse_reduction, config.label_smoothing)
