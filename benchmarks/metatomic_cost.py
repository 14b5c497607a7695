"""Cost of the metatomic export: ms per ASE call through metatomic-ase vs our calculator.

The shipped water model on 192- and 1536-atom water (one torch thread, median of ``--calls``
calls, each after a small displacement of every atom so that nothing is cached). One call is
energy + forces + stress + σ_E in both: ``ShallowEnsembleCalculator`` (σ_E always) and
``metatomic_ase.MetatomicCalculator`` on the exported file with ``energy_uncertainty`` requested
as an additional output. Both run in the same dtype (float32: the model's own; float64: the
export's default). metatomic-ase keeps a Verlet neighbour list (skin 2 Å), ours rebuilds it.

Prints and writes (``--json OUT``) ``ms_ours``, ``ms_metatomic`` and ``ratio`` (metatomic /
ours) per size and dtype; goal: ratio <= 1.3.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
WATER = ROOT / "examples" / "data" / "water_64H2O_60frames.extxyz"
MODEL = ROOT / "models" / "water_two_step.pt"


def median_ms(atoms, calls: int) -> float:
    rng = np.random.default_rng(0)
    start_positions = atoms.positions.copy()
    atoms.get_forces()
    times = []
    for _ in range(calls):
        atoms.positions = start_positions + rng.normal(0.0, 0.01, atoms.positions.shape)
        start = time.perf_counter()
        atoms.get_forces()
        atoms.get_stress()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2],
                        help="supercell repetitions of the 192-atom frame (1: 192, 2: 1536)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import metatomic.torch as mta
    from metatomic_ase import MetatomicCalculator

    from shallow_ensembles.calculator import ShallowEnsembleCalculator
    from shallow_ensembles.export import export_model

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "float64"):
            exported = export_model(MODEL, Path(tmp) / f"water-{dtype}.pt", dtype=dtype)
            for repeat in args.sizes:
                atoms = ase.io.read(WATER, 0).repeat(repeat)
                atoms.calc = ShallowEnsembleCalculator(MODEL, dtype=dtype)
                ours = median_ms(atoms, args.calls)
                outputs = {"energy_uncertainty": mta.ModelOutput(unit="eV",
                                                                 sample_kind="system")}
                atoms.calc = MetatomicCalculator(str(exported), additional_outputs=outputs,
                                                 uncertainty_threshold=None)
                theirs = median_ms(atoms, args.calls)
                key = f"{len(atoms)}_{dtype}"
                results[key] = {"ms_ours": round(ours, 2), "ms_metatomic": round(theirs, 2),
                                "ratio": round(theirs / ours, 3)}
                print(f"{len(atoms):5d} atoms {dtype}: ours {ours:8.1f} ms, metatomic-ase "
                      f"{theirs:8.1f} ms, ratio {theirs / ours:.2f} (goal <= 1.3)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
