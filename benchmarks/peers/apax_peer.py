"""Peer benchmark driver for apax (JAX) shallow ensembles.

Runs inside an apax virtual environment (see ``requirements-apax.txt``) and only
uses numpy, ase, jax, apax and the standard library; it never imports
``shallow_ensembles``.  Three sub-commands:

``train``  fit a GMNN shallow ensemble (energy + force Gaussian NLL) with apax,
           time it, and write raw (uncalibrated) ensemble predictions on the
           validation and test sets, computed through apax's ASE calculator.
``infer``  median wall time of one ASE-calculator call (energy, forces, sigma_E;
           optionally member forces / force sigma).
``md``     ASE Langevin MD throughput with the apax calculator.

Everything runs single-threaded on CPU (set below, before jax is imported).
"""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
os.environ["TF_NUM_INTRAOP_THREADS"] = "1"
os.environ["TF_NUM_INTEROP_THREADS"] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from ase import units  # noqa: E402
from ase.io import read  # noqa: E402

MODEL_SUBDIR = ("models", "apax")  # apax writes <data.directory>/<data.experiment>


def apax_config(args, out: Path) -> dict:
    """apax training config: defaults except data paths, size knobs, early stopping
    (``patience``: epochs without a lower validation loss; None trains all ``epochs``)
    and the shallow ensemble with energy + force NLL (weights as apax's template)."""
    return {
        "n_epochs": args.epochs,
        "patience": args.patience,
        "seed": args.seed,
        "data": {
            "directory": str(out / MODEL_SUBDIR[0]),
            "experiment": MODEL_SUBDIR[1],
            "train_data_path": str(Path(args.train).resolve()),
            "val_data_path": str(Path(args.validation).resolve()),
            "batch_size": args.batch_size,
            "valid_batch_size": args.valid_batch_size,
        },
        "model": {
            "name": "gmnn",
            "basis": {"name": "bessel", "r_max": args.cutoff},
            "ensemble": {
                "kind": "shallow",
                "n_members": args.members,
                "force_variance": True,
            },
        },
        "loss": [
            {"name": "energy", "loss_type": "nll", "weight": 1.0},
            {"name": "forces", "loss_type": "nll", "weight": 4.0},
        ],
        "metrics": [
            {"name": "energy", "reductions": ["mae"]},
            {"name": "forces", "reductions": ["mae", "mse"]},
        ],
    }


def single_thread_tensorflow() -> None:
    """apax's input pipeline uses tf.data; keep TensorFlow on one thread."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def epoch_times(model_dir: Path) -> list:
    """Per-epoch wall times apax logs in ``log.csv`` (column ``epoch_time``)."""
    with open(model_dir / "log.csv") as fh:
        return [float(row["epoch_time"]) for row in csv.DictReader(fh)]


def timed_run(config_path: Path, log_level: str) -> tuple:
    """Run ``apax.train.run.run``; return (total s, s spent in its ``fit`` call,
    i.e. the training loop without data loading / model setup, CPU s of the whole run)."""
    import apax.train.run as apax_run

    fit, spent = apax_run.fit, {}

    def timed_fit(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fit(*args, **kwargs)
        finally:
            spent["fit"] = time.perf_counter() - t0

    apax_run.fit = timed_fit
    try:
        t0, cpu0 = time.perf_counter(), time.process_time()
        apax_run.run(str(config_path), log_level=log_level)
        spent["cpu"] = time.process_time() - cpu0
        return time.perf_counter() - t0, spent["fit"], spent["cpu"]
    finally:
        apax_run.fit = fit


def timing_summary(total: float, fit: float, epochs: int, logged: list) -> dict:
    """Training-time summary.

    ``wall_s`` is apax's ``fit`` call (training loop incl. validation and
    checkpoints, without data loading / model init).  ``s_per_epoch`` is the
    mean of apax's logged ``epoch_time`` (train steps + validation pass) after
    the first epoch (JIT compilation + neighbour-list caching);
    ``s_per_epoch_wall`` = (wall_s - first epoch) / (epochs - 1), which also
    spreads fit's one-off teardown (seconds, noisy) over the epochs."""
    steady = logged[1:] if epochs > 1 and len(logged) == epochs else []
    if steady:
        per_epoch, per_epoch_wall = float(np.mean(steady)), (fit - logged[0]) / len(steady)
    else:
        per_epoch = per_epoch_wall = fit / epochs
    return {
        "wall_s": fit,
        "s_per_epoch": per_epoch,
        "s_per_epoch_wall": per_epoch_wall,
        "total_s": total,
        "setup_s": total - fit,
        "first_epoch_s": logged[0] if logged else None,
        "logged_epoch_times_s": logged,
    }


def cmd_train(args) -> dict:
    """Train with apax, then predict validation and test sets."""
    import apax
    import yaml

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "apax_config.yaml"
    config_path.write_text(yaml.safe_dump(apax_config(args, out), sort_keys=False))
    single_thread_tensorflow()

    total, fit, cpu = timed_run(config_path, args.log_level)

    model_dir = out.joinpath(*MODEL_SUBDIR)
    logged = epoch_times(model_dir)
    info = {
        "package": "apax",
        "version": apax.__version__,
        "epochs": len(logged),
        "max_epochs": args.epochs,
        "patience": args.patience,
        "n_members": args.members,
        "model_dir": str(model_dir),
        "cpu_s": cpu,
    }
    info.update(timing_summary(total, fit, len(logged), logged))
    (out / "train.json").write_text(json.dumps(info, indent=2))

    calc = make_calculator(model_dir, member_forces=True)
    for split, path in (("validation", args.validation), ("test", args.test)):
        np.savez(out / f"pred_{split}.npz", **predict(calc, path))
    return info


def resolve_model_dir(path: str) -> Path:
    """Accept either the ``train --out`` directory or apax's model directory."""
    path = Path(path)
    if (path / "config.yaml").exists():
        return path
    meta = path / "train.json"
    if meta.exists():
        stored = Path(json.loads(meta.read_text())["model_dir"])
        if (stored / "config.yaml").exists():
            return stored
    return path.joinpath(*MODEL_SUBDIR)


def make_calculator(model_dir: Path, member_forces: bool):
    """apax ASE calculator; ``member_forces`` toggles the shallow ensemble's
    ``force_variance`` (per-member forces via a Jacobian instead of one gradient
    of the mean energy).  Energy members / sigma_E are always computed."""
    from apax.md import ASECalculator

    calc = ASECalculator(model_dir=model_dir)
    ensemble = calc.model_config.model.ensemble
    if ensemble is None or ensemble.kind != "shallow":
        raise ValueError(f"{model_dir} is not an apax shallow-ensemble model")
    ensemble.force_variance = member_forces
    return calc


def evaluate(calc, atoms, changes) -> dict:
    """One calculator call (no caching) returning a copy of its results."""
    calc.calculate(atoms, ["energy", "forces"], changes)
    return dict(calc.results)


def predict(calc, path: str) -> dict:
    """Raw ensemble predictions (float64, eV and eV/A) for every frame in
    ``path``; sigmas recomputed from the members with ddof=1."""
    frames = read(path, ":")
    e_ens, f_ens, ref_e, ref_f = [], [], [], []
    for atoms in frames:
        ref_e.append(atoms.get_potential_energy())
        ref_f.append(atoms.get_forces())
        res = evaluate(calc, atoms, calc.check_state(atoms))
        e_ens.append(np.asarray(res["energy_ensemble"], dtype=np.float64))
        # apax puts the member axis last: (n_atoms, 3, M) -> (M, n_atoms, 3)
        f_ens.append(np.moveaxis(np.asarray(res["forces_ensemble"], np.float64), -1, 0))
    e_ens = np.stack(e_ens)
    f_all = np.concatenate(f_ens, axis=1)
    return {
        "energy_ensemble": e_ens,
        "energy": e_ens.mean(axis=1),
        "energy_sigma": e_ens.std(axis=1, ddof=1),
        "ref_energy": np.asarray(ref_e, dtype=np.float64),
        "n_atoms": np.array([len(a) for a in frames], dtype=np.int64),
        "numbers": np.concatenate([a.numbers for a in frames]).astype(np.int64),
        "forces": f_all.mean(axis=0),
        "forces_sigma": f_all.std(axis=0, ddof=1),
        "ref_forces": np.concatenate(ref_f).astype(np.float64),
    }


def first_frame(path: str):
    """First frame of ``path`` without its reference calculator."""
    atoms = read(path, 0)
    atoms.calc = None
    return atoms


def cmd_infer(args) -> dict:
    """Median ms per calculator call after 3 warm-up (JIT) calls."""
    atoms = first_frame(args.structure)
    calc = make_calculator(resolve_model_dir(args.model), args.member_forces)
    base = atoms.positions.copy()
    rng = np.random.default_rng(0)
    times, res = [], {}
    for i in range(3 + args.repeat):
        atoms.positions = base + rng.normal(scale=1e-3, size=base.shape)
        t0 = time.perf_counter()
        res = evaluate(calc, atoms, ["positions"])
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return {
        "package": "apax",
        "n_atoms": len(atoms),
        "ms_per_call": 1e3 * float(np.median(times)),
        "member_forces": args.member_forces,
        "outputs": sorted(res),
    }


def cmd_md(args) -> dict:
    """Langevin MD (300 K, 0.5 fs) throughput; uncertainties every step."""
    from ase.md.langevin import Langevin

    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ase < 3.29
        from ase.md.velocitydistribution import (
            MaxwellBoltzmannDistribution as thermalize_momenta,
        )

    atoms = first_frame(args.structure)
    atoms.calc = make_calculator(resolve_model_dir(args.model), args.member_forces)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(args.seed))
    dyn = Langevin(
        atoms,
        timestep=0.5 * units.fs,
        temperature_K=300,
        friction=0.01 / units.fs,
        fixcm=False,
        rng=np.random.default_rng(args.seed),
    )
    dyn.run(5)  # warm-up (JIT compile)
    t0 = time.perf_counter()
    dyn.run(args.steps)
    elapsed = time.perf_counter() - t0
    assert "energy_uncertainty" in atoms.calc.results
    return {
        "package": "apax",
        "n_atoms": len(atoms),
        "steps_per_s": args.steps / elapsed,
        "member_forces": args.member_forces,
    }


def parse_args(argv=None):
    """Command-line interface (see module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train + predict validation/test")
    train.add_argument("--train", required=True)
    train.add_argument("--validation", required=True)
    train.add_argument("--test", required=True)
    train.add_argument("--out", required=True)
    train.add_argument("--epochs", type=int, required=True)
    train.add_argument("--members", type=int, default=8)
    train.add_argument("--cutoff", type=float, default=5.0)
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument(
        "--valid-batch-size",
        type=int,
        default=100,
        help="apax default 100; lower it only to save memory",
    )
    train.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop after this many epochs without a lower validation loss (default: never)",
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--log-level", default="info")
    train.set_defaults(func=cmd_train)

    for name, func in (("infer", cmd_infer), ("md", cmd_md)):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True, help="train --out dir")
        p.add_argument("--structure", required=True)
        p.add_argument(
            "--member-forces", action="store_true", help="also compute member forces / force sigma"
        )
        p.set_defaults(func=func)
    sub.choices["infer"].add_argument("--repeat", type=int, default=20)
    sub.choices["md"].add_argument("--steps", type=int, default=100)
    sub.choices["md"].add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    """Run a sub-command; stdout carries only its one-line JSON result
    (apax prints e.g. neighbour-list messages, which go to stderr)."""
    args = parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        result = args.func(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
