"""Shallow-ensemble interatomic potentials with calibrated uncertainties for ASE and i-PI."""

__version__ = "0.1.0"

from .calculator import ShallowEnsembleCalculator, attach_uncertainty  # noqa: E402
from .model import ShallowEnsemble, load_model, save_model  # noqa: E402

__all__ = [
    "ShallowEnsemble",
    "ShallowEnsembleCalculator",
    "UncertaintyMonitor",
    "__version__",
    "attach_uncertainty",
    "calibrate",
    "evaluate",
    "load_model",
    "save_model",
    "train",
]

_LAZY = {  # heavier entry points, imported on first use so that the package imports fast
    "train": ("shallow_ensembles.training", "train"),
    "calibrate": ("shallow_ensembles.calibration", "calibrate"),
    "evaluate": ("shallow_ensembles.evaluation", "evaluate"),
    "UncertaintyMonitor": ("shallow_ensembles.md", "UncertaintyMonitor"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'shallow_ensembles' has no attribute {name!r}")
