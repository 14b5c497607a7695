"""A guard against runs that have gone unphysical: NaN/inf, huge forces, close contacts."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from ase import Atoms

from .. import conventions as K
from .config import GuardConfig


class Violation(NamedTuple):
    """What the guard found: ``quantity`` has ``value``, beyond ``bound``."""

    quantity: str
    value: float
    bound: float


class Guard:
    """Checks a frame against :class:`GuardConfig` (used by the uncertainty monitor).

    Checks, in order: every position, the energy, σ_E and every force component are finite
    (``non_finite_*``: the number of bad entries, bound 1); max_i ‖F̄_i‖ ≤ ``max_force_eV_per_A``;
    the smallest interatomic distance (minimum image) ≥ ``min_distance_A``.
    """

    def __init__(self, config: GuardConfig):
        self.config = config

    def check(self, atoms: Atoms) -> Violation | None:
        """The first violation of ``atoms`` (with a calculator attached), or None."""
        bad = int((~np.isfinite(atoms.positions)).sum())
        if bad:
            return Violation("non_finite_positions", float(bad), 1.0)
        calc = atoms.calc
        energy = atoms.get_potential_energy()
        sigma = calc.get_property(K.ENERGY_UNCERTAINTY, atoms)
        bad = int((~np.isfinite([energy, sigma])).sum())
        if bad:
            return Violation("non_finite_energy", float(bad), 1.0)
        forces = atoms.get_forces()
        bad = int((~np.isfinite(forces)).sum())
        if bad:
            return Violation("non_finite_forces", float(bad), 1.0)
        bound = self.config.max_force_eV_per_A
        if bound is not None and len(atoms):
            largest = float(np.linalg.norm(forces, axis=1).max())
            if largest > bound:
                return Violation("max_force_eV_per_A", largest, bound)
        bound = self.config.min_distance_A
        if bound is not None:
            shortest = min_distance(atoms, bound)
            if shortest < bound:
                return Violation("min_distance_A", shortest, bound)
        return None


def min_distance(atoms: Atoms, cutoff_A: float) -> float:
    """Smallest interatomic distance (minimum image), Å; ``inf`` when none is below ``cutoff_A``.

    Uses vesin's cell list, so the cost is linear in the number of atoms.
    """
    import vesin

    if len(atoms) < 2:
        return float("inf")
    periodic = atoms.pbc
    box = atoms.cell.array if periodic.any() else np.zeros((3, 3))
    nl = vesin.NeighborList(cutoff=float(cutoff_A), full_list=False)
    (distances,) = nl.compute(atoms.positions, box, periodic if periodic.any() else False,
                              quantities="d")
    return float(distances.min()) if len(distances) else float("inf")
