"""Verb ``active-learn`` of the ``shallow-ensembles`` command (parsing only; heavy imports are
inside the function so that ``--help`` stays instant)."""

from __future__ import annotations

import argparse

from .common import config_preamble, log_to_stderr


def register(subparsers) -> None:
    """Add the ``active-learn`` verb."""
    p = subparsers.add_parser(
        "active-learn", help="active learning: MD walkers → select → label → fine-tune",
        description="Rounds of uncertainty-monitored MD walkers, a diverse selection of their "
                    "candidates, labels from a reference calculator (GFN2-xTB via tblite or any "
                    "ASE calculator), and a short fine-tune with recalibration; stops when the "
                    "candidate rate falls below a target or after N rounds.")
    p.add_argument("protocol", nargs="?", help="active-learning protocol YAML")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in output_dir, skipping completed rounds")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an option, e.g. --set stopping.max_rounds=5")
    p.add_argument("--print-defaults", action="store_true",
                   help="print every option with its default as commented YAML and exit")
    p.set_defaults(func=active_learn_command)


def active_learn_command(args: argparse.Namespace) -> int:
    """``shallow-ensembles active-learn``: run the loop and print the per-round table."""
    from ..active_learning.config import ActiveLearningConfig

    code = config_preamble(args, ActiveLearningConfig, "active-learn", required="protocol")
    if code is not None:
        return code
    from ..active_learning import load_al_config, run_active_learning

    config = load_al_config(args.protocol, args.overrides)
    log_to_stderr()
    result = run_active_learning(config, resume=args.resume)
    print((result.output_dir / result.files["markdown"]).read_text())
    print(f"stopped:     {result.message}")
    print(f"final model: {result.model_file}")
    print(f"outputs in:  {result.output_dir}")
    return 0
