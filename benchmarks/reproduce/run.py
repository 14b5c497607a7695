"""Every training protocol on one system with a fixed, saved split: table, figures, verdicts.

    python benchmarks/reproduce/run.py water      # or batio3, carbon, ethanol; --list for budgets

Trains ``mse``, ``energy-nll``, ``force-nll-scratch``, ``random-heads``, ``llpr``, ``subsample``,
``two-step-llpr``, ``two-step-energy-nll`` and an ``mse-committee`` of independently trained MSE
models (the ``mse`` run and ``--committee − 1`` more seeds) with the budget of
``common.SYSTEMS``, one torch thread. Stage-1 models are reused the way a user would reuse them
(``init_model``): ``llpr`` and ``subsample`` start from ``mse``, ``two-step-llpr`` from ``llpr``,
``two-step-energy-nll`` from ``energy-nll``; times add up the stages a protocol stands on.

Writes ``benchmarks/results/<system>.md`` (+ ``.json``, ``_rll_vs_time.png``,
``_calibration.png``, ``_split.json``). Models and predictions go to
``benchmarks/out/reproduce/<system>/``; a rerun skips finished protocols (``--fresh`` retrains).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import (
    OUT,
    RESULTS,
    SYSTEMS,
    System,
    committee,
    figures,
    finding_line,
    findings,
    load_json,
    load_predictions,
    markdown_table,
    prepare_data,
    save_predictions,
    score,
)

FIRST_STAGE = {"llpr": "mse", "subsample": "mse", "two-step-llpr": "llpr",
               "two-step-energy-nll": "energy-nll"}


def plan(system: System, n_committee: int) -> list[tuple[str, list[dict]]]:
    """(run name, stages) in an order where every stage-1 model exists before it is used."""
    e = system.epochs
    fine = {"kind": "force-nll", "epochs": system.fine_tune_epochs, "learning_rate": 5e-4}
    runs = [("mse", [{"kind": "mse", "epochs": e}]),
            ("energy-nll", [{"kind": "energy-nll", "epochs": e}]),
            ("force-nll-scratch", [{"kind": "force-nll", "epochs": e}]),
            ("random-heads", [{"kind": "random-heads"}, {"kind": "member-mse", "epochs": e}]),
            ("llpr", [{"kind": "llpr"}]),
            ("subsample", [{"kind": "subsample"}]),
            ("two-step-llpr", [fine]),
            ("two-step-energy-nll", [fine])]
    runs += [(f"mse-seed{s}", [{"kind": "mse", "epochs": e}]) for s in range(1, n_committee)]
    return runs


def train_one(system: System, data: dict, name: str, stages: list[dict]) -> dict[str, float]:
    """Train one run into ``OUT/<system>/<name>``.

    Returns its own ``cpu_s`` (CPU seconds of this process: the cost on one thread, unaffected
    by other jobs on a shared machine) and ``wall_s``.
    """
    from shallow_ensembles.config import TrainConfig, from_dict
    from shallow_ensembles.training import train

    folder = OUT / system.name
    init = FIRST_STAGE.get(name)
    seed = int(name.removeprefix("mse-seed")) if name.startswith("mse-seed") else 0
    config = from_dict(TrainConfig, {
        "data": {"train_file": str(data["train"]), "validation_file": str(data["validation"]),
                 "test_file": str(data["test"])},
        "protocol": "custom", "stages": stages, "output_dir": str(folder / name),
        "init_model": str(folder / init / "model.pt") if init else None,
        "training": {"threads": 1, "progress": False, "batch_size": system.batch_size,
                     "learning_rate": system.learning_rate, "seed": seed}})
    wall, cpu = time.perf_counter(), time.process_time()
    train(config)
    return {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}


def predict_run(system: System, data: dict, name: str) -> None:
    """Save validation and test predictions (raw ensemble) of one trained run."""
    from shallow_ensembles import load_model
    from shallow_ensembles.calibration import predict_dataset
    from shallow_ensembles.data import graphs_from_atoms, read_structures

    model = load_model(OUT / system.name / name / "model.pt")
    for split in ("validation", "test"):
        graphs = graphs_from_atoms(read_structures(data[split]), model.cutoff)
        save_predictions(OUT / system.name / name / f"pred_{split}.npz",
                         predict_dataset(model, graphs))


def report(system: System, runs: dict, n_committee: int, results: Path = RESULTS) -> str:
    """Score every run, write the results files; returns the Markdown."""
    folder = OUT / system.name
    preds = {name: {s: load_predictions(folder / name / f"pred_{s}.npz")
                    for s in ("validation", "test")} for name in runs
             if not name.startswith("mse-seed")}
    members = ["mse"] + [f"mse-seed{s}" for s in range(1, n_committee)]
    preds["mse-committee"] = {s: committee([load_predictions(folder / m / f"pred_{s}.npz")
                                            for m in members]) for s in ("validation", "test")}
    times = {name: dict(run) for name, run in runs.items()}
    for name in FIRST_STAGE:  # add the stages a protocol stands on
        parent = FIRST_STAGE[name]
        while parent:
            for key in ("cpu_s", "wall_s"):
                times[name][key] += runs[parent][key]
            parent = FIRST_STAGE.get(parent)
    times["mse-committee"] = {key: sum(runs[m][key] for m in members)
                              for key in ("cpu_s", "wall_s")}
    rows = {}
    for name, p in preds.items():
        rows[name] = score(p["validation"], p["test"])
        rows[name].update(time_s=times[name]["cpu_s"], wall_s=times[name]["wall_s"],
                          own_time_s=runs.get(name, times[name])["cpu_s"])
    figs = figures(system, rows, {k: v["test"] for k, v in preds.items()}, results)
    text = "\n".join([
        f"# {system.name}: every protocol, one split",
        "",
        f"{system.title}; files {', '.join(system.files)} from `../shared/data/` "
        f"(see its README for sources and licences). Split (seed 0, saved in "
        f"`{system.name}_split.json`): {system.n_train} train / {system.n_validation} validation "
        f"/ {system.n_test} test frames. Budget: {system.epochs} epochs per full stage, "
        f"{system.fine_tune_epochs} fine-tune epochs (force NLL, lr 5e-4), batch "
        f"{system.batch_size}, lr {system.learning_rate}, 8 members, 1 torch thread. "
        f"`mse-committee`: {n_committee} independently trained MSE models. α fitted on the "
        "validation frames (NLL-optimal); metrics on the test frames (RLL in %, NLL per "
        "structure / per component, eV units; miscalibration area of calibrated σ). Time: "
        "CPU seconds of the training process (other jobs on the machine do not distort it; "
        "wall seconds are in the .json), including the stage-1 runs a protocol starts from.",
        "",
        markdown_table(rows),
        "",
        *[f"- {finding_line(f)}" for f in findings(rows)],
        "",
        *[f"![{f.stem}]({f.name})" for f in figs],
        "",
        "Command: `python benchmarks/reproduce/run.py " + system.name.removesuffix("-smoke") + "`",
        ""])
    (results / f"{system.name}.md").write_text(text)
    (results / f"{system.name}.json").write_text(json.dumps(rows, indent=1))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", nargs="?", choices=sorted(SYSTEMS))
    parser.add_argument("--committee", type=int, default=4, help="MSE models in the committee")
    parser.add_argument("--fresh", action="store_true", help="retrain finished protocols")
    parser.add_argument("--list", action="store_true", help="print the systems and budgets")
    parser.add_argument("--smoke", action="store_true",
                        help="1-epoch budget, results under benchmarks/out (checks the pipeline)")
    args = parser.parse_args()
    if args.list or not args.system:
        for s in SYSTEMS.values():
            print(s)
        return
    torch.set_num_threads(1)
    system, results = SYSTEMS[args.system], RESULTS
    if args.smoke:
        system = replace(system, name=f"{system.name}-smoke", epochs=1, fine_tune_epochs=1)
        results = OUT / "smoke-results"
    if args.fresh:
        shutil.rmtree(OUT / system.name, ignore_errors=True)
    data = prepare_data(system, results)
    done_file = OUT / system.name / "times.json"
    runs = load_json(done_file)
    for name, stages in plan(system, args.committee):
        if name not in runs:
            runs[name] = train_one(system, data, name, stages)
            predict_run(system, data, name)
            done_file.write_text(json.dumps(runs, indent=1))
        print(f"{system.name} {name}: {runs[name]['cpu_s']:.0f} CPU s", flush=True)
    print(report(system, runs, args.committee, results))


if __name__ == "__main__":
    main()
