"""Evaluate the shipped water model on the shipped frames: metrics, report and plots.

SHALLOW_ENSEMBLES_SMOKE=1 evaluates two frames only (used by the tests).
"""

import os
from pathlib import Path

from shallow_ensembles import load_model
from shallow_ensembles.data import graphs_from_atoms, read_structures
from shallow_ensembles.evaluation import evaluate

HERE = Path(__file__).resolve().parent
SMOKE = os.environ.get("SHALLOW_ENSEMBLES_SMOKE") == "1"
output = Path(os.environ.get("EXAMPLE_OUTPUT", "runs/example_evaluation"))

model = load_model(HERE.parent / "models" / "water_two_step.pt")
frames = read_structures(HERE / "data" / "water_64H2O_60frames.extxyz",
                         index=":2" if SMOKE else ":")
metrics = evaluate(model, graphs_from_atoms(frames, model.cutoff), output)
forces = metrics["calibrated"]["forces"]
print(f"forces: RMSE {forces['rmse']:.3f} eV/Å, RLL {forces['rll']:.1f} %, "
      f"miscalibration area {forces['miscalibration_area']:.3f}; report: {output / 'report.md'}")
