"""The MD walkers of a round: one uncertainty-monitored run per (temperature, seed), whose
``save`` actions collect the candidate frames."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any

import ase.io
from ase import Atoms

from ..calculator import ShallowEnsembleCalculator
from ..md.config import MDConfig
from ..md.run import MDResult, run_md
from ..model import ShallowEnsemble
from .config import WalkersConfig


def run_walkers(model: ShallowEnsemble, md: MDConfig, walkers: WalkersConfig,
                starts: list[Atoms], k: int, folder: Path) -> tuple[list[Atoms], list[dict]]:
    """Run every walker of round ``k`` with ``model``; outputs in ``folder/<walker>/``.

    Walker i starts from ``starts[(i + k) % len(starts)]`` with momenta drawn at its
    temperature, and runs with seed ``seed + 1000 k``.

    Returns
    -------
    (pool, records) : the candidate frames of all walkers (σ in info/arrays, tagged with
        ``al_round`` and ``al_walker``) and one record per walker (walker, temperature_K, seed,
        steps_run, stop_reason, n_candidates).
    """
    pool: list[Atoms] = []
    records: list[dict[str, Any]] = []
    pairs = itertools.product(walkers.temperatures_K, walkers.seeds)
    for i, (temperature, seed) in enumerate(pairs):
        name = f"T{temperature:g}K_seed{seed}"
        start = starts[(i + k) % len(starts)]
        atoms = Atoms(numbers=start.numbers, positions=start.positions, cell=start.cell,
                      pbc=start.pbc)
        protocol = walker_protocol(md, temperature, seed + 1000 * k, walkers.steps)
        result = run_md(atoms, ShallowEnsembleCalculator(model), protocol, folder / name)
        frames = collect_candidates(result, name, k)
        pool += frames
        records.append({"walker": name, "temperature_K": temperature, "seed": seed + 1000 * k,
                        "steps_run": result.steps_run, "stop_reason": result.stop_reason,
                        "n_candidates": len(frames)})
    return pool, records


def walker_protocol(md: MDConfig, temperature_K: float, seed: int, steps: int) -> MDConfig:
    """``md`` with a walker's temperature, seed and length (thermostat target, or the initial
    temperature for velocity_verlet)."""
    dynamics = md.dynamics
    if dynamics.thermostatted:
        dynamics = replace(dynamics, temperature_K=float(temperature_K), seed=int(seed))
    else:
        dynamics = replace(dynamics, initial_temperature_K=float(temperature_K), seed=int(seed))
    return replace(md, dynamics=dynamics, steps=int(steps))


def collect_candidates(result: MDResult, walker: str, k: int) -> list[Atoms]:
    """The frames written by a walker's save actions, tagged with ``al_round`` and
    ``al_walker``."""
    frames = []
    for name, count in result.saved.items():
        if count:
            for frame in ase.io.read(result.output_dir / name, ":"):
                frame.info.update({"al_round": k, "al_walker": walker})
                frames.append(frame)
    return frames
