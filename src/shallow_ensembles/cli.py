"""The ``shallow-ensembles`` command: argument parsing only, one library call per verb.

Each feature module registers its verbs in a small ``*_cli.py`` file that imports nothing heavy
at module level, so ``--help`` stays instant. Exit codes (one line on stderr, the traceback only
with ``--debug``):

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

from .errors import ShallowEnsembleError

EXIT_STOPPED = 3
"""``md`` ended early by a stop action, a rollback or a callback (outputs are complete)."""
EXIT_GUARD = 4
"""``md`` ended by the guard: the last good frame is in ``last_good.extxyz``."""

# modules defining ``register(subparsers)``; each verb sets ``func(args) -> int | None``
VERB_MODULES = (
    "shallow_ensembles.training_cli",
    "shallow_ensembles.md_cli",
    "shallow_ensembles.ipi_cli",
    "shallow_ensembles.al_cli",
    "shallow_ensembles.export_cli",
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


def config_preamble(args: argparse.Namespace, config_class, verb: str,
                    required: str | None = None) -> int | None:
    """The common start of a verb driven by a YAML file: an exit code, or None to go on.

    ``--print-defaults`` prints the commented YAML template of ``config_class`` (0); with
    ``required`` naming the positional file argument (e.g. ``"config"``), its absence is a
    usage error (2).
    """
    if args.print_defaults:
        from .config import template

        print(template(config_class))
        return 0
    if required and not getattr(args, required):
        print(f"error: {verb} needs {required.upper()}.yaml (or --print-defaults)",
              file=sys.stderr)
        return 2
    return None


def log_to_stderr() -> None:
    """Show the library's INFO log records (progress of long jobs) as plain lines on stderr."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


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
