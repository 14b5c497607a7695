"""The ``model`` section of a training config: backbone, bottleneck, members, dtype."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ..errors import ConfigError

LEGACY_BACKBONE_KEYS = ("cutoff_A", "n_radial", "l_max", "n_channels", "hidden")
"""Options of the built-in backbone that were once written directly under ``model``; they are
still read there (as ``model.backbone: {kind: power-spectrum, ...}``)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a shallow ensemble: a registered backbone, an optional bottleneck and M
    linear heads."""

    backbone: dict = dataclasses.field(default_factory=lambda: {"kind": "power-spectrum"})
    """The backbone: ``kind`` (``power-spectrum``, the built-in one, or ``mace``, with
    ``pip install 'shallow-ensembles[mace]'``) and its options (``shallow-ensembles train
    --print-defaults`` lists them; ``model/registry.py`` has the table)."""
    bottleneck: int | None = 16
    """Width d of the last-layer features feeding the heads (an atom-wise Linear + SiLU; for
    ``mace`` it is the hidden layer of MACE's last readout); null feeds the F backbone features."""
    n_members: int = 8
    """Number of ensemble members M (heads); at least 2 for an uncertainty."""
    dtype: Literal["float32", "float64"] = "float32"
    """Floating-point precision of parameters and computations."""

    def __post_init__(self):
        if not isinstance(self.backbone.get("kind", "power-spectrum"), str):
            raise ConfigError("model.backbone.kind",
                              f"expected a string, got {self.backbone.get('kind')!r}")
        if self.n_members < 1:
            raise ConfigError("model.n_members", f"expected >= 1, got {self.n_members}")
        if self.bottleneck is not None and self.bottleneck < 1:
            raise ConfigError("model.bottleneck", f"expected >= 1 or null, got {self.bottleneck}")

    @staticmethod
    def upgrade(data: dict) -> dict:
        """Fold the legacy top-level backbone options into ``backbone`` (see
        :data:`LEGACY_BACKBONE_KEYS`)."""
        legacy = {k: data[k] for k in LEGACY_BACKBONE_KEYS if k in data}
        if not legacy:
            return data
        backbone = dict(data.get("backbone") or {"kind": "power-spectrum"})
        if backbone.get("kind", "power-spectrum") != "power-spectrum":
            raise ConfigError(f"model.{next(iter(legacy))}", "is an option of the "
                              "power-spectrum backbone; put backbone options under "
                              "model.backbone")
        rest = {k: v for k, v in data.items() if k not in legacy}
        return {**rest, "backbone": {**backbone, **legacy}}
