"""Verb ``train``: a shallow ensemble from a YAML config."""

from __future__ import annotations

from pathlib import Path

from .common import config_preamble, log_to_stderr, training_curves


def register(sub) -> None:
    """Add the ``train`` verb."""
    p = sub.add_parser("train", help="train a shallow ensemble from a YAML config")
    p.add_argument("config", nargs="?", help="YAML config (see --print-defaults)")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set training.batch_size=8")
    p.add_argument("--print-defaults", action="store_true",
                   help="print every option with its default as commented YAML")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    """``shallow-ensembles train``."""
    from ..training.config import TrainConfig, load_train_config

    code = config_preamble(args, TrainConfig, "train", required="config")
    if code is not None:
        if args.print_defaults:
            from ..model.registry import options_template
            from ..training.stages import kinds_template

            print(kinds_template())
            print(options_template())
        return code
    config = load_train_config(args.config, args.set)
    log_to_stderr()
    from ..training import train

    train(config, resume=args.resume)
    training_curves(Path(config.output_dir))
    print(f"model written to {Path(config.output_dir) / 'model.pt'}")
    return 0
