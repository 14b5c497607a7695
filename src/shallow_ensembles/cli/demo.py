"""Verb ``demo``: the main job on shipped data (``make demo``): two-step training on the water
subset, calibration, evaluation with plots, then a short MD printing E ± σ and max σ_F per step.

The demo's config, data and model are package data (``shallow_ensembles/demo_assets``: links to
``examples/`` and ``models/`` in a checkout, copies in an installed wheel), so the verb runs from
any folder after ``pip install``; ``--assets DIR`` takes them from another folder.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from .common import log_to_stderr, training_curves

CONFIG, DATA, MODEL = ("demo_water_two_step.yaml", "water_64H2O_60frames.extxyz",
                       "water_two_step.pt")
"""The demo's asset files."""


def register(sub) -> None:
    """Add the ``demo`` verb."""
    p = sub.add_parser("demo", help="the main job on shipped data: two-step training, "
                       "calibration, evaluation with plots, a short MD with E ± σ")
    p.add_argument("--output", default="demo-output")
    p.add_argument("--skip-training", action="store_true",
                   help="use the shipped model instead of training one")
    p.add_argument("--md-steps", type=int, default=20)
    p.add_argument("--assets", type=Path, help=f"folder with {CONFIG}, {DATA} and {MODEL} "
                   "(default: the copies installed with the package)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    """``shallow-ensembles demo``."""
    log_to_stderr()
    assets = args.assets or Path(str(resources.files("shallow_ensembles") / "demo_assets"))
    return run_demo(Path(args.output), assets, skip_training=args.skip_training,
                    md_steps=args.md_steps)


def demo_config(assets: Path, output: Path):
    """The demo's :class:`~shallow_ensembles.training.config.TrainConfig`: the shipped config
    with its data file and output folder replaced."""
    from ..config import load_config
    from ..errors import DataError
    from ..training.config import TrainConfig

    for name in (CONFIG, DATA, MODEL):
        if not (assets / name).is_file():
            raise DataError(f"the demo needs {name} there; pass --assets with the folder that "
                            "holds the demo's config, data and model", file=assets)
    return load_config(TrainConfig, assets / CONFIG, [f"output_dir={output / 'train'}"],
                       prepare=lambda data, folder: {**data, "data": {
                           **data.get("data", {}), "train_file": str(assets / DATA)}})


def run_demo(output: Path, assets: Path, skip_training: bool = False, md_steps: int = 20) -> int:
    """Run the demo into ``output`` with the files of ``assets``; returns an exit code."""
    from ..data import graphs_from_atoms
    from ..evaluation import evaluate
    from ..model import load_model
    from ..training import load_datasets, train

    output.mkdir(parents=True, exist_ok=True)
    config = demo_config(assets, output)
    start = time.perf_counter()
    if skip_training:
        model = load_model(assets / MODEL)
        print(f"using the shipped model {assets / MODEL}")
    else:
        print(f"training: protocol {config.protocol} on {DATA} -> {output / 'train'}")
        model = train(config)
        training_curves(output / "train")
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
    import numpy as np
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from .. import conventions as K
    from ..calculator import ShallowEnsembleCalculator

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
              f"{K.forces_uncertainty_norm(sigma_f).max():15.4f}")

    dyn.attach(report, interval=1)
    dyn.run(steps)
