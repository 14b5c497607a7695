"""Per-round numbers of an active-learning run and the tables across rounds (CSV, Markdown).

One row per round (``round_XX/report.json``):

=============================  ========  ========================================================
column                         unit      meaning
=============================  ========  ========================================================
round                          --        0 is the starting model
kind                           --        initial, trained, or explored (exploration only: the
                                         stopping round, or the final exploration)
n_train, n_validation          frames    data the round's model was trained and calibrated on
md_steps                       steps     MD steps run by the walkers (with the previous model)
n_candidates                   frames    candidate frames saved by the walkers' save actions
candidate_rate                 --        n_candidates / md_steps
walkers_stopped                --        walkers that ended early (stop, rollback or guard)
n_selected, n_labelled         frames    chosen from the pool; labelled by the reference
test_energy_rmse_meV_per_atom  meV/atom  the round's model on the fixed test set
test_forces_rmse_meV_per_A     meV/Å     (per Cartesian component)
test_energy_rll, test_forces_  %         relative log-likelihood of the calibrated σ
rll
alpha_energy, alpha_forces     --        calibration factors refitted on validation
selected_forces_rmse_before/   meV/Å     force error on the labelled frames, previous model /
after                                    this round's model
selected_sigma_f_before/after  meV/Å     mean over labelled frames of max_i ‖σ(F_i)‖
                                         (calibrated), previous / this round's model
seconds                        s         wall time of the round
=============================  ========  ========================================================
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from .. import conventions as K
from ..calibration import predict_dataset, predict_dataset_pair
from ..data.batch import graphs_from_atoms
from ..evaluation import compute_metrics
from ..model import ShallowEnsemble

COLUMNS = ("round", "kind", "n_train", "n_validation", "md_steps", "n_candidates",
           "candidate_rate", "walkers_stopped", "n_selected", "n_labelled",
           "test_energy_rmse_meV_per_atom", "test_forces_rmse_meV_per_A", "test_energy_rll",
           "test_forces_rll", "alpha_energy", "alpha_forces", "selected_forces_rmse_before",
           "selected_forces_rmse_after", "selected_sigma_f_before", "selected_sigma_f_after",
           "seconds")

MARKDOWN = (  # (column, header, format)
    ("round", "round", "{}"), ("kind", "kind", "{}"), ("n_train", "train", "{}"),
    ("n_validation", "val", "{}"), ("md_steps", "MD steps", "{}"),
    ("n_candidates", "candidates", "{}"), ("candidate_rate", "cand. rate", "{:.3f}"),
    ("n_labelled", "labelled", "{}"),
    ("test_energy_rmse_meV_per_atom", "test E RMSE (meV/atom)", "{:.2f}"),
    ("test_forces_rmse_meV_per_A", "test F RMSE (meV/Å)", "{:.1f}"),
    ("test_energy_rll", "RLL E (%)", "{:.1f}"), ("test_forces_rll", "RLL F (%)", "{:.1f}"),
    ("selected_forces_rmse_before", "sel. F RMSE before→after (meV/Å)", "{:.0f}"),
    ("selected_sigma_f_before", "sel. max σ_F before→after (meV/Å)", "{:.0f}"),
    ("seconds", "s", "{:.0f}"),
)


def model_metrics(model: ShallowEnsemble, frames: Sequence[Atoms]) -> dict[str, float]:
    """Errors and RLL of the calibrated ``model`` on labelled ``frames`` (report columns)."""
    alpha_e, alpha_f = float(model.alpha_energy), float(model.alpha_forces)
    out = {"alpha_energy": alpha_e, "alpha_forces": alpha_f}
    if not frames:
        return out
    raw, calibrated = predict_dataset_pair(model, graphs_from_atoms(frames, model.cutoff))
    metrics = compute_metrics(raw, alpha_e, alpha_f, calibrated=calibrated)["calibrated"]
    out.update({
        "test_energy_rmse_meV_per_atom": 1e3 * metrics["energy_per_atom"]["rmse"],
        "test_forces_rmse_meV_per_A": 1e3 * metrics["forces"]["rmse"],
        "test_energy_rll": metrics["energy"]["rll"],
        "test_forces_rll": metrics["forces"]["rll"],
    })
    return out


def frame_errors(model: ShallowEnsemble, frames: Sequence[Atoms]) -> tuple[float, float]:
    """(force RMSE, mean over frames of max_i ‖σ(F_i)‖), both meV/Å, calibrated σ."""
    pred = predict_dataset(model, graphs_from_atoms(frames, model.cutoff), calibrated=True)
    rmse = float(np.sqrt(np.mean((pred["forces"] - pred["ref_forces"]) ** 2)))
    per_frame = K.max_forces_uncertainty(pred["forces_sigma"], pred["n_atoms"])
    return 1e3 * rmse, 1e3 * float(np.mean(per_frame))


def write_tables(rows: Sequence[Mapping], output_dir: Path) -> tuple[Path, Path]:
    """Write ``report.csv`` (every column) and ``report.md`` (the main ones); their paths."""
    csv_path, md_path = output_dir / "report.csv", output_dir / "report.md"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: row.get(k, "") for k in COLUMNS} for row in rows])
    md_path.write_text(markdown_table(rows))
    return csv_path, md_path


def markdown_table(rows: Sequence[Mapping]) -> str:
    """The per-round table in Markdown (empty cells where a round has no value)."""
    lines = ["# Active learning: one row per round", "",
             "Candidate rate: candidate frames / MD steps of the round's walkers (run with the "
             "previous round's model). Test errors: the round's model on the fixed test set, "
             "RLL of its calibrated σ. Selected: the round's labelled frames with the previous "
             "→ the new model.", "",
             "| " + " | ".join(h for _, h, _ in MARKDOWN) + " |",
             "|" + "---|" * len(MARKDOWN)]
    for row in rows:
        cells = []
        for key, _, fmt in MARKDOWN:
            cell = _cell(row.get(key), fmt)
            pair = {"selected_forces_rmse_before": "selected_forces_rmse_after",
                    "selected_sigma_f_before": "selected_sigma_f_after"}.get(key)
            if pair and cell:
                cell = f"{cell} → {_cell(row.get(pair), fmt)}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return fmt.format(value)
