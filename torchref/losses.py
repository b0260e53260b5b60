"""Losses as torch.nn writes them (twin: jaxtrain/losses.py)."""

import torch.nn.functional as F
from torch import nn


def loss_by_name(name: str, mse_reduction: str = "mean"):
    if name == "cross_entropy":
        return nn.CrossEntropyLoss()
    if name == "nll":
        nll = nn.NLLLoss()
        return lambda pred, y: nll(F.log_softmax(pred, dim=1), y)
    if name == "mse":
        mse = nn.MSELoss(reduction=mse_reduction)
        return lambda pred, y: mse(pred, y.reshape(pred.shape) if y.is_floating_point()
                                   else F.one_hot(y, pred.shape[1]).to(pred.dtype))
    raise ValueError(f"unknown loss {name!r} (cross_entropy, nll, mse)")


def make_loss(config):
    return loss_by_name(config.loss, config.mse_reduction)
