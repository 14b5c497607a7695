"""Active learning of ethanol against GFN2-xTB (tblite: pip install 'shallow-ensembles[reference]').

Eight frames of tests/data/ethanol_60.extxyz, relabelled with GFN2-xTB (the file's labels are
DFT), train the round-0 model; eight more are the fixed validation set and twenty the fixed
test set (also relabelled). Each round, four Langevin walkers (300 K and 500 K, two seeds)
save frames whose max force σ exceeds the candidate level; farthest-point sampling on the
last-layer features picks eight, xTB labels them, and the model is fine-tuned with the short
two-step protocol and recalibrated. Three rounds, then one exploration with the final model.
The per-round table (test errors, candidate rate) is printed and written to report.md, with
rounds.png. Protocol: examples/configs/active_learning_ethanol.yaml.

SHALLOW_ENSEMBLES_SMOKE=1 runs one tiny round (used by the tests); EXAMPLE_OUTPUT sets the
output folder (default runs/example_active_learning). Running it again resumes the run.
"""

import logging
import os
import sys
import time
from pathlib import Path

from shallow_ensembles.active_learning import run_active_learning

HERE = Path(__file__).resolve().parent
SMOKE = os.environ.get("SHALLOW_ENSEMBLES_SMOKE") == "1"
output = Path(os.environ.get("EXAMPLE_OUTPUT", "runs/example_active_learning"))
ethanol = HERE.parent / "tests" / "data" / "ethanol_60.extxyz"

overrides = [f"output_dir={output}", f"data.train_file={ethanol}@0:8",
             f"data.validation_file={ethanol}@8:16", f"data.test_file={ethanol}@40:60"]
if SMOKE:
    overrides += [
        f"data.validation_file={ethanol}@8:11", f"data.test_file={ethanol}@40:44",
        "initial.model={cutoff_A: 3.0, n_radial: 4, n_channels: 3, hidden: [16, 16], "
        "bottleneck: 4, n_members: 4, dtype: float64}",
        "initial.stages=[{kind: mse, epochs: 2}, {kind: llpr}, {kind: force-nll, epochs: 1}]",
        "fine_tune.stages=[{kind: mse, epochs: 1}, {kind: llpr}, {kind: force-nll, epochs: 1}]",
        "walkers.temperatures_K=[300]", "walkers.seeds=[0]", "walkers.steps=10",
        "selection.n=2", "stopping={max_rounds: 1, min_candidate_rate: null}",
    ]

logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
start = time.perf_counter()
result = run_active_learning(HERE / "configs" / "active_learning_ethanol.yaml", resume=True,
                             overrides=overrides)
print((output / "report.md").read_text())
print(f"{result.message}; {time.perf_counter() - start:.0f} s; final model {result.model_file}")
