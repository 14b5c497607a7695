"""Neighbour lists from vesin, as int64 index arrays and integer cell shifts."""

from __future__ import annotations

import numpy as np
import vesin
from ase import Atoms


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
    if not pbc.any():
        cell = np.zeros((3, 3))
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts = calculator.compute(
        points=np.asarray(atoms.positions, dtype=np.float64),
        box=cell,
        periodic=pbc.tolist() if pbc.any() else False,
        quantities="ijS",
    )
    # vesin returns unsigned integers; torch indexing needs int64
    i, j, shifts = i.astype(np.int64), j.astype(np.int64), shifts.astype(np.int64)
    order = np.argsort(i, kind="stable")
    return i[order], j[order], shifts[order]
