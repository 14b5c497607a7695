"""Member-force cost of the MACE backbone on a 192-atom water frame, one torch thread.

Prints and writes (``--json OUT``), for M = 8, 32, 64 members (32 channels, L = 1, 2
interactions, r_max 5 Å, float32, medians of ``--calls`` calls, CPU time):
- ms_force_call: one energy + mean-force call (the unit of every ratio)
- ratio_member_forces_M{M}: all member forces (route ``auto``: min(M, d = 16) backward passes
  through one retained graph, + one for MACE's shared energy when M > d) / one force call;
  goal <= 0.7 * min(M, 16) + 1
- ratio_member_loop_M{M}: one backward pass per member (the paper's cost model), for comparison
- ms_per_atom_{192,1536}: energy + mean forces + σ_E per atom (flat = linear scaling)
"""

from __future__ import annotations

import argparse
import statistics
import time

import ase.io
import torch
from ase.build import make_supercell
from ensemble_cost import WATER, print_results

from shallow_ensembles.data import Batch
from shallow_ensembles.model import ShallowEnsemble
from shallow_ensembles.model.config import ModelConfig

BACKBONE = {"kind": "mace", "cutoff_A": 5.0, "channels": 32, "max_L": 1, "num_interactions": 2,
            "correlation": 3}


def median_ms(fn, calls: int) -> float:
    """Median CPU ms of ``fn()`` (process time: with one thread it is the wall time of an idle
    machine, and it stays so on a busy one)."""
    fn()
    times = []
    for _ in range(calls):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times)


def model_with(n_members: int, batch: Batch) -> ShallowEnsemble:
    torch.manual_seed(0)
    config = ModelConfig(backbone=BACKBONE, n_members=n_members)
    return ShallowEnsemble.from_config(config, [1, 8], batch).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    atoms = ase.io.read(WATER, 0)
    batch = Batch.from_atoms(atoms, 5.0, dtype=torch.float32)
    results = {"threads": 1, "calls": args.calls, "atoms": len(atoms),
               "pairs": int(batch.i.shape[0]), "backbone": BACKBONE}
    for m in (8, 32, 64):
        model = model_with(m, batch)
        force = median_ms(lambda model=model: model.predict(batch, forces=True), args.calls)
        members = median_ms(lambda model=model: model.member_forces(batch), args.calls)
        loop = median_ms(lambda model=model: model.member_forces(batch, method="loop"),
                         max(1, args.calls // 2))
        results[f"ms_force_call_M{m}"] = force
        results[f"ratio_member_forces_M{m}"] = members / force
        results[f"goal_member_forces_M{m}"] = 0.7 * min(m, 16) + 1
        results[f"ratio_member_loop_M{m}"] = loop / force
    model = model_with(8, batch)
    for n in (1, 2):
        big = make_supercell(atoms, n * torch.eye(3).numpy())
        big_batch = Batch.from_atoms(big, 5.0, dtype=torch.float32)
        ms = median_ms(lambda b=big_batch: model.predict(b, forces=True), args.calls)
        results[f"ms_per_atom_{len(big)}"] = ms / len(big)
    print_results(results, args.json)


if __name__ == "__main__":
    main()
