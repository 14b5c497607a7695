"""Verb ``evaluate``: metrics, report and plots of a model on labelled data."""

from __future__ import annotations

from pathlib import Path

from .common import labelled_graphs


def register(sub) -> None:
    """Add the ``evaluate`` verb."""
    p = sub.add_parser("evaluate", help="metrics, report and plots of a model on labelled data")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--output", required=True, help="folder for metrics.json, report.md, PNGs")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    """``shallow-ensembles evaluate``."""
    from ..evaluation import evaluate
    from ..model import load_model

    model = load_model(args.model)
    metrics = evaluate(model, labelled_graphs(model, args.data), args.output,
                       title=Path(args.data).name)
    cal = metrics["calibrated"]
    print(f"energy RMSE {cal['energy_per_atom']['rmse'] * 1000:.2f} meV/atom, RLL "
          f"{cal['energy']['rll']:.1f} %; forces RMSE {cal['forces']['rmse'] * 1000:.1f} meV/Å, "
          f"RLL {cal['forces']['rll']:.1f} % -> {args.output}")
    return 0
