"""Calibration of the ensemble spread on validation data, and dataset predictions.

α_E and α_F rescale members about their mean (E_m → Ē + α (E_m − Ē)); they are fitted
separately for energies (one residual per structure) and forces (one per Cartesian component)
and stored in the model (``alpha_energy``, ``alpha_forces`` buffers, saved in the model file).

- ``nll`` (default): the NLL-optimal constant α = sqrt(mean r²/σ²).
- ``mae``: α = mean(|r|/σ) / sqrt(2/π), which matches mean |z| of a unit Gaussian and is less
  sensitive to a few outliers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from . import conventions as K
from .data.batch import Graph, collate
from .errors import ConfigError
from .metrics import nll_scale
from .model import ShallowEnsemble


def predict_dataset(model: ShallowEnsemble, graphs: Sequence[Graph], member_forces: bool = True,
                    batch_size: int = 4, calibrated: bool = False) -> dict[str, np.ndarray]:
    """Predictions and labels over ``graphs`` as float64 numpy arrays.

    Returns the dataset keys of ``conventions.py``: ``energy_ensemble`` (S, M) eV, ``energy``
    (S,), ``energy_sigma`` (S,) (ddof=1), ``ref_energy`` (S,), ``n_atoms`` (S,), ``numbers`` (N,),
    ``forces`` (N, 3) eV/Å, ``ref_forces`` (N, 3) and, with ``member_forces``, ``forces_sigma``
    (N, 3) (ddof=1).
    With ``calibrated`` the ensembles and σ are the model's calibrated ones
    (:meth:`ShallowEnsemble.calibrate_outputs`: α_E, α_F and per-element factors).
    """
    return predict_dataset_pair(model, graphs, member_forces, batch_size)[int(calibrated)]


def predict_dataset_pair(model: ShallowEnsemble, graphs: Sequence[Graph],
                         member_forces: bool = True, batch_size: int = 4
                         ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(raw, calibrated) :func:`predict_dataset` dictionaries from one pass over ``graphs``."""
    parts: tuple[dict[str, list], dict[str, list]] = ({}, {})
    for start in range(0, len(graphs), batch_size):
        batch = collate(graphs[start:start + batch_size], dtype=model.dtype)
        batch = batch.to(next(model.parameters()).device)
        raw = model.predict(batch, forces=not member_forces, member_forces=member_forces)
        for out, store in zip((raw, model.calibrate_outputs(raw, batch.numbers)), parts,
                              strict=True):
            for key, value in _dataset_row(out, batch, member_forces).items():
                store.setdefault(key, []).append(value.detach().cpu().double().numpy()
                                                 if value.is_floating_point()
                                                 else value.detach().cpu().numpy())
    raw, cal = ({k: np.concatenate(v) for k, v in p.items()} for p in parts)
    return raw, cal


def _dataset_row(out: dict, batch, member_forces: bool) -> dict:
    """The :func:`predict_dataset` keys of one batch (torch tensors)."""
    row = {
        K.ENERGY_ENSEMBLE: out[K.ENERGY_ENSEMBLE],
        K.ENERGY: out[K.ENERGY],
        K.ENERGY_SIGMA: out[K.ENERGY_UNCERTAINTY],
        K.N_ATOMS: batch.n_atoms,
        K.NUMBERS: batch.numbers,
    }
    if batch.energy is not None:
        row[K.DATASET_REF_ENERGY] = batch.energy
    if batch.forces is not None:
        row[K.DATASET_REF_FORCES] = batch.forces
    if member_forces:
        ens = out[K.FORCES_ENSEMBLE]
        row[K.FORCES] = ens.mean(0)
        row[K.FORCES_SIGMA] = ens.std(0, correction=K.DDOF)
    else:
        row[K.FORCES] = out[K.FORCES]
    return row


def scale_factor(residual: np.ndarray, sigma: np.ndarray, method: str = "nll") -> float:
    """α for residuals and σ (flat arrays of one quantity); see the module docstring."""
    if method == "nll":
        return nll_scale(residual, sigma)
    residual, sigma = np.ravel(residual), np.maximum(np.ravel(sigma), 1e-300)
    if method == "mae":
        return float(np.mean(np.abs(residual) / sigma) / math.sqrt(2 / math.pi))
    raise ValueError(f"calibration method must be 'nll' or 'mae', got {method!r}")


def calibrate(model: ShallowEnsemble, graphs: Sequence[Graph], method: str = "nll",
              forces: bool = True, per_element: bool = False) -> dict[str, float]:
    """Fit α_E (and α_F) on ``graphs`` from the raw ensemble and store them in ``model``.

    ``per_element`` also fits a factor a_Z per element on the force components of its atoms
    (α_F · a_Z is then the force factor of element Z; a_Z = 1 for elements absent from the data).
    """
    if model.n_members < 2:
        raise ConfigError("model.n_members", f"calibration needs a spread, but the model has "
                          f"{model.n_members} member (σ = 0); train with n_members >= 2")
    pred = predict_dataset(model, graphs, member_forces=forces)
    alpha_e = scale_factor(pred["ref_energy"] - pred["energy"], pred["energy_sigma"], method)
    result = {"alpha_energy": alpha_e}
    with torch.no_grad():
        model.alpha_energy.fill_(alpha_e)
        if forces:
            alpha_f = scale_factor(pred["ref_forces"] - pred["forces"], pred["forces_sigma"],
                                   method)
            model.alpha_forces.fill_(alpha_f)
            result["alpha_forces"] = alpha_f
            model.alpha_forces_species.fill_(1.0)
            if per_element:
                for k, z in enumerate(model.species):
                    rows = pred["numbers"] == z
                    if rows.any():
                        a_z = scale_factor(pred["ref_forces"][rows] - pred["forces"][rows],
                                           pred["forces_sigma"][rows], method)
                        model.alpha_forces_species[k] = a_z / alpha_f
                        result[f"alpha_forces_Z{z}"] = a_z
    return result
