"""Langevin MD of liquid water with the shipped model, printing E ± σ_E and max σ_F, and
saving every frame with its uncertainties (extxyz keeps them through attach_uncertainty).

SHALLOW_ENSEMBLES_SMOKE=1 runs 3 steps (used by the tests).
"""

import os
from pathlib import Path

import numpy as np
from ase import units
from ase.io import read, write
from ase.md.langevin import Langevin

from shallow_ensembles import ShallowEnsembleCalculator, attach_uncertainty

HERE = Path(__file__).resolve().parent
steps = 3 if os.environ.get("SHALLOW_ENSEMBLES_SMOKE") == "1" else 50
output = Path(os.environ.get("EXAMPLE_OUTPUT", "runs/example_md"))
output.mkdir(parents=True, exist_ok=True)

atoms = read(HERE / "data" / "water_64H2O_60frames.extxyz", index=0)
atoms.calc = ShallowEnsembleCalculator(HERE.parent / "models" / "water_two_step.pt")
dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01, fixcm=False,
               rng=np.random.default_rng(0))
frames = []


def record():
    attach_uncertainty(atoms)
    print(f"step {dyn.nsteps:4d}  E = {atoms.get_potential_energy():.3f} ± "
          f"{atoms.info['energy_uncertainty']:.3f} eV  max σ_F = "
          f"{atoms.info['max_forces_uncertainty']:.3f} eV/Å")
    frames.append(atoms.copy())
    frames[-1].info.update(atoms.info)
    frames[-1].arrays.update({k: v.copy() for k, v in atoms.arrays.items()})


dyn.attach(record, interval=1)
dyn.run(steps)
write(output / "trajectory.extxyz", frames)
