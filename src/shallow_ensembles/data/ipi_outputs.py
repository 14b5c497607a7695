"""Readers for i-PI's committee outputs, converted to eV and Å (numpy only; no i-PI import).

i-PI writes extras trajectories (``<trajectory extra_type='committee_pot'> extras
</trajectory>``) as blocks::

     #EXTRAS(committee_pot)# Step:           0
      4.55744907e-01  -2.65391712e-01 ...

one block per printed step, one file per bead (``<prefix>.<filename>_<bead>``), in i-PI's atomic
units (i-PI does not convert extras). ``active_output`` files hold JSON objects back to back:
``{"position": [3N bohr], "cell": [9 bohr, cell vectors as columns], "uncertainty": Ha}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase.units import Bohr, Hartree

from ..errors import DataError

_HEADER = re.compile(r"^\s*#EXTRAS\((?P<name>[^)]*)\)#\s*Step:\s*(?P<step>\d+)")


def read_extras(path: str | Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """Steps and values of an i-PI extras trajectory, in the units i-PI wrote (atomic units).

    Parameters
    ----------
    path : one ``<prefix>.<filename>_<bead>`` file written by ``<trajectory ... > extras``

    Returns
    -------
    steps : np.ndarray, shape (frames,), int
    values : list of np.ndarray, one per frame; shape (k,) for one row, (rows, k) for more

    Raises
    ------
    DataError : missing file, no block, or a non-numeric value
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such i-PI extras file", file=path)
    steps, blocks = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            steps.append(int(header["step"]))
            blocks.append([])
        elif line.strip():
            if not blocks:
                raise DataError(f"line {number}: values before the first #EXTRAS header",
                                file=path)
            try:
                blocks[-1].append([float(x) for x in line.split()])
            except ValueError as err:
                raise DataError(f"line {number}: not numeric ({err})", file=path) from err
    if not steps:
        raise DataError("no #EXTRAS block: not an i-PI extras trajectory", file=path)
    values = [np.asarray(rows[0] if len(rows) == 1 else rows, dtype=float) for rows in blocks]
    return np.asarray(steps, dtype=int), values


def read_committee_pot(path: str | Path | Sequence[str | Path]) -> np.ndarray:
    """Member potential energies per printed frame from i-PI's ``committee_pot``, in eV.

    The reweighting input of Imbalzano et al. (2021): V_m per frame, members rescaled by i-PI's
    ``<alpha>`` (1 with this package's driver, whose members are already calibrated).

    Parameters
    ----------
    path : one file (a classical run, or one bead), or a sequence of the bead files of a
        path-integral run, e.g. ``sorted(glob("simulation.committee_pot_*"))``, whose bead
        average V_m = (1/P) Σ_k V_m(q_k) is returned

    Returns
    -------
    np.ndarray, shape (frames, M), eV

    Raises
    ------
    DataError : unreadable file, frames with different member counts, or bead files that
        disagree in their frames
    """
    if isinstance(path, str | Path):
        return _read_members(Path(path))
    beads = [_read_members(Path(p)) for p in path]
    if not beads:
        raise DataError("read_committee_pot: an empty list of bead files")
    if any(b.shape != beads[0].shape for b in beads):
        shapes = [b.shape for b in beads]
        raise DataError(f"bead files have different (frames, M) shapes {shapes}",
                        file=Path(path[0]).parent)
    return np.mean(beads, axis=0)


def read_committee_uncertainty(path: str | Path) -> np.ndarray:
    """i-PI's ``committee_uncertainty`` per frame (σ of the total energy, ddof=1), in eV.

    Returns
    -------
    np.ndarray, shape (frames,), eV
    """
    return _read_members(Path(path))[:, 0]


def read_active_output(path: str | Path) -> list[dict[str, np.ndarray | float]]:
    """Structures i-PI flagged with ``active_thresh``, in Å and eV.

    Returns
    -------
    list of dict, one per structure: ``positions`` (N, 3) Å; ``cell`` (3, 3) Å, cell vectors
    as rows (ASE convention); ``energy_uncertainty`` float, eV (σ of the total energy, ddof=1)
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such i-PI active_output file", file=path)
    text, decoder, index, frames = path.read_text(), json.JSONDecoder(), 0, []
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index == len(text):
            return frames
        try:
            obj, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError as err:
            raise DataError(f"structure {len(frames)}: not JSON ({err})", file=path) from err
        frames.append({
            "positions": np.asarray(obj["position"], dtype=float).reshape(-1, 3) * Bohr,
            "cell": np.asarray(obj["cell"], dtype=float).reshape(3, 3).T * Bohr,
            "energy_uncertainty": float(obj["uncertainty"]) * Hartree,
        })


def _read_members(path: Path) -> np.ndarray:
    """(frames, k) array of a one-row-per-frame extras file, Ha → eV."""
    _, values = read_extras(path)
    sizes = {v.size for v in values}
    if len(sizes) != 1 or any(v.ndim != 1 for v in values):
        raise DataError(f"frames have different sizes {sorted(sizes)}; expected one row of "
                        "M values per frame", file=path)
    return np.stack(values) * Hartree
