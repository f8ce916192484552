"""PyTorch backend: the only package (with backends/mindspore) that imports a deep-learning framework."""
from .session import TorchBackend, TorchSession

BACKEND = TorchBackend()

__all__ = ["BACKEND", "TorchBackend", "TorchSession"]
