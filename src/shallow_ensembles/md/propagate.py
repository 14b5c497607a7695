"""Member-wise propagation: a quantity derived from energies, evaluated member by member.

For a derived quantity Q = f(E⁽¹⁾, E⁽²⁾, ...) of the total energies of several structures (an
energy difference, a barrier, a vacancy formation energy), each member m gives its own
Q_m = f(E_m⁽¹⁾, E_m⁽²⁾, ...). Because the members share one backbone, their errors are correlated
across structures and partly cancel in Q; propagating member by member keeps that correlation,
which adding σ's in quadrature would lose (Kellner & Ceriotti 2024, "direct propagation").

The result is mean_m Q_m ± std_m Q_m (ddof=1). For a non-linear f the mean of Q_m differs from
f of the mean energies; both are available (``values`` holds every Q_m).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from .. import conventions as K
from ..errors import DataError


class Propagated(NamedTuple):
    """Mean, σ (ddof=1) and per-member values of a propagated quantity."""

    mean: float | np.ndarray
    """mean_m Q_m, shape (...) of one Q_m."""
    std: float | np.ndarray
    """Standard deviation over members of Q_m, ddof=1."""
    values: np.ndarray
    """Q_m, shape (M, ...)."""


def propagate_energies(fn: Callable[..., float], *ensembles) -> Propagated:
    """Apply ``fn`` member by member to member energies of several structures.

    Parameters
    ----------
    fn : ``fn(E_a, E_b, ...) → Q`` taking one member's energy of each structure (scalars, eV)
    *ensembles : one array per structure, shape (M,), eV (the same M for all)

    Returns
    -------
    Propagated(mean, std, values) with ``values`` of shape (M, ...).

    Examples
    --------
    >>> propagate_energies(lambda a, b: a - b, [1.0, 1.2, 0.9], [0.5, 0.6, 0.4]).values
    array([0.5, 0.6, 0.5])
    """
    if not ensembles:
        raise DataError("propagate needs at least one structure or energy ensemble")
    arrays = [np.atleast_1d(np.asarray(e, dtype=float)) for e in ensembles]
    n_members = arrays[0].shape[0]
    for i, array in enumerate(arrays):
        if array.ndim != 1 or array.shape[0] != n_members:
            raise DataError(f"expected member energies of shape ({n_members},), got "
                            f"{array.shape}", frame=i, key=K.ENERGY_ENSEMBLE)
    values = np.asarray([fn(*(array[m] for array in arrays)) for m in range(n_members)],
                        dtype=float)
    std = values.std(axis=0, ddof=K.DDOF) if n_members > K.DDOF else np.zeros(values.shape[1:])
    mean = values.mean(axis=0)
    if values.ndim == 1:
        return Propagated(float(mean), float(std), values)
    return Propagated(mean, std, values)


def energy_ensemble(structure, calculator: BaseCalculator | None = None) -> np.ndarray:
    """Member total energies, shape (M,), eV, of an Atoms (or an array passed through).

    The calculator (or the structure's own) must provide ``energy_ensemble``; the structure's
    ``calc`` is left unchanged.
    """
    if not isinstance(structure, Atoms):
        return np.atleast_1d(np.asarray(structure, dtype=float))
    calc = calculator if calculator is not None else structure.calc
    if calc is None:
        raise DataError("the structure has no calculator; pass calculator=...",
                        key=K.ENERGY_ENSEMBLE)
    return np.atleast_1d(np.asarray(calc.get_property(K.ENERGY_ENSEMBLE, structure),
                                    dtype=float)).copy()


def propagate(fn: Callable[..., float], *structures,
              calculator: BaseCalculator | None = None) -> Propagated:
    """Evaluate a quantity derived from several structures' energies member by member.

    Parameters
    ----------
    fn : ``fn(E_a, E_b, ...) → Q`` on one member's total energies (eV) of the structures, in
        the order given
    *structures : Atoms (evaluated with ``calculator`` or their own calculator) or member
        energy arrays of shape (M,), eV
    calculator : an ASE calculator providing ``energy_ensemble`` (e.g.
        :class:`~shallow_ensembles.calculator.ShallowEnsembleCalculator`)

    Returns
    -------
    Propagated(mean, std, values): mean_m Q_m, std_m Q_m (ddof=1), Q_m of shape (M, ...).

    Examples
    --------
    Vacancy formation energy E_v = E(N−1) − (N−1)/N · E(N):

    >>> n = len(bulk)
    >>> propagate(lambda e_vac, e_bulk: e_vac - (n - 1) / n * e_bulk, vacancy, bulk,
    ...           calculator=calc)

    A barrier from the images of a path (the max is taken per member):

    >>> propagate(lambda *e: max(e) - e[0], *images, calculator=calc)
    """
    ensembles = [energy_ensemble(s, calculator) for s in structures]
    return propagate_energies(fn, *ensembles)
