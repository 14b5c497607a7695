"""The main job on shipped data (``make demo``): two-step training on the water subset,
calibration, evaluation with plots, then a short MD printing E ± σ and max σ_F per step."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "examples" / "configs" / "demo_water_two_step.yaml"
SHIPPED_MODEL = ROOT / "models" / "water_two_step.pt"
WATER = ROOT / "examples" / "data" / "water_64H2O_60frames.extxyz"


def run_demo(output: Path, skip_training: bool = False, md_steps: int = 20) -> int:
    """Run the demo into ``output``; returns an exit code."""
    from .config import load_train_config
    from .data import graphs_from_atoms
    from .evaluation import evaluate
    from .model import load_model
    from .training import load_datasets, train

    output.mkdir(parents=True, exist_ok=True)
    config = load_train_config(DEMO_CONFIG, [
        f"output_dir={output / 'train'}", f"data.train_file={WATER}"])
    start = time.perf_counter()
    if skip_training:
        model = load_model(SHIPPED_MODEL)
        print(f"using the shipped model {SHIPPED_MODEL}")
    else:
        print(f"training: protocol {config.protocol} on {WATER.name} -> {output / 'train'}")
        model = train(config)
        from .training_cli import _training_curves

        _training_curves(output / "train")
        print(f"trained in {time.perf_counter() - start:.0f} s; α_E = "
              f"{float(model.alpha_energy):.3g}, α_F = {float(model.alpha_forces):.3g}")
    data = load_datasets(config.data)
    metrics = evaluate(model, graphs_from_atoms(data.test, model.cutoff), output / "evaluation",
                       title="water test frames")
    cal, raw = metrics["calibrated"], metrics["raw"]
    print(f"test: energy RMSE {cal['energy_per_atom']['rmse'] * 1e3:.2f} meV/atom, forces RMSE "
          f"{cal['forces']['rmse'] * 1e3:.1f} meV/Å; RLL_E {raw['energy']['rll']:.1f} -> "
          f"{cal['energy']['rll']:.1f} %, RLL_F {raw['forces']['rll']:.1f} -> "
          f"{cal['forces']['rll']:.1f} % (raw -> calibrated); plots in {output / 'evaluation'}")
    short_md(model, data.test[0], md_steps)
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0


def short_md(model, atoms, steps: int, temperature_K: float = 300.0) -> None:
    """Langevin MD printing step, E ± σ_E and max per-atom ‖σ(F_i)‖ every step."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from . import conventions as K
    from .calculator import ShallowEnsembleCalculator

    atoms = atoms.copy()
    atoms.calc = ShallowEnsembleCalculator(model)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K,
                                 rng=np.random.default_rng(0))
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=temperature_K, friction=0.01, fixcm=False,
                   rng=np.random.default_rng(1))
    print(f"{'step':>5} {'E (eV)':>14} {'σ_E (eV)':>9} {'max σ_F (eV/Å)':>15}")

    def report():
        calc = atoms.calc
        sigma_f = calc.get_property(K.FORCES_UNCERTAINTY, atoms)
        print(f"{dyn.nsteps:5d} {atoms.get_potential_energy():14.4f} "
              f"{calc.get_property(K.ENERGY_UNCERTAINTY, atoms):9.4f} "
              f"{np.sqrt((sigma_f**2).sum(1)).max():15.4f}")

    dyn.attach(report, interval=1)
    dyn.run(steps)
