"""Evaluation of a model on labelled data: metrics raw and calibrated, report and plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .calibration import predict_dataset
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
        sig = alpha_f * np.linalg.norm(pred["forces_sigma"], axis=1)
        out["forces_norm"] = (norm, np.zeros_like(norm), sig)
    return out


def compute_metrics(pred: dict[str, np.ndarray], alpha_e: float, alpha_f: float) -> dict:
    """``{"calibrated": {quantity: metrics}, "raw": {...}, "alpha": {...},
    "energy_offset_share": float}`` (:func:`~shallow_ensembles.metrics.offset_share` of the
    member energies; a diagnostic: σ_E carries information only where it is well below 1)."""
    result = {"alpha": {"energy": alpha_e, "forces": alpha_f},
              "energy_offset_share": offset_share(pred["energy_ensemble"])}
    for label, (ae, af) in {"calibrated": (alpha_e, alpha_f), "raw": (1.0, 1.0)}.items():
        result[label] = {name: uncertainty_metrics(ref - p, s)
                         for name, (p, ref, s) in quantities(pred, ae, af).items()}
    return result


def evaluate(model: ShallowEnsemble, graphs: Sequence[Graph], output_dir: str | Path,
             plots: bool = True, title: str = "") -> dict:
    """Write ``metrics.json``, ``report.md`` and PNG plots for ``graphs`` into ``output_dir``."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    pred = predict_dataset(model, graphs, member_forces=True)
    alpha_e, alpha_f = float(model.alpha_energy), float(model.alpha_forces)
    metrics = compute_metrics(pred, alpha_e, alpha_f)
    metrics["n_structures"] = int(len(pred["energy"]))
    metrics["n_members"] = int(model.n_members)
    (output / "metrics.json").write_text(json.dumps(metrics, indent=1))
    figures = []
    if plots:
        from .plots import evaluation_figures

        figures = evaluation_figures(quantities(pred, alpha_e, alpha_f), output)
    (output / "report.md").write_text(markdown_report(metrics, figures, title))
    return metrics


def markdown_report(metrics: dict, figures: Sequence[Path] = (), title: str = "") -> str:
    """A short Markdown table of the metrics (calibrated and raw)."""
    keys = ["rmse", "mae", "nll", "rll", "miscalibration_area", "spearman", "ence",
            "coverage_1sigma", "coverage_2sigma"]
    lines = [f"# Evaluation{': ' + title if title else ''}", "",
             f"{metrics.get('n_structures', '?')} structures, {metrics.get('n_members', '?')} "
             f"members; α_E = {metrics['alpha']['energy']:.4g}, "
             f"α_F = {metrics['alpha']['forces']:.4g}. Units: eV, eV/atom, eV/Å; σ are standard "
             "deviations (ddof = 1); RLL in %.", "",
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
