"""Train a shallow ensemble with the two-step LLPR protocol on the shipped water subset.

SHALLOW_ENSEMBLES_SMOKE=1 shortens every stage to a few epochs (used by the tests).
"""

import os
from pathlib import Path

from shallow_ensembles.training import train
from shallow_ensembles.training.config import load_train_config

HERE = Path(__file__).resolve().parent
SMOKE = os.environ.get("SHALLOW_ENSEMBLES_SMOKE") == "1"
output = Path(os.environ.get("EXAMPLE_OUTPUT", "runs/example_two_step"))

overrides = [f"output_dir={output}", f"data.train_file={HERE / 'data/water_64H2O_60frames.extxyz'}"]
if SMOKE:
    overrides += ["data.n_train=6", "data.n_validation=3", "data.n_test=3",
                  "stages=[{kind: mse, epochs: 2}, {kind: llpr}, {kind: force-nll, epochs: 1}]",
                  "model.hidden=[16, 16]"]
config = load_train_config(HERE / "configs/demo_water_two_step.yaml", overrides)
model = train(config)
print(f"α_E = {float(model.alpha_energy):.3g}, α_F = {float(model.alpha_forces):.3g}; "
      f"model in {output / 'model.pt'}")
