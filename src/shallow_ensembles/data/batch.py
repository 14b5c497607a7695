"""Graphs of single structures and batches of variable-size structures.

A :class:`Graph` is computed once per structure (neighbour list included) and reused every
epoch; :func:`collate` concatenates graphs into a :class:`Batch` of torch tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from ase import Atoms

from .. import conventions as K
from ..errors import DataError
from .neighbors import neighbor_list


@dataclass
class Graph:
    """One structure with its neighbour list and optional labels (numpy, float64)."""

    numbers: np.ndarray  # (N,) int64
    positions: np.ndarray  # (N, 3) Å
    cell: np.ndarray  # (3, 3) Å, rows are cell vectors
    pbc: np.ndarray  # (3,) bool
    i: np.ndarray  # (P,) int64
    j: np.ndarray  # (P,) int64
    shifts: np.ndarray  # (P, 3) int64
    energy: float | None = None  # eV
    forces: np.ndarray | None = None  # (N, 3) eV/Å
    stress: np.ndarray | None = None  # (6,) eV/Å³

    @classmethod
    def from_atoms(cls, atoms: Atoms, cutoff: float) -> Graph:
        """Neighbour list of ``atoms`` and its labels (``conventions.REF_*`` keys) if present."""
        i, j, shifts = neighbor_list(atoms, cutoff)
        return cls(
            numbers=np.asarray(atoms.numbers, dtype=np.int64),
            positions=np.asarray(atoms.positions, dtype=np.float64),
            cell=np.asarray(atoms.cell.array, dtype=np.float64),
            pbc=np.asarray(atoms.pbc, dtype=bool),
            i=i,
            j=j,
            shifts=shifts,
            energy=atoms.info.get(K.REF_ENERGY),
            forces=atoms.arrays.get(K.REF_FORCES),
            stress=atoms.info.get(K.REF_STRESS),
        )

    def __len__(self) -> int:
        return len(self.numbers)


def graphs_from_atoms(frames: Sequence[Atoms], cutoff: float) -> list[Graph]:
    """:meth:`Graph.from_atoms` over a list of frames; a bad frame's DataError names its index."""
    graphs = []
    for k, atoms in enumerate(frames):
        try:
            graphs.append(Graph.from_atoms(atoms, cutoff))
        except DataError as err:
            raise err.located(frame=k) from err
    return graphs


class Batch(NamedTuple):
    """Structures concatenated along the atom axis (S structures, N atoms, P pairs)."""

    positions: torch.Tensor  # (N, 3) Å
    numbers: torch.Tensor  # (N,) int64
    cell: torch.Tensor  # (S, 3, 3) Å
    pbc: torch.Tensor  # (S, 3) bool
    i: torch.Tensor  # (P,) int64, global atom index
    j: torch.Tensor  # (P,) int64, global atom index
    shifts: torch.Tensor  # (P, 3) cell shifts, same dtype as positions
    structure: torch.Tensor  # (N,) int64, structure index of every atom
    n_atoms: torch.Tensor  # (S,) int64
    energy: torch.Tensor | None = None  # (S,) eV, always float64
    forces: torch.Tensor | None = None  # (N, 3) eV/Å
    stress: torch.Tensor | None = None  # (S, 6) eV/Å³
    stress_mask: torch.Tensor | None = None  # (S,) bool, structures with a stress label

    @property
    def n_structures(self) -> int:
        """S."""
        return int(self.n_atoms.shape[0])

    @property
    def edge_structure(self) -> torch.Tensor:
        """(P,) int64: structure index of every pair."""
        return self.structure[self.i]

    def edge_vectors(self, positions=None, cell=None) -> torch.Tensor:
        """r_ij = R_j − R_i + S·cell, (P, 3) Å, differentiable in positions and cell."""
        positions = self.positions if positions is None else positions
        cell = self.cell if cell is None else cell
        offsets = torch.einsum("pk,pkl->pl", self.shifts, cell[self.edge_structure])
        return positions[self.j] - positions[self.i] + offsets

    def to(self, device=None, dtype=None) -> Batch:
        """Move to ``device``; floating tensors to ``dtype``."""

        def move(name, x):
            if x is None:
                return None
            if x.is_floating_point() and name != "energy":  # energy labels stay float64
                return x.to(device=device, dtype=dtype)
            return x.to(device=device)

        return Batch(*(move(name, x) for name, x in zip(self._fields, self, strict=True)))

    @classmethod
    def from_atoms(cls, frames: Sequence[Atoms] | Atoms, cutoff: float, dtype=torch.float64):
        """Batch of ``frames`` (or one Atoms) with neighbour lists within ``cutoff`` Å."""
        if isinstance(frames, Atoms):
            frames = [frames]
        return collate(graphs_from_atoms(frames, cutoff), dtype=dtype)


def collate(graphs: Sequence[Graph], dtype=torch.float64) -> Batch:
    """Concatenate graphs into one :class:`Batch`; labels kept only if every graph has them."""
    offsets = np.cumsum([0] + [len(g) for g in graphs[:-1]])
    n_atoms = np.array([len(g) for g in graphs], dtype=np.int64)

    def cat(name):
        return np.concatenate([getattr(g, name) for g in graphs])

    energy = forces = stress = stress_mask = None
    if all(g.energy is not None for g in graphs):
        # labels of total energies stay float64: float32 resolves ~2 meV at 3·10⁴ eV
        energy = torch.tensor([g.energy for g in graphs], dtype=torch.float64)
    if all(g.forces is not None for g in graphs):
        forces = torch.as_tensor(cat("forces"), dtype=dtype)
    if any(g.stress is not None for g in graphs):
        stress = torch.tensor(
            np.stack([g.stress if g.stress is not None else np.zeros(6) for g in graphs]),
            dtype=dtype,
        )
        stress_mask = torch.tensor([g.stress is not None for g in graphs])
    return Batch(
        positions=torch.as_tensor(cat("positions"), dtype=dtype),
        numbers=torch.as_tensor(cat("numbers")),
        cell=torch.as_tensor(np.stack([g.cell for g in graphs]), dtype=dtype),
        pbc=torch.as_tensor(np.stack([g.pbc for g in graphs])),
        i=torch.as_tensor(np.concatenate([g.i + o for g, o in zip(graphs, offsets, strict=True)])),
        j=torch.as_tensor(np.concatenate([g.j + o for g, o in zip(graphs, offsets, strict=True)])),
        shifts=torch.as_tensor(cat("shifts"), dtype=dtype),
        structure=torch.as_tensor(np.repeat(np.arange(len(graphs)), n_atoms)),
        n_atoms=torch.as_tensor(n_atoms),
        energy=energy,
        forces=forces,
        stress=stress,
        stress_mask=stress_mask,
    )
