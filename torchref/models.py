"""The tutorial's models, as the PyTorch tutorial writes them (twin: jaxtrain/models.py)."""

import torch
from torch import nn


class NeuralNetwork(nn.Module):
    """The tutorial's model: Flatten, Linear(784,512) ReLU Linear(512,512) ReLU Linear(512,10)."""

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )

    def forward(self, x):
        x = self.flatten(x)
        logits = self.linear_relu_stack(x)
        return logits


class NeuralNetworkBatchNormDropout(nn.Module):
    """Adds BatchNorm1d and Dropout, so model.train() and model.eval() differ."""

    def __init__(self, p=0.2):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(),
            nn.Dropout(p),
            nn.Linear(512, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(),
            nn.Dropout(p),
            nn.Linear(512, 10),
        )

    def forward(self, x):
        x = self.flatten(x)
        logits = self.linear_relu_stack(x)
        return logits


def flax_style_init_(model: nn.Module) -> None:
    """Flax's default Dense init in torch (--init flax): lecun_normal weights, zero biases."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            std = (1.0 / module.in_features) ** 0.5 / 0.87962566103423978  # truncated-normal correction
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(module.bias)


def make_model(config) -> nn.Module:
    torch.manual_seed(config.seed)
    model = NeuralNetwork() if config.model == "mlp" else NeuralNetworkBatchNormDropout(config.dropout)
    if config.init == "flax":
        flax_style_init_(model)
    return model.to(torch.float64 if config.dtype == "float64" else torch.float32)
