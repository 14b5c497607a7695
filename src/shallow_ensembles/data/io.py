"""Read ASE-readable files into validated, labelled ``Atoms``.

After :func:`read_structures`, every frame carries its labels under the project's keys
(``conventions.REF_ENERGY`` in ``info``, ``REF_FORCES`` in ``arrays``, ``REF_STRESS`` in
``info``), whatever the file called them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from .. import conventions as K
from ..errors import DataError, ElementError
from .neighbors import check_geometry


def read_structures(
    path: str | Path,
    *,
    index: str = ":",
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    require_energy: bool = True,
    require_forces: bool = True,
    elements: Sequence[int] | None = None,
) -> list[Atoms]:
    """Read every frame of ``path`` and attach validated labels.

    Parameters
    ----------
    path : file readable by ``ase.io.read`` (extxyz first)
    energy_key, forces_key, stress_key : where the labels are; ``None`` means the frame's
        calculator results, then ``info["energy"]`` / ``arrays["forces"]`` / ``info["stress"]``,
        then the same with a ``REF_`` prefix (``REF_energy``: this package's files, MACE's).
    require_energy, require_forces : raise when a frame lacks the label.
    elements : atomic numbers a model knows; a frame with another element is an error.

    Returns
    -------
    list of Atoms with ``info[REF_ENERGY]`` (eV), ``arrays[REF_FORCES]`` (N, 3) eV/Å and, where
    present, ``info[REF_STRESS]`` (6,) eV/Å³ Voigt.

    Raises
    ------
    DataError naming the file, the frame and the key.
    """
    path = Path(path)
    frames = read_frames(path, index)
    labelled = [
        label_frame(
            atoms,
            file=path,
            frame=i,
            energy_key=energy_key,
            forces_key=forces_key,
            stress_key=stress_key,
            require_energy=require_energy,
            require_forces=require_forces,
            elements=elements,
        )
        for i, atoms in enumerate(frames)
    ]
    check_units(labelled, path)
    return labelled


FORCE_RMS_RANGE_EV_PER_A = (0.05, 15.0)
"""Force RMS (eV/Å) outside which labels look like another unit system: typical DFT data sets
give 0.3–3 eV/Å; the same forces in kcal/mol/Å are 23× larger, in Hartree/bohr 51× smaller."""


def check_units(frames: Sequence[Atoms], file=None) -> None:
    """Warn when the force labels' RMS (eV/Å) suggests kcal/mol or Hartree units.

    Labels must be eV and eV/Å; nothing is converted. Frames without forces are skipped.
    """
    forces = [a.arrays[K.REF_FORCES] for a in frames if K.REF_FORCES in a.arrays]
    if not forces:
        return
    rms = float(np.sqrt(np.mean(np.concatenate(forces) ** 2)))
    low, high = FORCE_RMS_RANGE_EV_PER_A
    if rms == 0.0 or low <= rms <= high:
        return
    guess = "kcal/mol/Å (23× eV/Å)" if rms > high else "Hartree/bohr (1/51 of eV/Å)"
    warnings.warn(f"{file}: force labels have an RMS of {rms:.3g} eV/Å, outside the usual "
                  f"{low}–{high} eV/Å; are they in {guess}? Labels must be in eV and eV/Å: "
                  "convert energies and forces before training", UserWarning, stacklevel=3)


def read_frames(path: str | Path, index: str | int = ":") -> list[Atoms]:
    """Frames of any ASE-readable file, unvalidated; a missing, unreadable or empty file is a
    :class:`DataError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", file=path)
    try:
        frames = ase.io.read(path, index=index)
    except StopIteration as err:
        raise DataError("the file holds no structures", file=path) from err
    except Exception as err:  # noqa: BLE001 - ASE raises many types for unreadable files
        raise DataError(f"ASE could not read it ({type(err).__name__}: {err})", file=path) from err
    frames = [frames] if isinstance(frames, Atoms) else list(frames)
    if not frames or any(len(a) == 0 for a in frames):
        raise DataError("the file holds no structures (or a structure without atoms)", file=path)
    return frames


def _lookup(atoms: Atoms, key: str | None, default: str, where: str):
    """Find a label: explicit key in info/arrays, else calculator results, else the default."""
    if key is not None:
        if key in atoms.info:
            return atoms.info[key]
        if key in atoms.arrays:
            return atoms.arrays[key]
        if atoms.calc is not None and key in getattr(atoms.calc, "results", {}):
            return atoms.calc.results[key]
        return None
    if atoms.calc is not None and default in getattr(atoms.calc, "results", {}):
        return atoms.calc.results[default]
    store = atoms.info if where == "info" else atoms.arrays
    # then REF_energy / REF_forces / REF_stress: what this package writes and mace_run_train reads
    return store.get(default, store.get(f"REF_{default}"))


def _available(atoms: Atoms) -> str:
    keys = list(atoms.info) + [k for k in atoms.arrays if k not in ("numbers", "positions")]
    if atoms.calc is not None:
        keys += [f"{k} (calculator)" for k in getattr(atoms.calc, "results", {})]
    return ", ".join(keys) or "none"


def check_elements(numbers: Iterable[int], elements: Sequence[int], *, file=None, frame=None):
    """Raise :class:`ElementError` if ``numbers`` holds an element outside ``elements``."""
    unknown = sorted(set(int(z) for z in numbers) - set(int(z) for z in elements))
    if unknown:
        names = ", ".join(chemical_symbols[z] for z in unknown)
        known = ", ".join(chemical_symbols[z] for z in sorted(elements))
        raise ElementError(
            f"element {names} is not in this model's elements [{known}]", file=file, frame=frame
        )


def label_frame(
    atoms: Atoms,
    *,
    file=None,
    frame=None,
    energy_key=None,
    forces_key=None,
    stress_key=None,
    require_energy=True,
    require_forces=True,
    elements=None,
) -> Atoms:
    """Validate one frame and copy its labels to the project's keys (see module doc)."""
    n = len(atoms)
    if n == 0:
        raise DataError("the structure has no atoms", file=file, frame=frame)
    if not np.all(np.isfinite(atoms.positions)):
        raise DataError("positions contain NaN or inf", file=file, frame=frame, key="positions")
    if elements is not None:
        check_elements(atoms.numbers, elements, file=file, frame=frame)
    check_geometry(atoms, file=file, frame=frame)
    energy = _lookup(atoms, energy_key, "energy", "info")
    forces = _lookup(atoms, forces_key, "forces", "arrays")
    stress = _lookup(atoms, stress_key, "stress", "info")
    out = Atoms(
        numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc
    )
    out.info.update({k: v for k, v in atoms.info.items() if k not in ("energy", "stress")})
    ekey, fkey = energy_key or "energy", forces_key or "forces"
    if energy is None:
        if require_energy:
            raise DataError(
                f"no energy found (available: {_available(atoms)}); set energy_key",
                file=file, frame=frame, key=ekey,
            )
    else:
        value = np.asarray(energy, dtype=float)
        if value.size != 1:
            raise DataError(f"expected one energy value, found shape {value.shape}",
                            file=file, frame=frame, key=ekey)
        if not np.isfinite(value).all():
            raise DataError("energy is NaN or inf", file=file, frame=frame, key=ekey)
        out.info[K.REF_ENERGY] = float(value.reshape(()))
    if forces is None:
        if require_forces:
            raise DataError(
                f"no forces found (available: {_available(atoms)}); set forces_key",
                file=file, frame=frame, key=fkey,
            )
    else:
        value = np.asarray(forces, dtype=float)
        if value.shape != (n, 3):
            raise DataError(f"expected forces of shape ({n}, 3), found {value.shape}",
                            file=file, frame=frame, key=fkey)
        if not np.isfinite(value).all():
            raise DataError("forces contain NaN or inf", file=file, frame=frame, key=fkey)
        out.arrays[K.REF_FORCES] = value
    if stress is not None:
        value = np.asarray(stress, dtype=float)
        if value.shape == (3, 3):
            value = value[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        skey = stress_key or "stress"
        if value.shape != (6,):
            raise DataError(f"expected a (6,) or (3, 3) stress, found {value.shape}",
                            file=file, frame=frame, key=skey)
        if not np.isfinite(value).all():
            raise DataError("stress contains NaN or inf", file=file, frame=frame, key=skey)
        out.info[K.REF_STRESS] = value
    return out
