"""Model layer: backbones, the shallow ensemble, model files."""

from .backbone import Backbone, PowerSpectrumBackbone
from .ensemble import ShallowEnsemble, apply_calibration
from .io import load_model, save_model

__all__ = ["Backbone", "PowerSpectrumBackbone", "ShallowEnsemble", "apply_calibration",
           "load_model", "save_model"]
