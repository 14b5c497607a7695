"""ASE calculator serving a shallow ensemble with its uncertainties.

Results follow ``conventions.py``: standard properties are ensemble means, every uncertainty is a
standard deviation (ddof=1) of the calibrated ensemble, ensembles put the member axis first.
Calibration stored in the model is applied by the model
(:meth:`~shallow_ensembles.model.ShallowEnsemble.calibrate_outputs`): members are rescaled about
the mean, E_m → Ē + α_E (E_m − Ē), F_m → F̄ + α_F a_Z (F_m − F̄), so σ scales by α.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from . import conventions as K
from .data.batch import Batch, Graph, collate
from .data.io import check_elements
from .errors import DataError
from .model import ShallowEnsemble, load_model


class ShallowEnsembleCalculator(Calculator):
    """Energy, forces, stress and their ensembles from a :class:`ShallowEnsemble`.

    Parameters
    ----------
    model : a model or the path of a model file
    device : torch device for evaluation
    always_member_forces : compute member forces (and member stresses) on every call, not only
        when a force-uncertainty property is asked for
    dtype : evaluate in ``"float32"`` or ``"float64"``; default: the model's

    Cost: every call gives the energy ensemble, σ_E and the mean forces (and stress for 3-D
    periodic cells) in one forward and one backward pass. Member forces are computed only when
    ``forces_uncertainty``, ``forces_ensemble``, ``stress_uncertainty`` or ``stress_ensemble``
    is requested (or ``always_member_forces``); nothing is recomputed while positions, cell and
    numbers are unchanged.
    """

    implemented_properties = [
        K.ENERGY, K.FREE_ENERGY, K.ENERGIES, K.FORCES, K.STRESS, *K.ENSEMBLE_PROPERTIES,
    ]

    def __init__(self, model: ShallowEnsemble | str | Path, device: str = "cpu",
                 always_member_forces: bool = False, dtype: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(model, str | Path):
            model = load_model(model, device=device)
        self.model = model.to(device).eval()
        if self.model.n_members < 2:
            warnings.warn(f"the model has {self.model.n_members} member: every uncertainty is 0 "
                          "(no level or threshold can ever fire); use a model with "
                          "n_members >= 2", UserWarning, stacklevel=2)
        if dtype is not None:
            self.model = self.model.to(getattr(torch, dtype))
        self.device = device
        self.always_member_forces = always_member_forces
        self.n_evaluations = 0
        """Model evaluations for energy and mean forces (one per new geometry)."""
        self.n_member_evaluations = 0
        """Member-force evaluations (one per new geometry where they were asked for)."""
        self._batch: Batch | None = None
        self.raw_member_outputs: dict[str, torch.Tensor] = {}
        """Uncalibrated member forces (M, N, 3) (and stresses (M, 1, 6)) of the last geometry
        where they were computed; :meth:`ShallowEnsemble.calibrate_outputs` turns them into
        the results."""

    def calculate(self, atoms: Atoms | None = None, properties=(K.ENERGY,),
                  system_changes=all_changes):
        """Fill ``self.results`` with what ``properties`` needs and every cheap result."""
        super().calculate(atoms, properties, system_changes)
        if system_changes:
            self.results = {}
        atoms = self.atoms
        if K.ENERGY not in self.results:
            self._validate(atoms)
            self._batch = self._make_batch(atoms)
            self._compute_base(atoms)
        wants_members = self.always_member_forces or any(
            p in K.MEMBER_FORCE_PROPERTIES for p in properties)
        if wants_members and K.FORCES_ENSEMBLE not in self.results:
            self._compute_members(atoms)

    # --- internals ---------------------------------------------------------------------------
    def _validate(self, atoms: Atoms) -> None:
        check_elements(atoms.numbers, self.model.species)
        if not np.all(np.isfinite(atoms.positions)):
            raise DataError("positions contain NaN or inf", key="positions")
        if atoms.pbc.any() and abs(atoms.cell.volume) < 1e-12 and atoms.pbc.all():
            raise DataError("periodic structure with a zero-volume cell", key="cell")

    def _make_batch(self, atoms: Atoms) -> Batch:
        graph = Graph.from_atoms(Atoms(numbers=atoms.numbers, positions=atoms.positions,
                                       cell=atoms.cell, pbc=atoms.pbc), self.model.cutoff)
        return collate([graph], dtype=self.model.dtype).to(self.device)

    def _compute_base(self, atoms: Atoms) -> None:
        periodic = bool(atoms.pbc.all())
        out = self.model.predict(self._batch, forces=True, stress=periodic, calibrated=True)
        self.n_evaluations += 1

        def np_(key):
            return out[key].detach().cpu().double().numpy()

        energy = float(np_("energy")[0])
        self.results.update({
            K.ENERGY: energy,
            K.FREE_ENERGY: energy,
            K.ENERGIES: np_("energies"),
            K.FORCES: np_("forces"),
            K.ENERGY_ENSEMBLE: np_("energy_ensemble")[0],
            K.ENERGY_UNCERTAINTY: float(np_("energy_uncertainty")[0]),
        })
        if periodic:
            self.results[K.STRESS] = np_("stress")[0]

    def _compute_members(self, atoms: Atoms) -> None:
        periodic = bool(atoms.pbc.all())
        self.raw_member_outputs = self.model.member_forces(self._batch, stress=periodic)
        self.n_member_evaluations += 1
        out = self.model.calibrate_outputs(self.raw_member_outputs, self._batch.numbers)
        ens = out["forces_ensemble"].detach().cpu().double().numpy()
        self.results[K.FORCES_ENSEMBLE] = ens
        self.results[K.FORCES_UNCERTAINTY] = _std(ens)
        if periodic:
            stress = out["stress_ensemble"].detach().cpu().double().numpy()[:, 0]
            self.results[K.STRESS_ENSEMBLE] = stress
            self.results[K.STRESS_UNCERTAINTY] = _std(stress)


def _std(ensemble: np.ndarray) -> np.ndarray:
    if ensemble.shape[0] <= K.DDOF:
        return np.zeros(ensemble.shape[1:])
    return ensemble.std(axis=0, ddof=K.DDOF)


def attach_uncertainty(atoms: Atoms, forces: bool = True) -> Atoms:
    """Copy the calculator's uncertainty results into ``atoms.info`` and ``atoms.arrays``.

    ASE's extxyz and .traj writers drop custom results; after this call they are kept.
    ``info``: ``energy_uncertainty`` (eV), ``energy_uncertainty_per_atom`` (eV/atom),
    ``energy_ensemble`` (M,), and with forces ``max_forces_uncertainty`` (eV/Å), plus
    ``stress_uncertainty`` (6,) and ``stress_ensemble`` (M, 6) for periodic cells.
    ``arrays``: ``forces_uncertainty`` (N, 3), ``forces_uncertainty_norm`` (N,) =
    sqrt(Σ_xyz σ²), and ``forces_ensemble`` reshaped (M, N, 3) → (N, 3M) (column 3m + α).
    All σ are standard deviations with ddof=1 of the calibrated ensemble.

    Parameters
    ----------
    atoms : Atoms with a :class:`ShallowEnsembleCalculator` attached
    forces : also compute (if needed) and copy the force uncertainties
    """
    calc = atoms.calc
    if calc is None:
        raise ValueError("attach_uncertainty: the Atoms object has no calculator")
    calc.get_property(K.ENERGY_UNCERTAINTY, atoms)
    if forces:
        calc.get_property(K.FORCES_UNCERTAINTY, atoms)
    res = calc.results
    n = len(atoms)
    atoms.info[K.ENERGY_UNCERTAINTY] = res[K.ENERGY_UNCERTAINTY]
    atoms.info[K.ENERGY_UNCERTAINTY_PER_ATOM] = res[K.ENERGY_UNCERTAINTY] / n
    atoms.info[K.ENERGY_ENSEMBLE] = np.asarray(res[K.ENERGY_ENSEMBLE])
    for key in (K.STRESS_UNCERTAINTY, K.STRESS_ENSEMBLE):
        if key in res:
            atoms.info[key] = np.asarray(res[key])
    if not forces or K.FORCES_UNCERTAINTY not in res:  # drop stale values of an earlier frame
        for key in (K.FORCES_UNCERTAINTY, K.FORCES_UNCERTAINTY_NORM, K.FORCES_ENSEMBLE):
            atoms.arrays.pop(key, None)
        atoms.info.pop(K.MAX_FORCES_UNCERTAINTY, None)
    if K.FORCES_UNCERTAINTY in res and forces:
        sigma = res[K.FORCES_UNCERTAINTY]
        norm = K.forces_uncertainty_norm(sigma)
        atoms.arrays[K.FORCES_UNCERTAINTY] = sigma
        atoms.arrays[K.FORCES_UNCERTAINTY_NORM] = norm
        atoms.info[K.MAX_FORCES_UNCERTAINTY] = float(norm.max())
        ens = res[K.FORCES_ENSEMBLE]
        atoms.arrays[K.FORCES_ENSEMBLE] = ens.transpose(1, 0, 2).reshape(n, -1)
    return atoms
