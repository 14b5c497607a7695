"""What the monitor measures at one MD step, and the frame's trust level.

Quantities (standard deviations with ddof=1 of the calibrated ensemble, see
``shallow_ensembles.conventions``):

===================================  =======  ==================================================
quantity                             unit     definition
===================================  =======  ==================================================
energy_uncertainty_per_atom          eV/atom  σ_E / N, every step (free with the forward pass)
max_forces_uncertainty               eV/Å     max_i ‖σ(F_i)‖, ‖σ(F_i)‖ = sqrt(Σ_xyz σ²) (DeePMD's
                                              max_devi_f definition, but ddof=1), every
                                              force_interval steps (needs member forces)
max_relative_forces_uncertainty      --       max_i ‖σ(F_i)‖ / (‖F̄_i‖ + ε), with the force σ
===================================  =======  ==================================================

Levels follow DP-GEN: trusted < lo ≤ candidate < hi ≤ failed; a frame's level is the worst over
its quantities (:class:`~shallow_ensembles.thresholds.TrustLevels`). On a step without member
forces the level comes from σ_E alone: such a *partial* step (``complete`` false) can prove
that a level was reached, never that it was not.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from ase import Atoms

from .. import conventions as K
from ..calculator import attach_uncertainty
from ..thresholds import LEVEL_ORDER, TrustLevels
from .config import MonitorConfig

# Keys written into atoms.info at every measured step, besides attach_uncertainty's.
STEP_KEY = "md_step"  # () | MD step of the frame
TIME_KEY = "md_time_fs"  # () | fs
LEVEL_KEY = "trust_level"  # () | trusted, candidate or failed
RELATIVE_KEY = "max_relative_forces_uncertainty"  # () | dimensionless
TEMPERATURE_KEY = "temperature_K"  # () | K, instantaneous kinetic temperature

STALE_INFO = (K.MAX_FORCES_UNCERTAINTY, K.STRESS_UNCERTAINTY, K.STRESS_ENSEMBLE, RELATIVE_KEY)
STALE_ARRAYS = (K.FORCES_UNCERTAINTY, K.FORCES_UNCERTAINTY_NORM, K.FORCES_ENSEMBLE)
"""σ entries of an earlier frame removed before each measurement."""


@dataclass(frozen=True)
class StepRecord:
    """What the monitor measured at one step (σ: standard deviations, ddof=1, calibrated)."""

    step: int
    time_fs: float
    temperature_K: float
    """Instantaneous kinetic temperature, K."""
    target_temperature_K: float | None
    """Thermostat target at this step, K (None without a thermostat)."""
    energy_eV: float
    """Mean potential energy, eV."""
    total_energy_eV: float
    """Mean potential plus kinetic energy, eV."""
    energy_uncertainty_eV: float
    energy_uncertainty_per_atom_eV: float
    max_forces_uncertainty_eV_per_A: float | None
    """None on steps without member forces."""
    max_relative_forces_uncertainty: float | None
    level: str
    complete: bool
    """Whether every quantity with a level was measured at this step."""

    def describe(self) -> str:
        """The measured σ in one line (for logs)."""
        parts = [f"σ_E/atom = {self.energy_uncertainty_per_atom_eV:.4g} eV"]
        if self.max_forces_uncertainty_eV_per_A is not None:
            parts.append(f"max σ_F = {self.max_forces_uncertainty_eV_per_A:.4g} eV/Å")
        if self.max_relative_forces_uncertainty is not None:
            parts.append(f"max relative σ_F = {self.max_relative_forces_uncertainty:.4g}")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """Plain dictionary (for summaries)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def measure(atoms: Atoms, step: int, time_fs: float, levels: TrustLevels,
            settings: MonitorConfig, target_temperature_K: float | None = None) -> StepRecord:
    """σ of the current frame of ``atoms``, copied into its ``info``/``arrays``; its record.

    Member forces (the force σ) are computed on steps that are multiples of
    ``settings.force_interval``; the level also uses the relative force σ when its levels are set.
    """
    force_step = settings.force_interval > 0 and step % settings.force_interval == 0
    for key in STALE_INFO:
        atoms.info.pop(key, None)
    for key in STALE_ARRAYS:
        if key in atoms.arrays:
            del atoms.arrays[key]
    attach_uncertainty(atoms, forces=force_step)
    n_atoms = max(len(atoms), 1)
    sigma_e = float(atoms.info[K.ENERGY_UNCERTAINTY])
    max_f = relative = None
    if force_step:
        norm = np.asarray(atoms.arrays[K.FORCES_UNCERTAINTY_NORM])
        max_f = float(norm.max()) if norm.size else 0.0
        eps = settings.relative_epsilon_eV_per_A
        if eps is not None:
            mean_norm = np.linalg.norm(atoms.get_forces(), axis=1)
            relative = float((norm / (mean_norm + eps)).max()) if norm.size else 0.0
            atoms.info[RELATIVE_KEY] = relative
    level = levels.classify(sigma_e / n_atoms, max_f)
    relative_levels = settings.relative_levels
    if relative_levels is not None and relative is not None:
        level = max(level, relative_levels.classify(None, relative), key=LEVEL_ORDER.get)
    epot = float(atoms.get_potential_energy())
    ekin = float(atoms.get_kinetic_energy())
    temperature = float(atoms.get_temperature()) if len(atoms) else 0.0
    atoms.info.update({STEP_KEY: step, TIME_KEY: time_fs, LEVEL_KEY: level,
                       TEMPERATURE_KEY: temperature})
    needs_forces = levels.needs_forces or relative_levels is not None
    return StepRecord(
        step=step, time_fs=time_fs, temperature_K=temperature,
        target_temperature_K=target_temperature_K, energy_eV=epot, total_energy_eV=epot + ekin,
        energy_uncertainty_eV=sigma_e, energy_uncertainty_per_atom_eV=sigma_e / n_atoms,
        max_forces_uncertainty_eV_per_A=max_f, max_relative_forces_uncertainty=relative,
        level=level, complete=force_step or not needs_forces,
    )
