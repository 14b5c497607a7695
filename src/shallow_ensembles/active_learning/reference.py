"""Reference calculators and labelling: GFN-xTB through tblite, or any ASE calculator by path."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator
from ase.calculators.singlepoint import SinglePointCalculator

from .. import conventions as K
from ..errors import ConfigError, DataError
from .config import ReferenceConfig

LOG = logging.getLogger(__name__)

XTB_INSTALL = "pip install 'shallow-ensembles[reference]'  (or: pip install tblite)"

# info keys kept on labelled frames (provenance and σ at selection time); the rest is dropped
PROVENANCE_KEYS = ("al_round", "al_walker", "al_pool_index", "md_step", "md_time_fs",
                   "temperature_K", "trust_level", K.ENERGY_UNCERTAINTY,
                   K.ENERGY_UNCERTAINTY_PER_ATOM, K.MAX_FORCES_UNCERTAINTY)


def make_reference(config: ReferenceConfig) -> BaseCalculator:
    """The ASE calculator of ``config``.

    Raises
    ------
    ConfigError naming ``reference.kind`` (tblite missing, with the pip command) or
    ``reference.path`` (no such module or attribute) or ``reference.kwargs`` (rejected).
    """
    if config.kind == "xtb":
        try:
            from tblite.ase import TBLite
        except ImportError as err:
            raise ConfigError("reference.kind", "xtb needs the optional package tblite, which "
                              f"is not installed: {XTB_INSTALL}") from err
        factory, kwargs = TBLite, {"method": config.xtb_method, "verbosity": 0, **config.kwargs}
    else:
        factory, kwargs = import_object(config.path, "reference.path"), dict(config.kwargs)
    try:
        calculator = factory(**kwargs)
    except TypeError as err:
        raise ConfigError("reference.kwargs", f"rejected by {config.path or 'TBLite'}: "
                          f"{err}") from err
    if not isinstance(calculator, BaseCalculator):
        raise ConfigError("reference.path", f"{config.path} built a "
                          f"{type(calculator).__name__}, not an ASE calculator")
    return calculator


def import_object(path: str, key: str):
    """The object at the dotted ``path`` (``package.module.Name``); errors name ``key``."""
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise ConfigError(key, f"expected a dotted path module.Name, got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(key, f"cannot import module {module_name!r} ({err})") from err
    if not hasattr(module, name):
        raise ConfigError(key, f"module {module_name!r} has no attribute {name!r}")
    return getattr(module, name)


def label(frames: Sequence[Atoms], calculator: BaseCalculator, stress: bool = False,
          ) -> tuple[list[Atoms], list[int]]:
    """Label ``frames`` with ``calculator``; frames where it fails are skipped (logged).

    Parameters
    ----------
    frames : structures (σ and provenance in ``info`` are kept, see ``PROVENANCE_KEYS``)
    calculator : the reference ASE calculator
    stress : also label the stress of frames periodic in three directions

    Returns
    -------
    (labelled, failed) : frames with ``energy`` (eV) and ``forces`` (N, 3) eV/Å as
        SinglePointCalculator results (what extxyz writes), and the indices that failed.
    """
    labelled, failed = [], []
    for index, frame in enumerate(frames):
        try:
            labelled.append(label_one(frame, calculator, stress))
        except Exception as err:  # noqa: BLE001 - reference codes raise many types (SCF, ...)
            LOG.warning("reference failed on frame %d (%s: %s); skipped", index,
                        type(err).__name__, err)
            failed.append(index)
    return labelled, failed


def label_one(frame: Atoms, calculator: BaseCalculator, stress: bool = False) -> Atoms:
    """One labelled copy of ``frame`` (raises DataError for non-finite labels)."""
    atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell,
                  pbc=frame.pbc)
    atoms.calc = calculator
    results = {"energy": float(atoms.get_potential_energy()),
               "forces": np.array(atoms.get_forces())}
    if stress and atoms.pbc.all():
        results["stress"] = np.array(atoms.get_stress())
    atoms.calc = None
    if not np.isfinite(results["energy"]):
        raise DataError("the reference returned a non-finite energy", key="energy")
    if results["forces"].shape != (len(atoms), 3) or not np.isfinite(results["forces"]).all():
        raise DataError("the reference returned non-finite or misshaped forces", key="forces")
    return with_labels(atoms, info={k: frame.info[k] for k in PROVENANCE_KEYS
                                    if k in frame.info}, **results)


def with_labels(atoms: Atoms, energy: float, forces: np.ndarray, stress=None,
                info: dict | None = None) -> Atoms:
    """A copy of ``atoms`` (positions, cell, pbc) whose calculator results are the labels."""
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc,
                info=dict(info or {}))
    results = {"energy": energy, "forces": np.asarray(forces)}
    if stress is not None:
        results["stress"] = np.asarray(stress)
    out.calc = SinglePointCalculator(out, **results)
    return out


def from_reference_keys(frame: Atoms) -> Atoms:
    """A frame read by :func:`~shallow_ensembles.data.read_structures` (``REF_*`` keys) back
    as labelled Atoms, keeping the provenance keys."""
    info = {k: frame.info[k] for k in PROVENANCE_KEYS if k in frame.info}
    return with_labels(frame, frame.info[K.REF_ENERGY], frame.arrays[K.REF_FORCES],
                       frame.info.get(K.REF_STRESS), info)
