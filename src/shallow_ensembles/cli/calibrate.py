"""Verb ``calibrate``: fit α_E and α_F on labelled data and store them in the model."""

from __future__ import annotations

from .common import labelled_graphs


def register(sub) -> None:
    """Add the ``calibrate`` verb."""
    p = sub.add_parser("calibrate", help="fit α_E and α_F on labelled data, store in the model")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--method", choices=["nll", "mae"], default="nll")
    p.add_argument("--per-element", action="store_true", help="also fit α_F per element")
    p.add_argument("--output", help="write the calibrated model here (default: in place)")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args) -> int:
    """``shallow-ensembles calibrate``."""
    from ..calibration import calibrate
    from ..model import load_model, save_model

    model = load_model(args.model)
    alphas = calibrate(model, labelled_graphs(model, args.data), method=args.method,
                       per_element=args.per_element)
    out = save_model(model, args.output or args.model,
                     {"calibration_data": str(args.data), "calibration_method": args.method})
    print(f"α_E = {alphas['alpha_energy']:.4g}, α_F = {alphas['alpha_forces']:.4g} -> {out}")
    return 0
