"""Every training protocol on the shared water data with one fixed split: one table.

Columns: wall time (s, stage 1 included), RMSE_E (meV/atom), RMSE_F (meV/Å), RLL_E and RLL_F
raw and calibrated (%), on the test frames. Stage-1 models are shared the way a user would
reuse them: ``llpr`` and ``subsample`` start from the ``mse`` model, ``two-step-llpr`` from the
``llpr`` model and ``two-step-energy-nll`` from the ``energy-nll`` model (``init_model``), and
their wall times add up the stages they stand on. Also printed: wall(two-step) /
wall(force-nll-scratch), with and without stage 1, and RLL_F(two-step) − RLL_F(scratch).

One torch thread per process. Usage:
    python benchmarks/protocols.py [--epochs 40] [--fine-tune-epochs 8] [--n-train 60]
                                   [--output benchmarks/out/protocols]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from shallow_ensembles import load_model
from shallow_ensembles.calibration import predict_dataset
from shallow_ensembles.config import TrainConfig, from_dict
from shallow_ensembles.data import graphs_from_atoms
from shallow_ensembles.evaluation import compute_metrics
from shallow_ensembles.training import load_datasets, train

ROOT = Path(__file__).resolve().parents[1]
WATER = ROOT.parent / "shared" / "data" / "water_64H2O_deepmd_example.extxyz"


def run(name, out, data, stages, init=None, lr=None):
    """Train one protocol; returns (model, wall seconds)."""
    cfg = {"data": data, "protocol": "custom", "stages": stages, "output_dir": str(out / name),
           "training": {"threads": 1, "progress": False, "batch_size": 4,
                        **({"learning_rate": lr} if lr else {})},
           "init_model": str(init) if init else None}
    config = from_dict(TrainConfig, cfg)
    start = time.perf_counter()
    model = train(config)
    return model, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--fine-tune-epochs", type=int, default=8)
    parser.add_argument("--n-train", type=int, default=60)
    parser.add_argument("--n-validation", type=int, default=20)
    parser.add_argument("--n-test", type=int, default=40)
    parser.add_argument("--data", default=str(WATER))
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "out" / "protocols"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    data = {"train_file": args.data, "n_train": args.n_train, "n_validation": args.n_validation,
            "n_test": args.n_test, "split_seed": 0}
    e, f = args.epochs, args.fine_tune_epochs
    fine = {"kind": "force-nll", "epochs": f, "learning_rate": 5e-4}
    walls, models = {}, {}
    plan = [
        ("mse", [{"kind": "mse", "epochs": e}], None, []),
        ("energy-nll", [{"kind": "energy-nll", "epochs": e}], None, []),
        ("force-nll-scratch", [{"kind": "force-nll", "epochs": e}], None, []),
        ("random-heads", [{"kind": "random-heads"}, {"kind": "member-mse", "epochs": e}], None, []),
        ("llpr", [{"kind": "llpr"}], "mse", ["mse"]),
        ("subsample", [{"kind": "subsample"}], "mse", ["mse"]),
        ("two-step-llpr", [fine], "llpr", ["llpr"]),
        ("two-step-energy-nll", [fine], "energy-nll", ["energy-nll"]),
    ]
    for name, stages, init, parents in plan:
        init_path = out / init / "model.pt" if init else None
        models[name], own = run(name, out, data, stages, init_path)
        walls[name] = own + sum(walls[p] for p in parents)
        walls[name + ":own"] = own
        print(f"{name}: {walls[name]:.0f} s", flush=True)
    config = from_dict(TrainConfig, {"data": data})
    test = load_datasets(config.data).test
    rows = {}
    for name, model in models.items():
        pred = predict_dataset(load_model(out / name / "model.pt"),
                               graphs_from_atoms(test, model.cutoff))
        m = compute_metrics(pred, float(model.alpha_energy), float(model.alpha_forces))
        rows[name] = {
            "wall_s": walls[name], "own_wall_s": walls[name + ":own"],
            "rmse_e_meV_atom": 1000 * m["calibrated"]["energy_per_atom"]["rmse"],
            "rmse_f_meV_A": 1000 * m["calibrated"]["forces"]["rmse"],
            "rll_e_raw": m["raw"]["energy"]["rll"], "rll_e_cal": m["calibrated"]["energy"]["rll"],
            "rll_f_raw": m["raw"]["forces"]["rll"], "rll_f_cal": m["calibrated"]["forces"]["rll"],
            "miscal_f_cal": m["calibrated"]["forces"]["miscalibration_area"],
            "alpha_e": m["alpha"]["energy"], "alpha_f": m["alpha"]["forces"],
        }
    header = ("| protocol | wall (s) | RMSE_E (meV/atom) | RMSE_F (meV/Å) | RLL_E raw | RLL_E cal "
              "| RLL_F raw | RLL_F cal | miscal. area F | α_E | α_F |")
    lines = [header, "|" + "---|" * 11]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['wall_s']:.0f} | {r['rmse_e_meV_atom']:.2f} | "
                     f"{r['rmse_f_meV_A']:.1f} | {r['rll_e_raw']:.1f} | {r['rll_e_cal']:.1f} | "
                     f"{r['rll_f_raw']:.1f} | {r['rll_f_cal']:.1f} | {r['miscal_f_cal']:.3f} | "
                     f"{r['alpha_e']:.3g} | {r['alpha_f']:.3g} |")
    scratch = rows["force-nll-scratch"]
    summary = []
    for name in ("two-step-llpr", "two-step-energy-nll"):
        r = rows[name]
        summary.append(
            f"{name}: wall / scratch = {r['wall_s'] / scratch['wall_s']:.2f} (fine-tune only "
            f"{r['own_wall_s'] / scratch['wall_s']:.2f}); RLL_F cal − scratch = "
            f"{r['rll_f_cal'] - scratch['rll_f_cal']:+.1f} points")
    text = "\n".join(lines + [""] + summary)
    print(text)
    (out / "protocols.md").write_text(
        f"Water, {args.n_train}/{args.n_validation}/{args.n_test} frames (seed 0), "
        f"{e} epochs per full stage, {f} fine-tune epochs, 1 thread.\n\n{text}\n")
    (out / "protocols.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
