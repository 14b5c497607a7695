"""How the fine-tune defaults were chosen: a grid of fine-tunes from the same LLPR start.

    python benchmarks/reproduce/defaults.py ethanol     # after run.py ethanol (reuses its llpr)

From ``run.py``'s ``llpr`` model of the system, fine-tunes all parameters with energy + force
NLL for every combination of peak learning rate, warm-up epochs and energy weight below, each
with the package's cosine schedule over at most 30 epochs and early stopping on the validation
force NLL (patience 5, the best epoch kept), and scores them like ``run.py`` (α on validation,
metrics on test). Writes
``benchmarks/results/<system>_fine_tune_grid.md``/``.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
from common import OUT, SYSTEMS, load_predictions, markdown_table, prepare_data, score, write_report
from run import epochs_trained, predict_run, train_one

GRID = {"learning_rate": (2e-4, 5e-4, 1e-3, 2e-3), "warmup_epochs": (0, 2),
        "energy_weight": (1.0,)}
COLUMNS = (("CPU s", "time_s", ".0f"), ("epochs", "epochs", "d"),
           ("RMSE_E (meV/atom)", "rmse_e_meV_atom", ".2f"),
           ("RMSE_F (meV/Å)", "rmse_f_meV_A", ".1f"),
           ("RLL_E cal", "rll_e_cal", ".1f"), ("RLL_F cal", "rll_f_cal", ".1f"),
           ("NLL_F cal", "nll_f_cal", ".3f"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=sorted(SYSTEMS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    system = SYSTEMS[args.system]
    data = prepare_data(system)
    rows = {}
    for lr, warm, weight in itertools.product(*GRID.values()):
        name = f"grid-lr{lr:g}-warm{warm}-ew{weight:g}"
        stage = {"kind": "force-nll", "epochs": 30, "patience": 5, "learning_rate": lr,
                 "warmup_epochs": warm, "energy_weight": weight}
        folder = OUT / system.name / name
        if not (folder / "pred_test.npz").exists():
            cost = train_one(system, data, name, [stage], {"scheduler": "cosine"}, init="llpr")
            predict_run(system, data, name)
            (folder / "cost.json").write_text(json.dumps(cost))
        cost = json.loads((folder / "cost.json").read_text())
        pred = {s: load_predictions(folder / f"pred_{s}.npz") for s in ("validation", "test")}
        label = f"lr {lr:g}, warm-up {warm}, energy weight {weight:g}"
        rows[label] = {**score(pred["validation"], pred["test"]), "time_s": cost["cpu_s"],
                       "epochs": epochs_trained(system, name)}
        print(label, {k: round(v, 3) for k, v in rows[label].items() if v is not None},
              flush=True)
    text = "\n".join([
        f"# {system.name}: fine-tune grid from one LLPR start", "",
        "Each row fine-tunes `run.py`'s `llpr` model (MSE stage 1 + last-layer Laplace heads) "
        "with energy + force NLL, cosine schedule over at most 30 epochs, early stopping on the "
        "validation force NLL (patience 5). α on validation, metrics on test, CPU s of the "
        "fine-tune alone.", "",
        markdown_table(rows, COLUMNS), "",
        f"Command: `python benchmarks/reproduce/defaults.py {system.name}`", ""])
    write_report(f"{system.name}_fine_tune_grid", text, rows)
    print(text)


if __name__ == "__main__":
    main()
