"""Per-element composition baseline fitted by least squares."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fit_composition_baseline(
    numbers: Sequence[np.ndarray], energies: Sequence[float], species: Sequence[int]
) -> np.ndarray:
    """Per-element energies μ_Z minimising Σ_k (E_k − Σ_Z n_kZ μ_Z)².

    Parameters
    ----------
    numbers : S arrays of atomic numbers, shape (N_k,)
    energies : (S,) eV
    species : the elements, in the order of the returned vector

    Returns
    -------
    np.ndarray, shape (len(species),), eV/atom. With collinear compositions (every frame of the
    same stoichiometry) the minimum-norm solution is returned, which still reproduces the mean.
    """
    index = {int(z): k for k, z in enumerate(species)}
    counts = np.zeros((len(numbers), len(species)))
    for row, nums in enumerate(numbers):
        for z in np.asarray(nums):
            counts[row, index[int(z)]] += 1
    mu, *_ = np.linalg.lstsq(counts, np.asarray(energies, dtype=float), rcond=None)
    return mu
