"""Evaluation of a model on labelled data: metrics raw and calibrated, report and plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from . import conventions as K
from .calibration import predict_dataset_pair
from .data.batch import Graph
from .metrics import offset_share, uncertainty_metrics
from .model import ShallowEnsemble


def quantities(pred: dict[str, np.ndarray], alpha_e: float = 1.0,
               alpha_f: float = 1.0) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(prediction, reference, σ) flat arrays per quantity, σ scaled by α.

    ``energy`` per structure (eV), ``energy_per_atom`` (eV/atom), ``forces`` per Cartesian
    component (eV/Å), ``forces_norm`` per atom: |F̄ − F| against ‖σ(F_i)‖ (eV/Å).
    """
    n = pred["n_atoms"]
    out = {
        "energy": (pred["energy"], pred["ref_energy"], alpha_e * pred["energy_sigma"]),
        "energy_per_atom": (pred["energy"] / n, pred["ref_energy"] / n,
                            alpha_e * pred["energy_sigma"] / n),
    }
    if "forces_sigma" in pred:
        out["forces"] = (pred["forces"].ravel(), pred["ref_forces"].ravel(),
                         alpha_f * pred["forces_sigma"].ravel())
        norm = np.linalg.norm(pred["forces"] - pred["ref_forces"], axis=1)
        sig = alpha_f * K.forces_uncertainty_norm(pred["forces_sigma"])
        out["forces_norm"] = (norm, np.zeros_like(norm), sig)
    return out


def compute_metrics(pred: dict[str, np.ndarray], alpha_e: float = 1.0, alpha_f: float = 1.0,
                    calibrated: dict[str, np.ndarray] | None = None) -> dict:
    """``{"calibrated": {quantity: metrics}, "raw": {...}, "alpha": {...},
    "energy_offset_share": float}``.

    ``calibrated``: the same predictions calibrated by the model
    (:func:`~shallow_ensembles.calibration.predict_dataset_pair`, per-element α_F included);
    α_E and α_F are then only reported. Without it (predictions of other models) the
    calibrated σ are the raw ones times the scalars α_E, α_F. ``energy_offset_share``:
    :func:`~shallow_ensembles.metrics.offset_share` of the raw member energies, a diagnostic
    (σ_E carries information only where it is well below 1).
    """
    result = {"alpha": {"energy": alpha_e, "forces": alpha_f},
              "energy_offset_share": offset_share(pred["energy_ensemble"], pred["n_atoms"])}
    sets = {"calibrated": quantities(calibrated) if calibrated is not None
            else quantities(pred, alpha_e, alpha_f), "raw": quantities(pred)}
    for label, values in sets.items():
        result[label] = {name: uncertainty_metrics(ref - p, s)
                         for name, (p, ref, s) in values.items()}
    return result


def model_alphas(model: ShallowEnsemble) -> dict[str, float]:
    """The model's calibration factors: ``energy``, ``forces`` and ``forces_<symbol>`` (α_F·a_Z)."""
    from ase.data import chemical_symbols

    alphas = {"energy": float(model.alpha_energy), "forces": float(model.alpha_forces)}
    per_atom = model.force_alphas(torch.as_tensor(model.species)).tolist()
    if any(abs(a - alphas["forces"]) > 0 for a in per_atom):
        alphas.update({f"forces_{chemical_symbols[z]}": a
                       for z, a in zip(model.species, per_atom, strict=True)})
    return alphas


def evaluate(model: ShallowEnsemble, graphs: Sequence[Graph], output_dir: str | Path,
             plots: bool = True, title: str = "") -> dict:
    """Write ``metrics.json``, ``report.md`` and PNG plots for ``graphs`` into ``output_dir``.

    Calibrated metrics use the model's own calibration (per-element α_F from
    ``calibrate --per-element`` included).
    """
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    raw, calibrated = predict_dataset_pair(model, graphs, member_forces=True)
    alphas = model_alphas(model)
    metrics = compute_metrics(raw, alphas["energy"], alphas["forces"], calibrated=calibrated)
    metrics["alpha"] = alphas
    metrics["n_structures"] = int(len(raw["energy"]))
    metrics["n_members"] = int(model.n_members)
    (output / "metrics.json").write_text(json.dumps(metrics, indent=1))
    figures = []
    if plots:
        from .plots.evaluation import evaluation_figures

        figures = evaluation_figures(quantities(calibrated), output)
    (output / "report.md").write_text(markdown_report(metrics, figures, title))
    return metrics


def markdown_report(metrics: dict, figures: Sequence[Path] = (), title: str = "") -> str:
    """A short Markdown table of the metrics (calibrated and raw)."""
    keys = ["rmse", "mae", "nll", "rll", "miscalibration_area", "spearman", "ence",
            "coverage_1sigma", "coverage_2sigma"]
    lines = [f"# Evaluation{': ' + title if title else ''}", "",
             f"{metrics.get('n_structures', '?')} structures, {metrics.get('n_members', '?')} "
             f"members; α_E = {metrics['alpha']['energy']:.4g}, "
             f"α_F = {metrics['alpha']['forces']:.4g}{_per_element(metrics['alpha'])}. Units: "
             "eV, eV/atom, eV/Å; σ are standard deviations (ddof = 1); RLL in %.", "",
             f"Energy offset share: {metrics.get('energy_offset_share', float('nan')):.3f} (the "
             "part of the member-energy variance that is one constant per member in every "
             "frame; σ_E ranks structures only when it is small).", "",
             "| set | quantity | " + " | ".join(keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for label in ("calibrated", "raw"):
        for name, values in metrics[label].items():
            cells = " | ".join(f"{values[k]:.4g}" for k in keys)
            lines.append(f"| {label} | {name} | {cells} |")
    lines.append("")
    lines += [f"![{Path(f).stem}]({Path(f).name})" for f in figures]
    return "\n".join(lines) + "\n"


def _per_element(alphas: dict) -> str:
    """`` (per element: H 0.9, O 1.2)`` for per-element force factors, else ``""``."""
    parts = [f"{k.removeprefix('forces_')} {v:.4g}" for k, v in alphas.items()
             if k.startswith("forces_")]
    return f" (per element: {', '.join(parts)})" if parts else ""
