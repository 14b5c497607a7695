"""NVE energy drift and noise of a shipped model in float32 and float64, 192-atom water.

    python benchmarks/nve_drift.py [--model models/water_two_step.pt] [--steps 400]

Velocity Verlet at 0.5 fs from a frame of the shipped water data, thermalised at 300 K (same
seed for both precisions), one torch thread. Total energy E_tot(t) per atom: drift = slope of a
least-squares line (eV/atom/ps), noise = standard deviation about that line (eV/atom). Energies
are accumulated in float64 in both cases (the model's contract); only the network's precision
changes. Prints a Markdown table; ``--json OUT`` writes it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase import units
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet

from shallow_ensembles import ShallowEnsembleCalculator, load_model

ROOT = Path(__file__).resolve().parents[1]
WATER = ROOT / "examples" / "data" / "water_64H2O_60frames.extxyz"


def run(model, steps: int, dt_fs: float) -> dict[str, float]:
    """Drift (eV/atom/ps) and noise (eV/atom) of E_tot over ``steps`` NVE steps."""
    atoms = ase.io.read(WATER, 0)
    atoms.calc = ShallowEnsembleCalculator(model)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, dt_fs * units.fs)
    total = []
    dyn.attach(lambda: total.append(atoms.get_total_energy() / len(atoms)), interval=1)
    dyn.run(steps)
    t_ps = np.arange(len(total)) * dt_fs / 1000
    slope, intercept = np.polyfit(t_ps, total, 1)
    noise = float(np.std(np.asarray(total) - (slope * t_ps + intercept)))
    return {"drift_eV_atom_ps": float(slope), "noise_eV_atom": noise,
            "steps": steps, "dt_fs": dt_fs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "water_two_step.pt"))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--dt-fs", type=float, default=0.5)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = {}
    for dtype in ("float32", "float64"):
        model = load_model(args.model).to(getattr(torch, dtype))
        rows[dtype] = run(model, args.steps, args.dt_fs)
    print(f"| precision | drift (eV/atom/ps) | noise (eV/atom) |   ({args.steps} steps of "
          f"{args.dt_fs} fs, 192-atom water, {Path(args.model).name})")
    print("|---|---|---|")
    for dtype, row in rows.items():
        print(f"| {dtype} | {row['drift_eV_atom_ps']:.2e} | {row['noise_eV_atom']:.2e} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
