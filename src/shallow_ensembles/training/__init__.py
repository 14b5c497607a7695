"""Training layer: losses, head initialisation (incl. LLPR), the trainer and protocols."""

from .protocol import load_datasets, train

__all__ = ["load_datasets", "train"]
