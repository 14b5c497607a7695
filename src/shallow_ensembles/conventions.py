"""Every result and array key of the project, with its shape, unit and meaning.

Symbols: ``N`` atoms, ``M`` members, ``S`` structures.
Every uncertainty is a **standard deviation** (never a variance) of the calibrated ensemble,
computed with ``ddof = DDOF`` over the M members. Energies are totals unless the key says per atom.
Standard ASE properties are ensemble means. Ensembles put the member axis first.
"""

import numpy as np

DDOF = 1  # degrees of freedom removed in every ensemble standard deviation

# --- ASE calculator results -------------------------------------------------------------------
ENERGY = "energy"  # () | eV | mean total energy
FREE_ENERGY = "free_energy"  # () | eV | equal to ENERGY (asked for by optimizers and NH/MTK)
ENERGIES = "energies"  # (N,) | eV | mean per-atom energies
FORCES = "forces"  # (N, 3) | eV/Å | forces of the mean energy
STRESS = "stress"  # (6,) Voigt xx yy zz yz xz xy | eV/Å³ | stress of the mean energy (periodic)
ENERGY_UNCERTAINTY = "energy_uncertainty"  # () | eV | σ of the total energy, ddof=1
ENERGY_ENSEMBLE = "energy_ensemble"  # (M,) | eV | member total energies (calibrated)
FORCES_UNCERTAINTY = "forces_uncertainty"  # (N, 3) | eV/Å | σ per Cartesian component, ddof=1
FORCES_ENSEMBLE = "forces_ensemble"  # (M, N, 3) | eV/Å | member forces (calibrated)
STRESS_UNCERTAINTY = "stress_uncertainty"  # (6,) | eV/Å³ | σ per Voigt component, ddof=1
STRESS_ENSEMBLE = "stress_ensemble"  # (M, 6) | eV/Å³ | member stresses (calibrated)

# --- derived quantities used by monitors and triggers -----------------------------------------
ENERGY_UNCERTAINTY_PER_ATOM = "energy_uncertainty_per_atom"  # () | eV/atom | σ_E / N
FORCES_UNCERTAINTY_NORM = "forces_uncertainty_norm"  # (N,) | eV/Å | sqrt(Σ_xyz σ²), ddof=1
MAX_FORCES_UNCERTAINTY = "max_forces_uncertainty"  # () | eV/Å | max over atoms of the above

# --- reference labels inside Atoms after validation (data.io) ---------------------------------
REF_ENERGY = "REF_energy"  # atoms.info, () | eV
REF_FORCES = "REF_forces"  # atoms.arrays, (N, 3) | eV/Å
REF_STRESS = "REF_stress"  # atoms.info, (6,) Voigt | eV/Å³

# --- dataset predictions (calibration.predict_dataset: structures and atoms concatenated) ----
# Raw or calibrated as asked; the calibration is always the model's (calibrate_outputs).
# ENERGY_ENSEMBLE (S, M), ENERGY (S,) and FORCES (N, 3) keep the keys above.
ENERGY_SIGMA = "energy_sigma"  # (S,) | eV | σ of the total energy, ddof=1
FORCES_SIGMA = "forces_sigma"  # (N, 3) | eV/Å | σ per Cartesian component, ddof=1
DATASET_REF_ENERGY = "ref_energy"  # (S,) | eV | reference total energies
DATASET_REF_FORCES = "ref_forces"  # (N, 3) | eV/Å | reference forces
N_ATOMS = "n_atoms"  # (S,) | -- | atoms per structure
NUMBERS = "numbers"  # (N,) | -- | atomic numbers

ENSEMBLE_PROPERTIES = (
    ENERGY_UNCERTAINTY,
    ENERGY_ENSEMBLE,
    FORCES_UNCERTAINTY,
    FORCES_ENSEMBLE,
    STRESS_UNCERTAINTY,
    STRESS_ENSEMBLE,
)
MEMBER_FORCE_PROPERTIES = (
    FORCES_UNCERTAINTY,
    FORCES_ENSEMBLE,
    STRESS_UNCERTAINTY,
    STRESS_ENSEMBLE,
)
"""Results that need the member forces (or member stresses): computed only on request."""


def forces_uncertainty_norm(forces_uncertainty) -> np.ndarray:
    """``FORCES_UNCERTAINTY_NORM``: ‖σ(F_i)‖ = sqrt(Σ_xyz σ²) per atom, (N,) eV/Å, of the σ per
    Cartesian component (N, 3) eV/Å. The one definition used by every monitor and trigger."""
    return np.sqrt(np.square(np.asarray(forces_uncertainty, dtype=float)).sum(-1))


def max_forces_uncertainty(forces_uncertainty, n_atoms) -> np.ndarray:
    """``MAX_FORCES_UNCERTAINTY`` of each structure, (S,) eV/Å: the largest
    :func:`forces_uncertainty_norm` over its atoms, of σ (N, 3) concatenated over structures of
    ``n_atoms`` (S,) atoms."""
    norms = forces_uncertainty_norm(forces_uncertainty)
    return np.array([part.max() for part in np.split(norms, np.cumsum(n_atoms)[:-1])])
