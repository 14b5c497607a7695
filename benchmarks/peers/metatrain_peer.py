"""Peer benchmark driver for metatrain (SOAP-BPNN + LLPR last-layer ensembles).

Run with the python of a venv holding ``requirements-metatrain.txt`` (this file
must not import ``shallow_ensembles``).  Sub-commands:

``train``  trains a SOAP-BPNN with ``mtt train`` (energy + forces, default
           hypers), wraps it with metatrain's LLPR architecture (plain LLPR, no
           ensemble-weight fine-tuning), then predicts validation and test sets
           through the metatomic ASE calculator and writes ``pred_*.npz``.
``infer``  times single-structure calls of the ASE calculator (energy, forces,
           sigma_E; optionally per-member forces).
``md``     times ASE Langevin MD (300 K, 0.5 fs) with sigma_E at every step.

metatrain samples the LLPR ensemble weights with the calibration factor alpha
(fitted on the validation set) already applied, and re-centres the members on
the model's own energy.  Member deviations are therefore linear in alpha and
the npz files store the RAW ensemble: ``E + (E_m - E) / alpha`` (same for the
member forces).  alpha is recorded in ``train.json``.
"""

import argparse
import glob
import json
import os
import re
import resource
import subprocess
import sys
import time
from datetime import datetime

import ase.io
import numpy as np
import torch

SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                 "OPENBLAS_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}
os.environ.update(SINGLE_THREAD)
torch.set_num_threads(1)


# ----------------------------------------------------------------- training
def write_dataset(src, dst):
    """Copy an extxyz file, storing reference energy/forces under explicit keys."""
    frames = ase.io.read(src, ":")
    out = []
    for atoms in frames:
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        clean = ase.Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        clean.info["ref_energy"] = float(energy)
        clean.arrays["ref_forces"] = np.asarray(forces, dtype=float)
        out.append(clean)
    ase.io.write(dst, out, format="extxyz")
    return frames


def dataset_section(path):
    """metatrain dataset block: energy (eV) with forces, read with ASE."""
    return {"systems": {"read_from": path, "reader": "ase", "length_unit": "angstrom"},
            "targets": {"energy": {"key": "ref_energy", "unit": "eV",
                                   "forces": {"key": "ref_forces"}}}}


def base_options(args, data):
    """Options shared by both ``mtt train`` stages."""
    opts = {"seed": args.seed, "device": "cpu",
            "training_set": dataset_section(data["train"]),
            "validation_set": dataset_section(data["validation"]),
            "test_set": 0.0}
    if args.precision:
        opts["base_precision"] = args.precision
    return opts


def run_mtt(options, workdir, output):
    """Write ``options.yaml`` (JSON is valid YAML) and run ``mtt train`` in workdir.

    Returns (wall seconds, CPU seconds of the ``mtt`` process).
    """
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "options.yaml"), "w") as fh:
        json.dump(options, fh, indent=2)
    mtt = os.path.join(os.path.dirname(sys.executable), "mtt")
    cmd = [mtt, "train", "options.yaml", "-o", output]
    t0, cpu0 = time.perf_counter(), _children_cpu()
    with open(os.path.join(workdir, "mtt.log"), "w") as log:
        subprocess.run(cmd, cwd=workdir, env={**os.environ, **SINGLE_THREAD},
                       stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - t0, _children_cpu() - cpu0


def _children_cpu():
    """CPU seconds (user + system) of the finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def log_span(workdir, start, stop):
    """Seconds between two messages of metatrain's train.log (1 s resolution)."""
    logs = sorted(glob.glob(os.path.join(workdir, "outputs", "*", "*", "train.log")))
    stamps = {}
    with open(logs[-1]) if logs else open(os.devnull) as fh:
        lines = fh.readlines()
    for line in lines:
        m = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\]", line)
        for key in (start, stop):
            if m and key in line and key not in stamps:
                stamps[key] = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
    if len(stamps) < 2:
        return None
    return (stamps[stop] - stamps[start]).total_seconds()


def cmd_train(args):
    """Train SOAP-BPNN, wrap with LLPR, predict validation and test sets."""
    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    data, frames = {}, {}
    for split in ("train", "validation", "test"):
        data[split] = os.path.join(out, "data", f"{split}.extxyz")
        frames[split] = write_dataset(getattr(args, split), data[split])

    bpnn = base_options(args, data)
    bpnn["architecture"] = {
        "name": "soap_bpnn",
        "model": {"soap": {"cutoff": {"radius": args.cutoff}}},
        "training": {"num_epochs": args.epochs, "batch_size": args.batch_size,
                     "num_workers": 0, "log_interval": 1}}
    bpnn_dir = os.path.join(out, "soap_bpnn")
    wall_train, cpu_train = run_mtt(bpnn, bpnn_dir, "model.pt")
    loop = log_span(bpnn_dir, "Starting training", "Training finished!")

    llpr = base_options(args, data)
    llpr["architecture"] = {
        "name": "llpr",
        "model": {"num_ensemble_members": {"energy": args.members}},
        "training": {"model_checkpoint": os.path.join(bpnn_dir, "model.ckpt"),
                     "batch_size": args.batch_size, "num_workers": 0}}
    llpr_dir = os.path.join(out, "llpr")
    wall_llpr, cpu_llpr = run_mtt(llpr, llpr_dir, "model.pt")
    llpr_core = log_span(llpr_dir, "Computing LLPR covariance", "LLPR complete!")

    alpha = calibration_alpha(os.path.join(llpr_dir, "model.ckpt"))
    info = {"package": "metatrain", "version": _version(),
            "wall_s": wall_train + wall_llpr, "wall_train_s": wall_train,
            "cpu_s": cpu_train + cpu_llpr, "cpu_train_s": cpu_train, "cpu_llpr_s": cpu_llpr,
            "wall_llpr_s": wall_llpr, "wall_llpr_core_s": llpr_core,
            "wall_train_loop_s": loop, "epochs": args.epochs,
            "s_per_epoch": (loop if loop else wall_train) / args.epochs,
            "n_members": args.members, "cutoff": args.cutoff,
            "batch_size": args.batch_size, "seed": args.seed,
            "base_precision": args.precision or 32,
            "model_path": os.path.join(llpr_dir, "model.pt"),
            "extensions_path": os.path.join(llpr_dir, "extensions"),
            "base_checkpoint": os.path.join(bpnn_dir, "model.ckpt"),
            "llpr_calibration_alpha": alpha, "ensemble_in_npz": "raw",
            "ensemble_in_model": "calibrated (deviations scaled by alpha)"}

    calc = make_calculator(info, member_forces=True)
    info["fd_check_rel_err"] = fd_check(calc, frames["validation"][0])
    for split in ("validation", "test"):
        pred, check = predict(calc, frames[split], alpha)
        np.savez(os.path.join(out, f"pred_{split}.npz"), **pred)
        info[f"max_abs_mean_member_forces_minus_forces_{split}"] = check
    with open(os.path.join(out, "train.json"), "w") as fh:
        json.dump(info, fh, indent=2)
    print(json.dumps(info))


def calibration_alpha(path):
    """Calibration factor alpha stored in an LLPR checkpoint."""
    import metatomic.torch  # noqa: F401  (registers the classes in the checkpoint)

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return float(ckpt["model_state_dict"]["multiplier_energy_uncertainty"].item())


def _version():
    import metatrain

    return metatrain.__version__


# --------------------------------------------------------------- prediction
def make_calculator(info, member_forces):
    """metatomic ASE calculator that also returns the LLPR energy ensemble."""
    # sphericart-torch registers the autograd formulas of its custom ops from
    # Python; loading only the exported extension library leaves them without
    # backward and gives silently wrong forces.  Import it before the model.
    import sphericart.torch  # noqa: F401
    from metatomic.torch import ModelOutput
    from metatomic_ase import MetatomicCalculator

    grads = ["positions"] if member_forces else []
    request = {"energy_ensemble": ModelOutput(unit="eV", sample_kind="system",
                                              explicit_gradients=grads)}
    # uncertainty_threshold=None: skip the per-atom LLPR uncertainty warning pass
    return MetatomicCalculator(info["model_path"], additional_outputs=request,
                               extensions_directory=info["extensions_path"],
                               device="cpu", uncertainty_threshold=None)


def evaluate(atoms, calc, member_forces):
    """Energy, forces, member energies (M,) and member forces (N, 3, M) or None."""
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    block = calc.additional_outputs["energy_ensemble"].block()
    members = block.values.detach().double().numpy().reshape(-1)
    member_f = None
    if member_forces:
        member_f = -block.gradient("positions").values.detach().double().numpy()
    return energy, forces, members, member_f


def fd_check(calc, ref):
    """Relative error of F.d against a central difference of E along d = F/|F|.

    The step grows (0.01 to 0.1 A) when |F| is small, so that the energy change
    stays well above the float32 resolution of the total energy.
    """
    atoms = ase.Atoms(ref.numbers, ref.positions, cell=ref.cell, pbc=ref.pbc)
    atoms.calc = calc
    forces = atoms.get_forces().copy()
    norm = np.linalg.norm(forces)
    step = float(np.clip(6e-6 * abs(atoms.get_potential_energy()) / norm, 0.01, 0.1))
    energies = []
    for sign in (1, -1):
        atoms.positions = ref.positions + sign * step * forces / norm
        energies.append(atoms.get_potential_energy())
    slope = -(energies[0] - energies[1]) / (2 * step)
    return float(abs(slope - norm) / norm)


def predict(calc, frames, alpha):
    """Arrays for one split; the ensemble is converted back to raw (alpha = 1)."""
    keys = ("energy_ensemble", "energy", "ref_energy", "n_atoms", "numbers",
            "forces", "forces_sigma", "ref_forces")
    res = {k: [] for k in keys}
    check = 0.0
    for ref in frames:
        atoms = ase.Atoms(ref.numbers, ref.positions, cell=ref.cell, pbc=ref.pbc)
        energy, forces, e_m, f_m = evaluate(atoms, calc, member_forces=True)
        check = max(check, float(np.abs(f_m.mean(-1) - forces).max()))
        e_m = energy + (e_m - energy) / alpha
        f_m = forces[..., None] + (f_m - forces[..., None]) / alpha
        res["energy_ensemble"].append(e_m)
        res["energy"].append(e_m.mean())
        res["ref_energy"].append(ref.get_potential_energy())
        res["n_atoms"].append(len(ref))
        res["numbers"].append(ref.numbers)
        res["forces"].append(f_m.mean(-1))
        res["forces_sigma"].append(f_m.std(-1, ddof=1))
        res["ref_forces"].append(ref.get_forces())
    pred = {k: np.asarray(res[k], dtype=np.float64) for k in
            ("energy_ensemble", "energy", "ref_energy")}
    pred["energy_sigma"] = pred["energy_ensemble"].std(1, ddof=1)
    pred["n_atoms"] = np.asarray(res["n_atoms"], dtype=np.int64)
    pred["numbers"] = np.concatenate(res["numbers"]).astype(np.int64)
    for k in ("forces", "forces_sigma", "ref_forces"):
        pred[k] = np.concatenate(res[k]).astype(np.float64)
    return pred, check


# ------------------------------------------------------------ timing helpers
def load_run(model_dir, structure):
    """train.json of a trained run and the first frame of ``structure``."""
    with open(os.path.join(model_dir, "train.json")) as fh:
        info = json.load(fh)
    ref = ase.io.read(structure, 0)
    atoms = ase.Atoms(ref.numbers, ref.positions, cell=ref.cell, pbc=ref.pbc)
    return info, atoms


def cmd_infer(args):
    """Median wall time of calculator calls returning E, F and sigma_E."""
    info, atoms = load_run(args.model, args.structure)
    calc = make_calculator(info, member_forces=args.member_forces)
    rng = np.random.default_rng(0)
    times = []
    for i in range(3 + args.repeat):
        atoms.positions += rng.normal(scale=1e-4, size=atoms.positions.shape)
        t0 = time.perf_counter()
        _, _, members, _ = evaluate(atoms, calc, args.member_forces)
        members.std(ddof=1)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    outputs = ["energy", "forces", "energy_sigma"]
    outputs += ["member_forces"] if args.member_forces else []
    print(json.dumps({"package": "metatrain", "n_atoms": len(atoms),
                      "ms_per_call": 1e3 * float(np.median(times)),
                      "member_forces": bool(args.member_forces), "outputs": outputs}))


def cmd_md(args):
    """ASE Langevin MD at 300 K with sigma_E computed at every step."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    info, atoms = load_run(args.model, args.structure)
    calc = make_calculator(info, member_forces=False)
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300,
                                 rng=np.random.default_rng(0))
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs,
                   rng=np.random.default_rng(1))
    sigmas = []
    dyn.attach(lambda: sigmas.append(
        calc.additional_outputs["energy_ensemble"].block().values.std().item()))
    dyn.run(5)
    t0 = time.perf_counter()
    dyn.run(args.steps)
    wall = time.perf_counter() - t0
    print(json.dumps({"package": "metatrain", "n_atoms": len(atoms),
                      "steps_per_s": args.steps / wall}))


# ---------------------------------------------------------------------- CLI
def main(argv=None):
    """Parse the command line and dispatch to a sub-command."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train SOAP-BPNN + LLPR and predict")
    for split in ("train", "validation", "test"):
        tr.add_argument(f"--{split}", required=True)
    tr.add_argument("--out", required=True)
    tr.add_argument("--epochs", type=int, required=True)
    tr.add_argument("--members", type=int, default=8)
    tr.add_argument("--cutoff", type=float, default=5.0)
    tr.add_argument("--batch-size", type=int, default=4)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--precision", type=int, choices=(32, 64), default=None,
                    help="metatrain base_precision (default: metatrain's, float32)")
    inf = sub.add_parser("infer", help="time calculator calls")
    inf.add_argument("--model", required=True)
    inf.add_argument("--structure", required=True)
    inf.add_argument("--repeat", type=int, default=20)
    inf.add_argument("--member-forces", action="store_true")
    md = sub.add_parser("md", help="time Langevin MD")
    md.add_argument("--model", required=True)
    md.add_argument("--structure", required=True)
    md.add_argument("--steps", type=int, default=100)
    args = parser.parse_args(argv)
    {"train": cmd_train, "infer": cmd_infer, "md": cmd_md}[args.command](args)


if __name__ == "__main__":
    main()
