"""Helpers shared by the verbs: config preambles, logging, training curves, labelled data."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_STOPPED = 3
"""``md`` ended early by a stop action, a rollback or a callback (outputs are complete)."""
EXIT_GUARD = 4
"""``md`` ended by the guard: the last good frame is in ``last_good.extxyz``."""


def config_preamble(args: argparse.Namespace, config_class, verb: str,
                    required: str | None = None) -> int | None:
    """The common start of a verb driven by a YAML file: an exit code, or None to go on.

    ``--print-defaults`` prints the commented YAML template of ``config_class`` (0); with
    ``required`` naming the positional file argument (e.g. ``"config"``), its absence is a
    usage error (2).
    """
    if args.print_defaults:
        from ..config import template

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


def training_curves(run_dir: Path) -> None:
    """Draw ``run_dir/training_curves.png`` from its ``train_log.csv`` (rank 0 only)."""
    log = run_dir / "train_log.csv"
    if log.exists() and os.environ.get("RANK", "0") == "0":
        from ..plots.training import training_curves as draw

        draw(log, run_dir / "training_curves.png")


def labelled_graphs(model, path):
    """The labelled structures of ``path`` as graphs for ``model`` (its elements and cutoff)."""
    from ..data import graphs_from_atoms, read_structures

    return graphs_from_atoms(read_structures(path, elements=model.species), model.cutoff)
