"""Timing of ASE calculators, shared by the peer scripts (numpy, ase and stdlib only).

Every peer script runs in its own virtual environment and imports this file from its folder;
it must not import ``shallow_ensembles``, torch or jax.
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
from ase import units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution


def ms_per_call(calc, atoms, properties, repeat: int = 20, warmup: int = 3,
                seed: int = 0) -> float:
    """Median wall ms of one ``calc.calculate(atoms, properties)`` on a fresh geometry.

    Each call moves every atom by ~1e-3 Å so that no calculator cache can answer it.
    """
    rng = np.random.default_rng(seed)
    atoms = atoms.copy()
    base = atoms.get_positions()
    times = []
    for i in range(warmup + repeat):
        atoms.set_positions(base + 1e-3 * rng.standard_normal(base.shape))
        calc.reset()
        start = time.perf_counter()
        calc.calculate(atoms, properties, ["positions"])
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def md_steps_per_s(calc, atoms, steps: int = 100, warmup: int = 5,
                   temperature_K: float = 300.0, timestep_fs: float = 0.5) -> float:
    """Langevin MD steps per wall second with ``calc`` attached (after ``warmup`` steps)."""
    atoms = atoms.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K,
                                 rng=np.random.default_rng(0))
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K,
                   friction=0.01 / units.fs,
                   fixcm=False,
                   rng=np.random.default_rng(1))
    dyn.run(warmup)
    start = time.perf_counter()
    dyn.run(steps)
    return steps / (time.perf_counter() - start)


def emit(record: dict) -> None:
    """Print one JSON line (what the orchestrator reads from stdout)."""
    print(json.dumps(record), flush=True)
