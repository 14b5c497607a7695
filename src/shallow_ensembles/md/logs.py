"""Per-step outputs of an MD run: the σ table, DeePMD's ``model_devi.out``, the trajectory.

Each writer is a *sink* of :class:`~shallow_ensembles.md.monitor.UncertaintyMonitor`: it is
called as ``sink(atoms, record)`` after the frame's σ were measured and copied into
``atoms.info``/``atoms.arrays``, and before any action runs, so the frame that stops a run is
still written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import ase.io
import numpy as np
from ase import Atoms

from .. import conventions as K

if TYPE_CHECKING:
    from .monitor import StepRecord

MODEL_DEVI_COLUMNS = ("step", "max_devi_v", "min_devi_v", "avg_devi_v", "max_devi_f",
                      "min_devi_f", "avg_devi_f", "devi_e")
# LAMMPS' pair deepmd and deepmd.infer.model_devi.write_model_devi_out both produce this header.
MODEL_DEVI_HEADER = "# " + f"{'step':>10}" + "".join(f"{c:>19}" for c in MODEL_DEVI_COLUMNS[1:])


def ddof0_factor(n_members: int) -> float:
    """sqrt((M − 1)/M): converts a ddof=1 standard deviation into DeePMD's ddof=0 one."""
    return math.sqrt((n_members - 1) / n_members) if n_members > 1 else 0.0


def model_devi_row(step: int, energy_ensemble: np.ndarray, forces_ensemble: np.ndarray,
                   stress_ensemble: np.ndarray | None = None,
                   volume_A3: float | None = None) -> np.ndarray:
    """One row of DeePMD's ``model_devi.out`` from member energies, forces and stresses.

    DeePMD uses population standard deviations (ddof=0); this project's σ use ddof=1, so each
    is converted as σ₀ = σ₁·sqrt((M−1)/M).

    ==============  ==========================================================  ===========
    column          definition (σ₀ over members)                                unit
    ==============  ==========================================================  ===========
    max/min_devi_v  max/min over the 9 components of σ₀(W_m / N)                eV
    avg_devi_v      ‖σ₀(W_m / N)‖ / 3 (Frobenius norm)                          eV
    max/min/avg_f   max/min/mean over atoms of ‖σ₀(F_i)‖ = sqrt(Σ_xyz σ₀²)       eV/Å
    devi_e          σ₀(E_m / N)                                                 eV/atom
    ==============  ==========================================================  ===========

    with the member virials W_m = −V · stress_m (3×3); the virial columns are 0 when
    ``stress_ensemble`` is None (non-periodic systems).

    Parameters
    ----------
    step : MD step
    energy_ensemble : shape (M,), eV, member total energies
    forces_ensemble : shape (M, N, 3), eV/Å, member forces
    stress_ensemble : shape (M, 6) Voigt xx yy zz yz xz xy, eV/Å³, or None
    volume_A3 : cell volume, Å³ (needed with ``stress_ensemble``)

    Returns
    -------
    np.ndarray, shape (8,): step and the seven deviations in ``MODEL_DEVI_COLUMNS`` order
    """
    energy_ensemble = np.asarray(energy_ensemble, dtype=float)
    forces_ensemble = np.asarray(forces_ensemble, dtype=float)
    n_members, n_atoms = forces_ensemble.shape[:2]
    factor = ddof0_factor(n_members)
    sigma_f = forces_ensemble.std(axis=0, ddof=K.DDOF)  # (N, 3), ddof=1
    per_atom = factor * K.forces_uncertainty_norm(sigma_f)
    devi_e = factor * (energy_ensemble / n_atoms).std(ddof=K.DDOF)
    devi_v = np.zeros(3)
    if stress_ensemble is not None:
        s = np.asarray(stress_ensemble, dtype=float)
        full = s[:, [0, 5, 4, 5, 1, 3, 4, 3, 2]]  # (M, 9), row-major 3×3 from Voigt
        virial = -volume_A3 * full / n_atoms
        sigma_v = factor * virial.std(axis=0, ddof=K.DDOF)
        devi_v = np.array([sigma_v.max(), sigma_v.min(), np.linalg.norm(sigma_v) / 3.0])
    return np.concatenate([[step], devi_v, [per_atom.max(), per_atom.min(), per_atom.mean()],
                           [devi_e]])


class _FileSink:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._handle = None

    def _open(self):
        if self._handle is None:
            self._handle = open(self.path, "w")  # noqa: SIM115 - kept open for the run
            self._start()
        return self._handle

    def _start(self) -> None:
        pass

    def close(self) -> None:
        """Close the file (it is opened at the first write)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class TableLog(_FileSink):
    """The per-step table ``md.log``: one whitespace-separated line every ``interval`` steps.

    Columns: step, time_fs, T_K (instantaneous), E_pot_eV (mean), E_tot_eV (E_pot + kinetic),
    sigma_E_eV (σ of the total energy), sigma_E_per_atom_eV, max_sigma_F_eV_per_A (max over
    atoms of ‖σ(F_i)‖; nan on steps without member forces), level; then max_rel_sigma_F when the
    relative form is on and T_target_K under a thermostat. All σ: ddof=1, calibrated.
    """

    def __init__(self, path: str | Path, interval: int = 1, relative: bool = False,
                 target_temperature: bool = False):
        super().__init__(path)
        self.interval, self.relative, self.target = interval, relative, target_temperature

    def _start(self) -> None:
        names = ["step", "time_fs", "T_K", "E_pot_eV", "E_tot_eV", "sigma_E_eV",
                 "sigma_E_per_atom_eV", "max_sigma_F_eV_per_A", "level"]
        if self.relative:
            names.append("max_rel_sigma_F")
        if self.target:
            names.append("T_target_K")
        self._handle.write("# " + " ".join(names) + "\n")

    def __call__(self, atoms: Atoms, record: StepRecord) -> None:
        """Write the line of ``record`` when its step is a multiple of ``interval``."""
        if record.step % self.interval:
            return
        handle = self._open()
        parts = [f"{record.step:d}", f"{record.time_fs:.4f}", f"{record.temperature_K:.3f}",
                 f"{record.energy_eV:.8f}", f"{record.total_energy_eV:.8f}",
                 f"{record.energy_uncertainty_eV:.6e}",
                 f"{record.energy_uncertainty_per_atom_eV:.6e}",
                 _fmt(record.max_forces_uncertainty_eV_per_A), record.level]
        if self.relative:
            parts.append(_fmt(record.max_relative_forces_uncertainty))
        if self.target:
            parts.append(_fmt(record.target_temperature_K, "{:.3f}"))
        handle.write(" ".join(parts) + "\n")
        handle.flush()


class ModelDeviLog(_FileSink):
    """DeePMD's ``model_devi.out``, written on steps with member forces (see
    :func:`model_devi_row`)."""

    def __init__(self, path: str | Path, interval: int = 1):
        super().__init__(path)
        self.interval = interval

    def _start(self) -> None:
        self._handle.write(MODEL_DEVI_HEADER + "\n")

    def __call__(self, atoms: Atoms, record: StepRecord) -> None:
        """Append the row of this step when member forces were computed."""
        if record.step % self.interval or K.FORCES_ENSEMBLE not in atoms.calc.results:
            return
        res = atoms.calc.results
        stress = res.get(K.STRESS_ENSEMBLE) if atoms.pbc.all() else None
        row = model_devi_row(record.step, res[K.ENERGY_ENSEMBLE], res[K.FORCES_ENSEMBLE],
                             stress, atoms.get_volume() if stress is not None else None)
        handle = self._open()
        # DeePMD's np.savetxt formats: "%12d" then "%19.6e"
        handle.write(f"{int(row[0]):12d}" + "".join(f"{v:19.6e}" for v in row[1:]) + "\n")
        handle.flush()


class TrajectoryLog(_FileSink):
    """``trajectory.extxyz`` (mean energy and forces, σ and ``energy_ensemble`` per frame) and
    ``committee_energies.dat`` (frames × M member energies, eV), every ``interval`` steps."""

    def __init__(self, path: str | Path, energies_path: str | Path, interval: int,
                 member_forces: bool = False):
        super().__init__(path)
        self.energies_path = Path(energies_path)
        self.interval = interval
        self.member_forces = member_forces
        self._energies = None

    def __call__(self, atoms: Atoms, record: StepRecord) -> None:
        """Append the frame and its member energies when the step is due."""
        if record.step % self.interval:
            return
        handle = self._open()
        # (N, 3M) per frame dominates the file size: left out unless asked for
        dropped = None if self.member_forces else atoms.arrays.pop(K.FORCES_ENSEMBLE, None)
        try:
            ase.io.write(handle, atoms, format="extxyz")
        finally:
            if dropped is not None:
                atoms.arrays[K.FORCES_ENSEMBLE] = dropped
        handle.flush()
        ensemble = np.asarray(atoms.calc.results[K.ENERGY_ENSEMBLE], dtype=float)
        if self._energies is None:
            self._energies = open(self.energies_path, "w")  # noqa: SIM115 - kept open
            self._energies.write(
                f"# member total energies E_m (eV, calibrated), M = {ensemble.size} columns; "
                f"row k is frame k of {self.path.name} (MD step {self.interval}·k)\n")
        self._energies.write(" ".join(f"{e:.10f}" for e in ensemble) + "\n")
        self._energies.flush()

    def close(self) -> None:
        """Close both files."""
        super().close()
        if self._energies is not None:
            self._energies.close()
            self._energies = None


def _fmt(value: float | None, spec: str = "{:.6e}") -> str:
    return "nan" if value is None else spec.format(value)
