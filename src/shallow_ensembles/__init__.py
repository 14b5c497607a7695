"""Shallow-ensemble interatomic potentials with calibrated uncertainties for ASE and i-PI.

Public names are imported on first use, so that ``import shallow_ensembles`` and the command
line's ``--help`` do not pay for torch.
"""

__version__ = "0.1.0"

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

_LAZY = {
    "ShallowEnsemble": ("shallow_ensembles.model", "ShallowEnsemble"),
    "load_model": ("shallow_ensembles.model", "load_model"),
    "save_model": ("shallow_ensembles.model", "save_model"),
    "ShallowEnsembleCalculator": ("shallow_ensembles.calculator", "ShallowEnsembleCalculator"),
    "attach_uncertainty": ("shallow_ensembles.calculator", "attach_uncertainty"),
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


def __dir__():
    return sorted(__all__)
