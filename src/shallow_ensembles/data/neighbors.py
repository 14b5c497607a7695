"""Neighbour lists from vesin, as int64 index arrays and integer cell shifts."""

from __future__ import annotations

import numpy as np
import vesin
from ase import Atoms

from ..errors import DataError

MIN_DISTANCE_A = 1e-4
"""Pairs closer than this (Å) are coincident atoms: an error, never a NaN energy."""


def neighbor_list(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list of ``atoms`` within ``cutoff`` Å.

    Pairs are ordered by their first index so that per-atom sums are contiguous.

    Returns
    -------
    i, j : np.ndarray, shape (P,), int64 — the pair (i, j) with vector r_ij = R_j − R_i + S·cell
    shifts : np.ndarray, shape (P, 3), int64 — S, integer cell shifts
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if len(atoms) == 0:
        raise DataError("the structure has no atoms (Atoms() is empty); give at least one atom",
                        key="numbers")
    if not pbc.any():
        cell = np.zeros((3, 3))
    else:
        _check_periodic_cell(cell, pbc)
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts, distances = calculator.compute(
        points=np.asarray(atoms.positions, dtype=np.float64),
        box=cell,
        periodic=pbc.tolist() if pbc.any() else False,
        quantities="ijSd",
    )
    # vesin returns unsigned integers; torch indexing needs int64
    i, j, shifts = i.astype(np.int64), j.astype(np.int64), shifts.astype(np.int64)
    close = np.flatnonzero(distances < MIN_DISTANCE_A)
    if close.size:
        a, b = int(i[close[0]]), int(j[close[0]])
        raise DataError(f"atoms {a} and {b} are {distances[close[0]]:.3g} Å apart (coincident "
                        f"atoms: the descriptors would be NaN); remove duplicate atoms",
                        key="positions")
    order = np.argsort(i, kind="stable")
    return i[order], j[order], shifts[order]


def _check_periodic_cell(cell: np.ndarray, pbc: np.ndarray) -> None:
    """Raise DataError unless the cell vectors (rows, Å) of periodic axes are independent.

    vesin aborts the process (SIGFPE) or throws a C++ error on a zero vector along a periodic
    axis, so the check comes first.
    """
    periodic = cell[pbc]
    rank = np.linalg.matrix_rank(periodic, tol=1e-8) if np.abs(periodic).max() > 0 else 0
    if rank < int(pbc.sum()):
        axes = "".join("abc"[k] for k in np.flatnonzero(pbc))
        raise DataError(f"pbc={pbc.tolist()} but the cell vectors of the periodic axes ({axes}) "
                        f"are zero or linearly dependent (cell {cell.tolist()}); set the cell or "
                        "pbc=False", key="cell")


def check_geometry(atoms: Atoms, *, file=None, frame=None) -> None:
    """Raise :class:`DataError` (naming ``file`` and ``frame``) for an empty structure, a
    periodic axis without a cell vector, or coincident atoms (closer than ``MIN_DISTANCE_A``)."""
    try:
        neighbor_list(atoms, 10 * MIN_DISTANCE_A)
    except DataError as err:
        raise err.located(file=file, frame=frame) from None
