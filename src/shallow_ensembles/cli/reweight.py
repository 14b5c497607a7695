"""Verb ``reweight``: committee reweighting of MD averages (parsing and printing only)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    """Add the ``reweight`` verb."""
    rw = subparsers.add_parser(
        "reweight", help="committee reweighting of MD averages",
        description="<A> ± σ over the committee from member energies logged along a run on the "
                    "mean potential (direct and cumulant reweighting, Imbalzano et al. 2021).")
    rw.add_argument("energies", help="committee_energies.dat, trajectory.extxyz or an i-PI "
                                     "committee_pot extras file (Hartree)")
    rw.add_argument("--temperature-K", type=float, required=True, dest="temperature_K",
                    help="temperature of the run, K")
    source = rw.add_mutually_exclusive_group()
    source.add_argument("--observable", help="per-frame values: .npy or a text table "
                                             "(frames × k)")
    source.add_argument("--property", choices=("energy", "energy_per_atom", "density", "volume"),
                        help="a built-in observable (default: energy, the mean potential)")
    rw.add_argument("--method", choices=("direct", "cumulant", "both"), default="both")
    rw.add_argument("--skip", type=int, default=0, help="discard the first N frames")
    rw.add_argument("--energy-unit", choices=("auto", "eV", "Ha"), default="auto",
                    help="unit of a text energies file (auto: Ha for i-PI extras, else eV)")
    rw.add_argument("--min-ess-fraction", type=float, default=0.1,
                    help="warn when the effective sample size is below this fraction")
    rw.set_defaults(func=reweight_command)


def reweight_command(args: argparse.Namespace) -> int:
    """``shallow-ensembles reweight``: print <A> ± σ and the effective sample size."""
    from pathlib import Path

    import numpy as np

    from ..errors import DataError
    from ..md.reweight import observable_from_property, read_energies, reweight

    energies, frames = read_energies(args.energies, unit=args.energy_unit)
    if args.observable:
        path = Path(args.observable)
        if not path.is_file():
            raise DataError("no such file", file=path)
        try:
            values = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=1)
        except ValueError as err:
            raise DataError(f"cannot read the observable: {err}", file=path) from err
        name, unit = path.name, ""
    else:
        name = args.property or "energy"
        values, unit = observable_from_property(name, energies, frames)
    if args.skip < 0 or args.skip >= energies.shape[0]:
        raise DataError(f"--skip {args.skip} leaves no frames of {energies.shape[0]}",
                        file=args.energies)
    energies, values = energies[args.skip:], np.asarray(values)[args.skip:]
    methods = ("direct", "cumulant") if args.method == "both" else (args.method,)
    n_frames, n_members = energies.shape
    print(f"# {name}{f' ({unit})' if unit else ''}: {n_frames} frames, M = {n_members}, "
          f"T = {args.temperature_K:g} K")
    print(f"# plain average on the mean potential: {_fmt(values.mean(axis=0))}")
    for method in methods:
        result = reweight(energies, values, args.temperature_K, method,
                          min_ess_fraction=args.min_ess_fraction)
        mean, std = np.atleast_1d(result.mean), np.atleast_1d(result.std)
        print(f"{method:9s} ESS min {result.min_ess:.1f}, mean {result.ess.mean():.1f} "
              f"of {n_frames}")
        for i, (m, s) in enumerate(zip(mean.ravel(), std.ravel(), strict=True)):
            index = f"[{i}] " if mean.size > 1 else ""
            print(f"  {index}<A> = {m:.8g} ± {s:.3g}{f' {unit}' if unit else ''}")
    sys.stdout.flush()
    return 0


def _fmt(value) -> str:
    import numpy as np

    value = np.atleast_1d(value)
    return " ".join(f"{v:.8g}" for v in value.ravel()[:8]) + (" ..." if value.size > 8 else "")
