"""The fine-tune's peak learning rate over several seeds: the package default against 2e-3.

    python benchmarks/reproduce/fine_tune_lr.py carbon    # after run.py carbon; --seeds 3

From ``run.py``'s two stage-1 models of the system (``llpr``: MSE + last-layer Laplace heads;
``energy-nll``), runs the two-step fine-tune exactly as ``run.py`` does (the package's
``FINE_TUNE``, ``run.py``'s batch, reduce-on-plateau schedule and one torch thread) with its
default peak learning rate and with 2e-3, for training seeds 0 … N−1 (the seed changes the
order of the batches; the start is the same), and scores them like ``run.py`` (α on
validation, metrics on test). ``defaults.py`` is the one-seed grid this checks (ethanol: lr
2e-3 without warm-up did best there). Writes ``benchmarks/results/<system>_fine_tune_lr.md``
and ``.json``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from common import OUT, SYSTEMS, load_predictions, markdown_table, prepare_data, score, write_report
from run import epochs_trained, predict_run, train_one

RATES = (None, 2e-3)
"""Peak learning rates compared (None: the package's ``FINE_TUNE`` default)."""
STARTS = {"llpr": "two-step-llpr", "energy-nll": "two-step-energy-nll"}
COLUMNS = (("CPU s", "time_s", ".0f"), ("epochs", "epochs", "d"),
           ("RMSE_E (meV/atom)", "rmse_e_meV_atom", ".2f"),
           ("RMSE_F (meV/Å)", "rmse_f_meV_A", ".1f"),
           ("RLL_E cal", "rll_e_cal", ".1f"), ("RLL_F cal", "rll_f_cal", ".1f"),
           ("offset share E", "offset_share", ".3f"))
KEYS = ("rmse_e_meV_atom", "rmse_f_meV_A", "rll_e_cal", "rll_f_cal")


def fine_tune(system, data, start: str, rate: float | None, seed: int) -> dict:
    """One fine-tune (trained into ``OUT/<system>/`` unless there), scored."""
    from shallow_ensembles.config import to_dict
    from shallow_ensembles.training.config import default_stage
    from shallow_ensembles.training.stages import FINE_TUNE

    schedule = dict(FINE_TUNE) if rate is None else {**FINE_TUNE, "learning_rate": rate}
    name = f"ft-{start}-lr{schedule['learning_rate']:g}-seed{seed}"
    folder = OUT / system.name / name
    if not (folder / "pred_test.npz").exists():
        stage = to_dict(default_stage("force-nll", **schedule))
        cost = train_one(system, data, name, [stage], {"seed": seed}, init=start)
        predict_run(system, data, name)
        (folder / "cost.json").write_text(json.dumps(cost))
    cost = json.loads((folder / "cost.json").read_text())
    pred = {s: load_predictions(folder / f"pred_{s}.npz") for s in ("validation", "test")}
    return {**score(pred["validation"], pred["test"]), "time_s": cost["cpu_s"],
            "epochs": epochs_trained(system, name), "lr": schedule["learning_rate"]}


def summary_lines(runs: dict[tuple, dict]) -> list[str]:
    """One line per (protocol, lr): every seed's value of each metric."""
    lines = []
    for start, protocol in STARTS.items():
        for rate in sorted({key[1] for key in runs}):
            rows = [r for key, r in sorted(runs.items()) if key[:2] == (start, rate)]
            cells = ", ".join(f"{k} " + " / ".join(f"{r[k]:.3g}" for r in rows) for k in KEYS)
            lines.append(f"- {protocol}, lr {rate:g} (seeds 0–{len(rows) - 1}): {cells}; mean "
                         f"RLL_F {np.mean([r['rll_f_cal'] for r in rows]):.1f}, mean RMSE_F "
                         f"{np.mean([r['rmse_f_meV_A'] for r in rows]):.1f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=sorted(SYSTEMS))
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per setting")
    args = parser.parse_args()
    torch.set_num_threads(1)
    system = SYSTEMS[args.system]
    data = prepare_data(system)
    runs = {}
    for seed in range(args.seeds):
        for rate in RATES:
            for start in STARTS:
                row = fine_tune(system, data, start, rate, seed)
                runs[(start, row["lr"], seed)] = row
                print(start, row["lr"], seed, {k: round(row[k], 3) for k in KEYS}, flush=True)
    table = {f"{STARTS[s]}, lr {lr:g}, seed {seed}": r for (s, lr, seed), r in sorted(runs.items())}
    text = "\n".join([
        f"# {system.name}: the fine-tune's learning rate over {args.seeds} seeds", "",
        "Each row is `run.py`'s two-step fine-tune (the package's `FINE_TUNE`: at most 30 "
        "epochs, no warm-up, early stopping on the validation force NLL with patience 5; "
        f"batch {system.batch_size}, reduce-on-plateau, 1 torch thread) from `run.py`'s "
        "stage-1 model, with the default peak learning rate or 2e-3 and the training seed "
        "shown. α on validation, metrics on test, CPU s of the fine-tune alone.", "",
        markdown_table(table, COLUMNS), "", *summary_lines(runs), "",
        f"Command: `python benchmarks/reproduce/fine_tune_lr.py {system.name} --seeds "
        f"{args.seeds}`", ""])
    write_report(f"{system.name}_fine_tune_lr", text, table)
    print(text)


if __name__ == "__main__":
    main()
