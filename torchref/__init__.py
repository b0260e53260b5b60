"""torchref: the PyTorch reference, written the way the PyTorch tutorial writes it."""
