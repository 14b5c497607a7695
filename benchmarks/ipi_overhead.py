"""Per-step cost of i-PI + the shallow-ensemble driver against in-process ASE MD, same model.

System: frame 0 of ``examples/data/water_64H2O_60frames.extxyz`` (192 atoms). Model:
``models/water_two_step.pt`` if present, else a random float32 ``ModelConfig()`` model with its
density scale fitted on the frame. One torch thread here, ``OMP_NUM_THREADS=1`` for i-PI.

Two like-for-like comparisons (ratio = i-PI + driver / ASE, per MD step):

- ``committee``: i-PI NVE with ``<ffcommittee>`` and the driver sending every member's energy,
  forces and virial (the shipped setting) / ASE VelocityVerlet with ``always_member_forces=True``
  (the same model work per step);
- ``mean_only``: i-PI with the driver's member forces off / ASE VelocityVerlet computing the mean
  forces only.

Two measures of each:

- wall: i-PI's steady-state time per step is the mean interval between driver evaluations after
  the first two; ASE's is the wall time of ``dyn.run(steps)`` after two warm-up steps, measured
  before and after the i-PI run and averaged;
- CPU: the CPU time of this process (driver thread) plus the i-PI subprocess, from a run of
  ``steps + 2`` steps minus a run of 2 steps (start-up cancels), against the CPU time of
  ``dyn.run(steps)``. CPU time does not count waiting, so it is robust to other load on the
  machine; it does count i-PI's polling (``<latency>`` 1e-3 s as in the shipped inputs).

- replay: i-PI with a driver that evaluates the model once and then answers every request with
  that reply (JSON encoding included, model time excluded): the pure per-step overhead of i-PI,
  the socket and the extras, and the ratio it implies, (ASE + overhead) / ASE.

Each comparison is repeated (``--repeats``, default 3) and the median-ratio repeat is reported.

Usage: ``python benchmarks/ipi_overhead.py [--steps 30] [--repeats 3] [--json OUT.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"

import ase.io  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase import units  # noqa: E402
from ase.md.velocitydistribution import thermalize_momenta  # noqa: E402
from ase.md.verlet import VelocityVerlet  # noqa: E402

from shallow_ensembles import ShallowEnsembleCalculator, load_model, save_model  # noqa: E402
from shallow_ensembles.data import Batch  # noqa: E402
from shallow_ensembles.ipi.driver import ShallowEnsembleDriver, serve  # noqa: E402
from shallow_ensembles.ipi.run import ipi_executable, prepare_run, run_ipi  # noqa: E402
from shallow_ensembles.model import ShallowEnsemble  # noqa: E402
from shallow_ensembles.model.config import ModelConfig  # noqa: E402

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
      <address> bench </address> <latency> 1e-3 </latency>
    </ffsocket>
    <parse_json> true </parse_json>
    <latency> 1e-3 </latency>
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


def ase_cost(model_path: Path, frame, steps: int, member_forces: bool) -> tuple[float, float]:
    """(wall, CPU) ms per steady-state VelocityVerlet step."""
    atoms = frame.copy()
    atoms.calc = ShallowEnsembleCalculator(load_model(model_path),
                                           always_member_forces=member_forces)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.run(2)
    wall, cpu = time.perf_counter(), time.process_time()
    dyn.run(steps)
    return (1e3 * (time.perf_counter() - wall) / steps,
            1e3 * (time.process_time() - cpu) / steps)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (i-PI), s."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def ipi_run(model_path: Path, structure: Path, folder: Path, steps: int,
            member_forces: bool) -> tuple[float, float]:
    """(wall s per steady-state step, total CPU s) of one i-PI run with the driver."""
    xml = folder / f"nve_{steps}_{member_forces}.xml"
    xml.write_text(NVE_INPUT.format(steps=steps, structure=structure))
    cpu = _cpu_seconds()
    summary = run_ipi(xml, model_path, output=folder / f"run_{time.monotonic_ns()}",
                      timeout_s=600, driver_options={"member_forces": member_forces})
    return summary.seconds_per_evaluation, _cpu_seconds() - cpu


def ipi_cost(model_path, structure, folder, steps, member_forces) -> tuple[float, float]:
    """(wall, CPU) ms per steady-state i-PI step, i-PI and driver together."""
    _, short_cpu = ipi_run(model_path, structure, folder, 2, member_forces)
    wall, long_cpu = ipi_run(model_path, structure, folder, steps + 2, member_forces)
    return 1e3 * wall, 1e3 * (long_cpu - short_cpu) / steps


class ReplayDriver(ShallowEnsembleDriver):
    """Evaluates the model once, then answers every structure with that (converted) reply."""

    def compute_structure(self, cell, pos):
        if not hasattr(self, "_replay"):
            super().compute_structure(cell, pos)
            self._replay = (self.to_ase(cell, pos), dict(self.calculator.results))
        reply = self.to_ipi(*self._replay)
        self.log.add(0.0, None, "trusted")
        self.log.finished()
        return reply


def overhead_ms(model_path: Path, structure: Path, folder: Path, member_forces: bool,
                steps: int = 200) -> float:
    """Steady-state ms per i-PI step with the replay driver (no model time)."""
    xml = folder / f"nve_replay_{member_forces}.xml"
    xml.write_text(NVE_INPUT.format(steps=steps, structure=structure))
    run_dir = folder / f"replay_{time.monotonic_ns()}"
    run_dir.mkdir()
    plan = prepare_run(xml, run_dir)
    driver = ReplayDriver(model=str(model_path), template=str(structure),
                          member_forces=member_forces)
    with open(run_dir / "ipi.log", "w") as log:
        server = subprocess.Popen([sys.executable, ipi_executable(), "input.xml"],
                                  cwd=run_dir, stdout=log, stderr=subprocess.STDOUT)
        try:
            serve(driver, **plan.sockets[0].connect_kwargs())
        finally:
            server.wait(timeout=60)
    return 1e3 * driver.log.seconds_per_evaluation()


def compare(model_path, frame, structure, folder, steps, members) -> dict:
    """One repeat: wall and CPU ms per step of both, and their ratios."""
    before = ase_cost(model_path, frame, steps, members)
    ipi = ipi_cost(model_path, structure, folder, steps, members)
    after = ase_cost(model_path, frame, steps, members)
    ase = (0.5 * (before[0] + after[0]), 0.5 * (before[1] + after[1]))
    overhead = overhead_ms(model_path, structure, folder, members)
    return {"ase_wall_ms": ase[0], "ipi_wall_ms": ipi[0], "wall_ratio": ipi[0] / ase[0],
            "ase_cpu_ms": ase[1], "ipi_cpu_ms": ipi[1], "cpu_ratio": ipi[1] / ase[1],
            "overhead_ms": overhead, "overhead_ratio": (ase[0] + overhead) / ase[0]}


def median_repeat(runs: list[dict], key: str) -> dict:
    """The repeat whose ``key`` is the median."""
    return sorted(runs, key=lambda run: run[key])[len(runs) // 2]


def main(argv=None) -> dict:
    """Run both comparisons, print the ratios and optionally write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3, help="report the median repeat")
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
            runs = [compare(model_path, frame, structure, folder, args.steps, members)
                    for _ in range(args.repeats)]
            wall, cpu = median_repeat(runs, "wall_ratio"), median_repeat(runs, "cpu_ratio")
            replay = median_repeat(runs, "overhead_ratio")
            results[name] = {"wall": wall, "cpu": cpu, "replay": replay, "repeats": runs}
            print(f"{name}: wall ASE {wall['ase_wall_ms']:.2f} ms/step, i-PI+driver "
                  f"{wall['ipi_wall_ms']:.2f}, ratio {wall['wall_ratio']:.3f} | CPU ASE "
                  f"{cpu['ase_cpu_ms']:.2f}, i-PI+driver {cpu['ipi_cpu_ms']:.2f}, ratio "
                  f"{cpu['cpu_ratio']:.3f} | replay overhead {replay['overhead_ms']:.2f} ms/step,"
                  f" ratio {replay['overhead_ratio']:.3f} (medians of {args.repeats}; "
                  f"goal <= {GOAL})")
    report = {"system": "water 64 H2O, 192 atoms", "model": model_name, "steps": args.steps,
              "repeats": args.repeats,
              "torch_threads": torch.get_num_threads(), "goal_ratio": GOAL,
              "machine": platform.platform(), "cpus": os.cpu_count(),
              "load_average": os.getloadavg(), "results": results}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
