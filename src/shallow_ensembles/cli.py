"""The ``shallow-ensembles`` command: argument parsing only, one library call per verb.

Each feature module registers its verbs in a small ``*_cli.py`` file that imports nothing heavy
at module level, so ``--help`` stays instant. Exit codes: 0 success, 2 config/data/model errors
(message, no traceback unless ``--debug``), 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import ShallowEnsembleError

# modules defining ``register(subparsers)``; each verb sets ``func(args) -> int | None``
VERB_MODULES = (
    "shallow_ensembles.training_cli",
    "shallow_ensembles.md_cli",
    "shallow_ensembles.ipi_cli",
    "shallow_ensembles.al_cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered verb."""
    parser = argparse.ArgumentParser(
        prog="shallow-ensembles",
        description="Shallow-ensemble interatomic potentials with calibrated uncertainties.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="verb", required=True)
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv=None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except (ShallowEnsembleError, FileNotFoundError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
