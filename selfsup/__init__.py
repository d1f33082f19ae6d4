"""selfsup: self-supervised visual representation learning on PyTorch."""

__version__ = "0.1.0"
