"""Cost of the ensemble on a 192-atom water frame, one torch thread, median of >= 20 calls.

Prints and writes (``--json OUT``):
- ratio_energy_sigma: (energy + mean forces + σ_E, M heads) / (the same backbone, one head);
  goal <= 1.10
- ratio_member_forces_M{8,32,64}: all member forces / one mean-force call; goal <= 3 at M=64
  (a loop over members costs about M/2.5 here)
- ms_per_atom_{192,1536,12288}: energy + mean forces + σ_E per atom; goal: flat (linear)
- ratio_member_loop_M64: the member loop for comparison

At M = 32 and 64 the member forces take the same route (d = 16 feature rows, mixed into the
members), and on the 2-core development machine one such call measured 26–41 ms from run to
run (bimodal, 8 ms for the mean-force call after warm-up), so those two ratios read 3.3–5.2:
quote several runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import ase.io
import torch
from ase.build import make_supercell

from shallow_ensembles.data import Batch
from shallow_ensembles.model import ShallowEnsemble
from shallow_ensembles.model.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
WATER = ROOT / "examples" / "data" / "water_64H2O_60frames.extxyz"


WARM_UP_S = 5.0
"""Seconds of calls before any timing: the first seconds of a process run the same call up to
2× slower (measured: a mean-force call 16 ms, then 8 ms), which made the ratios depend on the
order of the measurements (M = 32 at 5.4, M = 64 at 3.3, for the same member-force route)."""


def warm_up(fn, seconds: float = WARM_UP_S) -> None:
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()


def median_ms(fn, calls: int) -> float:
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def print_results(results: dict, json_path: str | None) -> None:
    """One line per result; the same as JSON in ``json_path`` when given."""
    for key, value in results.items():
        print(f"{key:28s} {value:.4g}" if isinstance(value, float) else f"{key:28s} {value}")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=1))


def model_with(n_members: int, reference: ShallowEnsemble | None = None) -> ShallowEnsemble:
    torch.manual_seed(0)
    model = ShallowEnsemble.from_config(ModelConfig(n_members=n_members), [1, 8])
    if reference is not None:  # share backbone and bottleneck weights
        model.backbone.load_state_dict(reference.backbone.state_dict())
        model.bottleneck.load_state_dict(reference.bottleneck.state_dict())
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    atoms = ase.io.read(WATER, 0)
    batch = Batch.from_atoms(atoms, 5.0, dtype=torch.float32)
    base = model_with(8)
    base.backbone.fit_density_scale(batch)
    results = {"threads": 1, "calls": args.calls, "atoms": len(atoms),
               "pairs": int(batch.i.shape[0])}

    warm_up(lambda: base.member_forces(batch))
    single = model_with(1, base)
    t_single = median_ms(lambda: single.predict(batch, forces=True), args.calls)
    t_ens = median_ms(lambda: base.predict(batch, forces=True), args.calls)
    results["ms_single_head"] = t_single
    results["ms_energy_sigma_M8"] = t_ens
    results["ratio_energy_sigma"] = t_ens / t_single
    for m in (8, 32, 64):
        model = model_with(m, base)
        mean = median_ms(lambda model=model: model.predict(batch, forces=True), args.calls)
        members = median_ms(lambda model=model: model.member_forces(batch), args.calls)
        results[f"ms_member_forces_M{m}"] = members
        results[f"ratio_member_forces_M{m}"] = members / mean
    model = model_with(64, base)
    loop = median_ms(lambda: model.member_forces(batch, method="loop"), max(3, args.calls // 5))
    results["ratio_member_loop_M64"] = loop / median_ms(
        lambda: model.predict(batch, forces=True), args.calls)
    for n in (1, 2, 4):
        big = make_supercell(atoms, n * torch.eye(3).numpy())
        big_batch = Batch.from_atoms(big, 5.0, dtype=torch.float32)
        calls = args.calls if n < 4 else max(5, args.calls // 4)
        ms = median_ms(lambda b=big_batch: base.predict(b, forces=True), calls)
        results[f"ms_per_atom_{len(big)}"] = ms / len(big)
    print_results(results, args.json)


if __name__ == "__main__":
    main()
