"""This project's side of the peer comparison: ASE call and MD timings of a model file.

Same command line and JSON output as the peers' scripts (``apax_peer.py``,
``metatrain_peer.py``); training is ``benchmarks/reproduce/run.py``. One torch thread.

    python ours_peer.py infer --model model.pt --structure water.extxyz [--member-forces]
    python ours_peer.py md --model model.pt --structure water.extxyz [--steps 100]
"""

from __future__ import annotations

import argparse

import ase.io
import torch
from timing import emit, md_steps_per_s, ms_per_call

from shallow_ensembles import __version__
from shallow_ensembles.calculator import ShallowEnsembleCalculator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("infer", "md"))
    parser.add_argument("--model", required=True, help="model file (.pt)")
    parser.add_argument("--structure", required=True, help="first frame is used")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--member-forces", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    atoms = ase.io.read(args.structure, 0)
    calc = ShallowEnsembleCalculator(args.model)
    record = {"package": "shallow-ensembles", "version": __version__, "n_atoms": len(atoms)}
    if args.command == "infer":
        properties = ["energy", "forces", "energy_uncertainty"]
        if args.member_forces:
            properties += ["forces_ensemble", "forces_uncertainty"]
        record.update(ms_per_call=ms_per_call(calc, atoms, properties, args.repeat),
                      member_forces=args.member_forces, outputs=sorted(calc.results))
    else:
        record["steps_per_s"] = md_steps_per_s(calc, atoms, args.steps)
    emit(record)


if __name__ == "__main__":
    main()
