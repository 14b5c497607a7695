"""Trust levels of a frame from its uncertainties (DP-GEN semantics), shared by ASE MD and i-PI.

A quantity q with levels (lo, hi) is ``trusted`` when q < lo, a ``candidate`` when lo ≤ q < hi
and ``failed`` when q ≥ hi. A frame's level is the worst over its quantities. Quantities:

- ``energy_per_atom``: σ_E / N, eV/atom (standard deviation, ddof=1, calibrated)
- ``forces``: max over atoms of ‖σ(F_i)‖ = sqrt(Σ_xyz σ²), eV/Å (ddof=1, calibrated)
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from .errors import ConfigError

Level = Literal["trusted", "candidate", "failed"]
"""The trust levels, best first: the one place their names are spelled."""
TRUSTED, CANDIDATE, FAILED = typing.get_args(Level)
LEVEL_ORDER = {name: rank for rank, name in enumerate(typing.get_args(Level))}
ActionLevel = Literal["candidate", "failed"]
"""The levels an action can be triggered by (every level above ``trusted``)."""


@dataclass(frozen=True)
class TrustLevels:
    """Lower (lo) and upper (hi) trust levels; ``None`` disables a level."""

    energy_per_atom_lo_eV: float | None = None
    """σ_E per atom at and above which a frame is a candidate, eV/atom."""
    energy_per_atom_hi_eV: float | None = None
    """σ_E per atom at and above which a frame has failed, eV/atom."""
    forces_lo_eV_per_A: float | None = None
    """Max per-atom force σ at and above which a frame is a candidate, eV/Å."""
    forces_hi_eV_per_A: float | None = None
    """Max per-atom force σ at and above which a frame has failed, eV/Å."""

    def __post_init__(self):
        pairs = {"energy_per_atom": (self.energy_per_atom_lo_eV, self.energy_per_atom_hi_eV),
                 "forces": (self.forces_lo_eV_per_A, self.forces_hi_eV_per_A)}
        for name, (lo, hi) in pairs.items():
            if lo is not None and hi is not None and hi < lo:
                raise ConfigError(f"levels.{name}", f"hi ({hi}) must not be below lo ({lo})")

    @property
    def needs_forces(self) -> bool:
        """Whether a force level is set (member forces must then be computed)."""
        return self.forces_lo_eV_per_A is not None or self.forces_hi_eV_per_A is not None

    def classify(self, energy_per_atom: float | None, forces: float | None = None) -> str:
        """``trusted``, ``candidate`` or ``failed`` for σ_E/atom (eV) and max σ_F (eV/Å)."""
        level = TRUSTED
        pairs = [(energy_per_atom, self.energy_per_atom_lo_eV, self.energy_per_atom_hi_eV),
                 (forces, self.forces_lo_eV_per_A, self.forces_hi_eV_per_A)]
        for value, lo, hi in pairs:
            if value is None:
                continue
            if hi is not None and value >= hi:
                return FAILED
            if lo is not None and value >= lo:
                level = CANDIDATE
        return level
