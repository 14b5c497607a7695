"""Uncertainty under distribution shift: train on low-energy frames, test on high-energy ones.

    python benchmarks/reproduce/shift.py ethanol      # or water, batio3, carbon

Frames are sorted by reference energy per atom. The lowest 50 % form the in-distribution pool:
70 % of it trains, 10 % validates (α and the recalibrations are fitted there), 20 % is the
in-distribution test; the highest 20 % of all frames are the shifted test (the 30 % between
are unused). Training frames are capped at the system's reproduction budget. Protocols:
``force-nll-scratch``, ``llpr`` (on an MSE model) and ``two-step-llpr``, trained as in
``run.py``. Each is scored on both test sets (forces per component: RLL_F, coverage at 1σ and
2σ, Spearman(|r|, σ); energies: RLL_E) with three recalibrations fitted on validation:

- ``uniform``: σ → α σ (the package's calibration);
- ``power``: σ → a σ^b (NLL-optimal a for each b on a grid);
- ``distance``: σ² → α₁² σ² + α₂² v, with v the last-layer Laplace (LLPR) variance of the
  trained model (energy rows of the training frames, forces through the feature Jacobian),
  a distance-aware term that grows where the last-layer features leave the training data.

Writes ``benchmarks/results/<system>_shift.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import replace

import numpy as np
import torch
from common import OUT, RESULTS, SHARED_DATA, SYSTEMS, System, write_report
from run import train_one

N_TRAIN_CAP = {"water": 60, "batio3": 30, "carbon": 60, "ethanol": 200}
PROTOCOLS = {
    "mse": ("mse", None),
    "force-nll-scratch": ("force-nll", None),
    "llpr": ("llpr", "mse"),
    "two-step-llpr": ("fine-tune", "llpr"),
}


def shifted_split(system: System) -> dict:
    """Write train / validation / id-test / shift-test extxyz files sorted by E/N."""
    from ase.io import read, write

    folder = OUT / f"{system.name}-shift" / "data"
    names = ("train", "validation", "test", "shift")
    paths = {k: folder / f"{k}.extxyz" for k in names}
    if all(p.exists() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    frames = [a for f in system.files for a in read(SHARED_DATA / f, ":")]
    per_atom = np.array([a.get_potential_energy() / len(a) for a in frames])
    order = np.argsort(per_atom, kind="stable")
    pool = order[: len(order) // 2]
    rng = np.random.default_rng(0)
    pool = rng.permutation(pool)
    n_train, n_val = int(0.7 * len(pool)), int(0.1 * len(pool))
    parts = {"train": pool[:n_train][:N_TRAIN_CAP[system.name]],
             "validation": pool[n_train:n_train + n_val],
             "test": pool[n_train + n_val:],
             "shift": order[len(order) - len(order) // 5:]}
    for key, idx in parts.items():
        write(paths[key], [frames[i] for i in idx], format="extxyz")
    return paths


def stages(kind: str, system: System) -> list[dict]:
    from shallow_ensembles.config import to_dict
    from shallow_ensembles.training.config import default_stage
    from shallow_ensembles.training.stages import FINE_TUNE

    full = {"epochs": system.epochs, "patience": system.patience}
    fine = to_dict(default_stage("force-nll", **FINE_TUNE))
    return {"mse": [{"kind": "mse", **full}], "force-nll": [{"kind": "force-nll", **full}],
            "llpr": [{"kind": "llpr"}], "fine-tune": [fine]}[kind]


def llpr_variances(model, train_graphs, val_graphs, graphs) -> tuple[np.ndarray, np.ndarray]:
    """LLPR variances (α = 1) of total energies (S,) and force components (N·3,) of ``graphs``.

    C = ΦᵀΦ + ςI from loss-weighted energy rows of the training frames (``init.llpr_rows``);
    ς chosen by ``fit_posterior`` on the validation frames. Energies: N² xᵀC⁻¹x (x per atom);
    forces: jᵀC⁻¹j with j = ∂G/∂R_iα.
    """
    from shallow_ensembles.training.init import feature_jacobian, linear_targets, llpr_rows
    from shallow_ensembles.training.llpr import fit_posterior

    x_val, y_val, _ = linear_targets(model, val_graphs)
    post = fit_posterior(llpr_rows(model, train_graphs), x_val,
                         y_val - x_val @ model.head.weight.detach().mean(0))
    post.alpha = 1.0
    x, _, n = linear_targets(model, graphs)
    energy = (post.variance(x) * n.to(x) ** 2).double().numpy()
    forces = [post.variance(feature_jacobian(model, g)).double().numpy() for g in graphs]
    return energy, np.concatenate(forces)


def nll(r, var) -> float:
    var = np.maximum(var, 1e-24)
    return float(np.mean(0.5 * (np.log(var) + r**2 / var)))


def fit_recalibrations(r, sigma, v) -> dict:
    """Parameters of the three recalibrations fitted on validation residuals (by NLL)."""
    from shallow_ensembles.metrics import nll_scale

    alpha = nll_scale(r, np.maximum(sigma, 1e-12))
    power = None
    for b in np.linspace(0.2, 2.0, 37):
        s = np.maximum(sigma, 1e-12) ** b
        a = nll_scale(r, s)
        value = nll(r, (a * s) ** 2)
        if power is None or value < power[0]:
            power = (value, a, float(b))
    scale_s, scale_v = np.mean(sigma**2), np.mean(v)
    best = None
    for u1, u2 in itertools.product(np.logspace(-3, 2, 41), repeat=2):
        var = u1 * sigma**2 / scale_s * np.mean(r**2) + u2 * v / scale_v * np.mean(r**2)
        value = nll(r, var)
        if best is None or value < best[0]:
            best = (value, u1 * np.mean(r**2) / scale_s, u2 * np.mean(r**2) / scale_v)
    return {"alpha": alpha, "power": power[1:], "distance": best[1:]}


def recalibrated(params: dict, sigma, v) -> dict[str, np.ndarray]:
    a, b = params["power"]
    c1, c2 = params["distance"]
    return {"uniform": params["alpha"] * sigma, "power": a * np.maximum(sigma, 1e-12) ** b,
            "distance": np.sqrt(c1 * sigma**2 + c2 * v)}


def metrics(r, sigma) -> dict[str, float]:
    from shallow_ensembles.metrics import coverage, rll, spearman

    return {"rll": rll(r, sigma), "cov1": coverage(r, sigma, 1), "cov2": coverage(r, sigma, 2),
            "spearman": spearman(np.abs(r), sigma)}


def evaluate(system: System, name: str, data: dict) -> dict:
    """Scores of one trained run on both test sets, for every recalibration."""
    from shallow_ensembles import load_model
    from shallow_ensembles.calibration import predict_dataset
    from shallow_ensembles.data import graphs_from_atoms, read_structures

    model = load_model(OUT / system.name / name / "model.pt")
    graphs = {k: graphs_from_atoms(read_structures(data[k]), model.cutoff) for k in data}
    result = {}
    quantities = {}
    for key in ("validation", "test", "shift"):
        pred = predict_dataset(model, graphs[key])
        v_e, v_f = llpr_variances(model, graphs["train"], graphs["validation"], graphs[key])
        quantities[key] = {
            "energy": (pred["ref_energy"] - pred["energy"], pred["energy_sigma"], v_e),
            "forces": ((pred["ref_forces"] - pred["forces"]).ravel(),
                       pred["forces_sigma"].ravel(), v_f)}
    for q in ("energy", "forces"):
        params = fit_recalibrations(*quantities["validation"][q])
        for key in ("test", "shift"):
            r, sigma, v = quantities[key][q]
            for method, s in recalibrated(params, sigma, v).items():
                result[f"{q}/{key}/{method}"] = {**metrics(r, s), "rmse": float(np.sqrt(np.mean(
                    r**2)))}
    return result


def table(results: dict) -> list[str]:
    lines = ["| protocol | test | recalibration | RMSE_F (meV/Å) | RLL_F | cov 1σ | cov 2σ | "
             "Spearman F | RLL_E | Spearman E |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        for key in ("test", "shift"):
            for method in ("uniform", "power", "distance"):
                f, e = res[f"forces/{key}/{method}"], res[f"energy/{key}/{method}"]
                label = {"test": "in-distribution", "shift": "shifted"}[key]
                lines.append(f"| {name} | {label} | {method} | {1000 * f['rmse']:.0f} | "
                             f"{f['rll']:.1f} | {f['cov1']:.2f} | {f['cov2']:.2f} | "
                             f"{f['spearman']:.2f} | {e['rll']:.1f} | {e['spearman']:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=sorted(SYSTEMS))
    parser.add_argument("--smoke", action="store_true", help="2-epoch budgets (pipeline check)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = SYSTEMS[args.system]
    results = RESULTS
    if args.smoke:
        base, results = replace(base, epochs=2), OUT / "smoke-results"
        results.mkdir(parents=True, exist_ok=True)
    system = replace(base, name=f"{base.name}-shift" + ("-smoke" if args.smoke else ""))
    data = shifted_split(base)
    train_data = {k: data[k] for k in ("train", "validation", "test")}
    done = OUT / system.name / "times.json"
    times = json.loads(done.read_text()) if done.exists() else {}
    for name, (kind, parent) in PROTOCOLS.items():
        if name not in times:
            times[name] = train_one(system, train_data, name, stages(kind, base), init=parent)
            done.write_text(json.dumps(times, indent=1))
        print(f"{system.name} {name}: {times[name]['cpu_s']:.0f} CPU s", flush=True)
    scores = {name: evaluate(system, name, data) for name in PROTOCOLS if name != "mse"}
    text = "\n".join([
        f"# {base.name}: uncertainty under distribution shift", "",
        "Frames sorted by reference energy per atom; trained on the lowest 50 % (70 % of them "
        f"train, capped at {N_TRAIN_CAP[base.name]}; 10 % validation; 20 % in-distribution "
        "test), tested also on the highest 20 % (shifted). Recalibrations fitted on validation "
        "(NLL): uniform α σ; power a σ^b; distance √(α₁² σ² + α₂² v_LLPR). Coverage: fraction "
        "of |r| ≤ kσ (Gaussian: 0.68, 0.95). RLL in %.", "",
        *table(scores), "",
        f"Command: `python benchmarks/reproduce/shift.py {base.name}`", ""])
    write_report(f"{base.name}_shift", text, scores, results)
    print(text)


if __name__ == "__main__":
    main()
