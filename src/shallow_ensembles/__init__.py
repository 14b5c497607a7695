"""Shallow-ensemble interatomic potentials with calibrated uncertainties for ASE and i-PI."""

__version__ = "0.1.0"

from .calculator import ShallowEnsembleCalculator, attach_uncertainty  # noqa: E402
from .model import ShallowEnsemble, load_model, save_model  # noqa: E402

__all__ = [
    "ShallowEnsemble",
    "ShallowEnsembleCalculator",
    "__version__",
    "attach_uncertainty",
    "load_model",
    "save_model",
]
