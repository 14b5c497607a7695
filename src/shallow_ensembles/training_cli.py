"""CLI verbs of the training side: train, calibrate, evaluate, demo."""

from __future__ import annotations

import os
from pathlib import Path

from .cli import config_preamble, log_to_stderr


def register(sub) -> None:
    """Add the ``train``, ``calibrate``, ``evaluate`` and ``demo`` verbs."""
    p = sub.add_parser("train", help="train a shallow ensemble from a YAML config")
    p.add_argument("config", nargs="?", help="YAML config (see --print-defaults)")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set training.batch_size=8")
    p.add_argument("--print-defaults", action="store_true",
                   help="print every option with its default as commented YAML")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("calibrate", help="fit α_E and α_F on labelled data, store in the model")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--method", choices=["nll", "mae"], default="nll")
    p.add_argument("--per-element", action="store_true", help="also fit α_F per element")
    p.add_argument("--output", help="write the calibrated model here (default: in place)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("evaluate", help="metrics, report and plots of a model on labelled data")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--output", required=True, help="folder for metrics.json, report.md, PNGs")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="the main job on shipped data: two-step training, "
                       "calibration, evaluation with plots, a short MD with E ± σ")
    p.add_argument("--output", default="demo-output")
    p.add_argument("--skip-training", action="store_true",
                   help="use the shipped model instead of training one")
    p.add_argument("--md-steps", type=int, default=20)
    p.set_defaults(func=cmd_demo)


def cmd_train(args) -> int:
    """``shallow-ensembles train``."""
    from .config import TrainConfig, load_train_config

    code = config_preamble(args, TrainConfig, "train", required="config")
    if code is not None:
        if args.print_defaults:
            from .model.registry import options_template

            print(options_template())
        return code
    config = load_train_config(args.config, args.set)
    log_to_stderr()
    from .training import train

    train(config, resume=args.resume)
    _training_curves(Path(config.output_dir))
    print(f"model written to {Path(config.output_dir) / 'model.pt'}")
    return 0


def _training_curves(run_dir: Path) -> None:
    log = run_dir / "train_log.csv"
    if log.exists() and os.environ.get("RANK", "0") == "0":
        from .plots import training_curves

        training_curves(log, run_dir / "training_curves.png")


def _graphs(model, path):
    from .data import graphs_from_atoms, read_structures

    return graphs_from_atoms(read_structures(path, elements=model.species), model.cutoff)


def cmd_calibrate(args) -> int:
    """``shallow-ensembles calibrate``."""
    from .calibration import calibrate
    from .model import load_model, save_model

    model = load_model(args.model)
    alphas = calibrate(model, _graphs(model, args.data), method=args.method,
                       per_element=args.per_element)
    out = save_model(model, args.output or args.model,
                     {"calibration_data": str(args.data), "calibration_method": args.method})
    print(f"α_E = {alphas['alpha_energy']:.4g}, α_F = {alphas['alpha_forces']:.4g} -> {out}")
    return 0


def cmd_evaluate(args) -> int:
    """``shallow-ensembles evaluate``."""
    from .evaluation import evaluate
    from .model import load_model

    model = load_model(args.model)
    metrics = evaluate(model, _graphs(model, args.data), args.output, title=Path(args.data).name)
    cal = metrics["calibrated"]
    print(f"energy RMSE {cal['energy_per_atom']['rmse'] * 1000:.2f} meV/atom, RLL "
          f"{cal['energy']['rll']:.1f} %; forces RMSE {cal['forces']['rmse'] * 1000:.1f} meV/Å, "
          f"RLL {cal['forces']['rll']:.1f} % -> {args.output}")
    return 0


def cmd_demo(args) -> int:
    """``shallow-ensembles demo``."""
    from .demo import run_demo

    log_to_stderr()
    return run_demo(Path(args.output), skip_training=args.skip_training, md_steps=args.md_steps)



