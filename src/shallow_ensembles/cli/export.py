"""CLI verb ``export``: a model file → a metatomic TorchScript model (LAMMPS, i-PI, ASE)."""

from __future__ import annotations


def register(sub) -> None:
    """Add the ``export`` verb."""
    p = sub.add_parser("export", help="write a metatomic AtomisticModel (TorchScript) for "
                       "LAMMPS, i-PI, ASE and other engines")
    p.add_argument("model", help="model file written by train/calibrate (MODEL.pt)")
    p.add_argument("--output", required=True, help="metatomic file to write "
                   "(e.g. MODEL-metatomic.pt)")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                   help="dtype engines run the model in (default float64: float32 weights "
                   "are promoted exactly)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    """``shallow-ensembles export``."""
    import sys

    from ..export import export_model

    path = export_model(args.model, args.output, dtype=args.dtype)
    print(f"wrote {path}", file=sys.stderr)
    return 0
