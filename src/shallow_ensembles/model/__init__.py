"""Model layer: backbones (a registry of kinds), the shallow ensemble, model files."""

from . import mace_backbone  # noqa: F401 - registers the ``mace`` kind (mace-torch is optional)
from .backbone import Backbone, PowerSpectrumBackbone, PowerSpectrumOptions
from .ensemble import ShallowEnsemble, apply_calibration
from .io import load_model, save_model
from .registry import BACKBONES, build_backbone, register_backbone, resolve_options

__all__ = ["BACKBONES", "Backbone", "PowerSpectrumBackbone", "PowerSpectrumOptions",
           "ShallowEnsemble", "apply_calibration", "build_backbone", "load_model",
           "register_backbone", "resolve_options", "save_model"]
