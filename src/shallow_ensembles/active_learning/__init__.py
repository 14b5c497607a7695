"""Active learning: MD walkers with the uncertainty monitor → pooled candidates → a diverse batch
(farthest-point sampling on last-layer features, or highest σ) → labels from a reference ASE
calculator (GFN2-xTB through tblite, or any calculator by import path) → the training set grows
→ a short fine-tune from the current model → recalibration → next round.

- :func:`run_active_learning`: the loop (``shallow-ensembles active-learn PROTOCOL.yaml``),
  checkpointed every round and resumable.
- :class:`ActiveLearningConfig` and :func:`load_al_config`: the protocol schema.
- :func:`make_reference`, :func:`label`: reference calculators and labelling.
- :func:`farthest_point_sampling`, :func:`highest_sigma`, :func:`structure_features`: selection.
"""

from .config import (
    ActiveLearningConfig,
    ALDataConfig,
    FineTuneConfig,
    InitialConfig,
    ReferenceConfig,
    SelectionConfig,
    StoppingConfig,
    WalkersConfig,
    load_al_config,
)
from .loop import ALResult, run_active_learning
from .reference import label, make_reference
from .selection import farthest_point_sampling, highest_sigma, structure_features

__all__ = [
    "ALDataConfig",
    "ALResult",
    "ActiveLearningConfig",
    "FineTuneConfig",
    "InitialConfig",
    "ReferenceConfig",
    "SelectionConfig",
    "StoppingConfig",
    "WalkersConfig",
    "farthest_point_sampling",
    "highest_sigma",
    "label",
    "load_al_config",
    "make_reference",
    "run_active_learning",
    "structure_features",
]
