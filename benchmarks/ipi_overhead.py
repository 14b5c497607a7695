"""Per-step cost of i-PI + the shallow-ensemble driver against in-process ASE MD, same model.

System: frame 0 of ``examples/data/water_64H2O_60frames.extxyz`` (192 atoms). Model:
``models/water_two_step.pt`` if present, else a random float32 ``ModelConfig()`` model with its
density scale fitted on the frame. One torch thread here, ``OMP_NUM_THREADS=1`` for i-PI.

Two like-for-like comparisons, each a ratio of steady-state wall time per MD step:

- ``committee``: i-PI NVE with ``<ffcommittee>`` and the driver sending every member's energy,
  forces and virial (the shipped setting) / ASE VelocityVerlet with ``always_member_forces=True``
  (the same model work per step);
- ``mean_only``: i-PI with the driver's member forces off / ASE VelocityVerlet computing the mean
  forces only.

i-PI's per-step time is the mean interval between driver evaluations after the first two (start-up
excluded); ASE's is the wall time of ``dyn.run(steps)`` after two warm-up steps, divided by steps.

Usage: ``python benchmarks/ipi_overhead.py [--steps 30] [--json OUT.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"

import ase.io  # noqa: E402
import torch  # noqa: E402
from ase import units  # noqa: E402
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution  # noqa: E402
from ase.md.verlet import VelocityVerlet  # noqa: E402

from shallow_ensembles import ShallowEnsembleCalculator, load_model, save_model  # noqa: E402
from shallow_ensembles.config import ModelConfig  # noqa: E402
from shallow_ensembles.data import Batch  # noqa: E402
from shallow_ensembles.ipi.run import run_ipi  # noqa: E402
from shallow_ensembles.model import ShallowEnsemble  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WATER = ROOT / "examples" / "data" / "water_64H2O_60frames.extxyz"
SHIPPED = ROOT / "models" / "water_two_step.pt"
GOAL = 1.10

NVE_INPUT = """<simulation verbosity='low'>
  <output prefix='bench'>
    <properties stride='1000' filename='out'> [ step, potential{{electronvolt}} ] </properties>
  </output>
  <total_steps> {steps} </total_steps>
  <prng> <seed> 12345 </seed> </prng>
  <ffcommittee name='committee'>
    <ffsocket name='shallow-ensemble' mode='unix' pbc='true'>
      <address> bench </address> <latency> 1e-4 </latency>
    </ffsocket>
    <parse_json> true </parse_json>
    <alpha> 1.0 </alpha>
  </ffcommittee>
  <system>
    <initialize nbeads='1'>
      <file mode='ase'> {structure} </file>
      <velocities mode='thermal' units='kelvin'> 300 </velocities>
    </initialize>
    <forces> <force forcefield='committee'> </force> </forces>
    <motion mode='dynamics'>
      <dynamics mode='nve'> <timestep units='femtosecond'> 0.5 </timestep> </dynamics>
    </motion>
    <ensemble> <temperature units='kelvin'> 300 </temperature> </ensemble>
  </system>
</simulation>
"""


def benchmark_model(folder: Path, frame) -> tuple[Path, str]:
    """The shipped model, or a random default-size float32 one saved in ``folder``."""
    if SHIPPED.is_file():
        return SHIPPED, str(SHIPPED.relative_to(ROOT))
    torch.manual_seed(0)
    model = ShallowEnsemble.from_config(ModelConfig(), sorted(set(frame.numbers)))
    model.backbone.fit_density_scale(Batch.from_atoms([frame], model.cutoff, dtype=model.dtype))
    path = save_model(model, folder / "random_default.pt")
    return path, "random ModelConfig() float32 (models/water_two_step.pt absent)"


def ase_ms_per_step(model_path: Path, frame, steps: int, member_forces: bool) -> float:
    """Steady-state wall time per VelocityVerlet step, ms."""
    atoms = frame.copy()
    atoms.calc = ShallowEnsembleCalculator(load_model(model_path),
                                           always_member_forces=member_forces)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=__import__("numpy").random.
                                 default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.run(2)
    start = time.perf_counter()
    dyn.run(steps)
    return 1e3 * (time.perf_counter() - start) / steps


def ipi_ms_per_step(model_path: Path, structure: Path, folder: Path, steps: int,
                    member_forces: bool) -> float:
    """Steady-state wall time per i-PI step (i-PI + socket + driver), ms."""
    name = "committee" if member_forces else "mean_only"
    xml = folder / f"nve_{name}.xml"
    xml.write_text(NVE_INPUT.format(steps=steps + 2, structure=structure))
    summary = run_ipi(xml, model_path, output=folder / f"run_{name}", timeout_s=600,
                      driver_options={"member_forces": member_forces})
    return 1e3 * summary.seconds_per_evaluation


def main(argv=None) -> dict:
    """Run both comparisons, print the ratios and optionally write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    frame = ase.io.read(WATER, index=0)
    with tempfile.TemporaryDirectory(prefix="ipi_overhead_") as tmp:
        folder = Path(tmp)
        structure = folder / "water_192.extxyz"
        ase.io.write(structure, frame, format="extxyz")
        model_path, model_name = benchmark_model(folder, frame)
        results = {}
        for name, members in (("committee", True), ("mean_only", False)):
            ase_ms = ase_ms_per_step(model_path, frame, args.steps, members)
            ipi_ms = ipi_ms_per_step(model_path, structure, folder, args.steps, members)
            results[name] = {"ase_ms_per_step": ase_ms, "ipi_ms_per_step": ipi_ms,
                             "ratio": ipi_ms / ase_ms}
            print(f"{name:10s} ASE {ase_ms:8.2f} ms/step   i-PI+driver {ipi_ms:8.2f} ms/step   "
                  f"ratio {ipi_ms / ase_ms:.3f} (goal <= {GOAL})")
    report = {"system": "water 64 H2O, 192 atoms", "model": model_name, "steps": args.steps,
              "torch_threads": torch.get_num_threads(), "goal_ratio": GOAL,
              "machine": platform.platform(), "results": results}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
