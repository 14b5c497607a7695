"""The ``shallow-ensembles`` command: argument parsing only, one library call per verb.

Each verb is a module of this package (:data:`VERBS`) with ``register(subparsers)``; a verb
sets ``func(args) -> int | None``. Verb modules import nothing heavy at module level, so
``--help`` stays instant; shared helpers live in :mod:`~shallow_ensembles.cli.common`. Adding a
verb is one module and one entry in :data:`VERBS`. Exit codes (one line on stderr, the traceback
only with ``--debug``):

====  ==========================================================================================
0     success
1     any other error
2     config, data or model-file error
3     ``md``: stopped early by an uncertainty action (``stop``, ``rollback``) or a callback
4     ``md``: stopped by the guard (non-finite values, huge forces or close contacts)
130   interrupted (Ctrl-C)
====  ==========================================================================================
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import ShallowEnsembleError

VERBS = ("train", "calibrate", "evaluate", "demo", "md", "reweight", "ipi", "active_learn",
         "export")
"""Verb modules of this package, in ``--help`` order."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every verb of :data:`VERBS`."""
    parser = argparse.ArgumentParser(
        prog="shallow-ensembles",
        description="Shallow-ensemble interatomic potentials with calibrated uncertainties.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="verb", required=True)
    for name in VERBS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
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
    except Exception as err:  # noqa: BLE001 - one line for users; --debug shows the traceback
        if args.debug:
            raise
        text = " ".join(str(err).split()) or "(no message)"
        print(f"error: {type(err).__name__}: {text} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
