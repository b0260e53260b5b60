"""Losses as torch.nn writes them (twin: jaxtrain/losses.py)."""

import torch.nn.functional as F
from torch import nn


def make_loss(config):
    if config.loss == "cross_entropy":
        return nn.CrossEntropyLoss()
    if config.loss == "nll":
        nll = nn.NLLLoss()
        return lambda pred, y: nll(F.log_softmax(pred, dim=1), y)
    mse = nn.MSELoss(reduction=config.mse_reduction)
    return lambda pred, y: mse(pred, F.one_hot(y, pred.shape[1]).to(pred.dtype) if not y.is_floating_point() else y)
