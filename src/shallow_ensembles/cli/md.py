"""Verb ``md``: an uncertainty-monitored MD protocol with ASE (parsing only).

Heavy modules (torch, ASE dynamics, matplotlib) are imported inside the function, so ``--help``
stays instant. Exits 0 when the run completed, 3 when a stop action, a rollback or a callback
ended it early, 4 when the guard stopped it (:mod:`shallow_ensembles.cli`).
"""

from __future__ import annotations

import argparse

from .common import EXIT_GUARD, EXIT_STOPPED, config_preamble


def register(subparsers) -> None:
    """Add the ``md`` verb."""
    md = subparsers.add_parser(
        "md", help="uncertainty-monitored MD with ASE",
        description="Run an MD protocol (md_protocols/*.yaml) with the uncertainty monitor.")
    md.add_argument("protocol", nargs="?", help="protocol YAML")
    md.add_argument("--model", help="model file (.pt)")
    md.add_argument("--structure", help="starting structure (ASE-readable; last frame)")
    md.add_argument("--output", help="output folder")
    md.add_argument("--steps", type=int, help="number of steps (overrides the protocol)")
    md.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a protocol option, e.g. --set dynamics.temperature_K=350")
    md.add_argument("--no-progress", action="store_true", help="no progress bar")
    md.add_argument("--print-defaults", action="store_true",
                    help="print every protocol option with its default and exit")
    md.set_defaults(func=md_command)


def md_command(args: argparse.Namespace) -> int:
    """``shallow-ensembles md``: run the protocol and print a closing summary."""
    from ..errors import ConfigError
    from ..md.config import MDConfig

    code = config_preamble(args, MDConfig, "md")
    if code is not None:
        if args.print_defaults:
            print(kinds_template())
        return code
    missing = [flag for flag, value in (("PROTOCOL", args.protocol), ("--model", args.model),
                                        ("--structure", args.structure),
                                        ("--output", args.output)) if not value]
    if missing:
        raise ConfigError("md", f"missing {', '.join(missing)}")

    from ..calculator import ShallowEnsembleCalculator
    from ..md.config import load_md_config
    from ..md.run import read_structure, run_md

    config = load_md_config(args.protocol, args.overrides)
    atoms = read_structure(args.structure)
    result = run_md(atoms, ShallowEnsembleCalculator(args.model), config, args.output,
                    steps=args.steps, progress=not args.no_progress)
    print(f"steps run:        {result.steps_run}")
    print(f"outcome:          {result.message}")
    print(f"candidates saved: {result.candidates_saved}"
          + "".join(f"\n  {name}: {n}" for name, n in result.saved.items()))
    for label, record in (("first candidate", result.first_candidate),
                          ("first failed", result.first_failed)):
        if record is not None:
            target = record.get("target_temperature_K")
            print(f"{label + ':':17} step {record['step']}, {record['time_fs']:.1f} fs, "
                  f"T = {record['temperature_K']:.1f} K"
                  + (f" (target {target:.1f} K)" if target is not None else ""))
    print(f"outputs in:       {result.output_dir}")
    return exit_code(result.stop_reason)


def kinds_template() -> str:
    """Commented lines listing the registered integrators and actions (for the template)."""
    from ..md.actions import ACTIONS
    from ..md.dynamics import INTEGRATORS

    lines = ["# Dynamics kinds (dynamics.kind), md/dynamics.py, with the options they need:"]
    lines += [f"#   {entry.name}: {', '.join(sorted(entry.needs)) or '-'}"
              for entry in INTEGRATORS.values()]
    lines.append("# Action kinds (actions[k].kind), md/actions.py:")
    lines += [f"#   {kind}: {' '.join((cls.__doc__ or '').split())}"
              for kind, cls in ACTIONS.items()]
    return "\n".join(lines)


def exit_code(stop_reason: str) -> int:
    """The exit status of ``md`` for :attr:`MDResult.stop_reason` (table in
    :mod:`shallow_ensembles.cli`)."""
    return {"completed": 0, "guard": EXIT_GUARD}.get(stop_reason, EXIT_STOPPED)
