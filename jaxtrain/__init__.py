"""jaxtrain: PyTorch's 'Optimizing Model Parameters' tutorial, ported to JAX/Flax/Optax."""

__version__ = "0.1.0"
