"""Figures of active-learning runs (matplotlib, imported lazily; Agg canvas, no pyplot state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def plot_rounds(rows: Sequence[Mapping], path: str | Path,
                target_rate: float | None = None) -> Path:
    """Test errors, candidate rate and training-set size across rounds, written as a PNG.

    Parameters
    ----------
    rows : one mapping per round with ``round`` and, where known, ``test_energy_rmse_meV_per_atom``
        (meV/atom), ``test_forces_rmse_meV_per_A`` (meV/Å), ``candidate_rate`` (candidate frames
        per MD step, of the walkers run with the previous round's model) and ``n_train`` (frames)
    path : the PNG to write
    target_rate : ``stopping.min_candidate_rate``, drawn as a dashed line

    Returns
    -------
    The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def series(key):
        pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
        return np.array(pts, dtype=float).reshape(-1, 2)

    fig = Figure(figsize=(10.5, 3.2), constrained_layout=True)
    FigureCanvasAgg(fig)
    ax_f, ax_rate, ax_n = fig.subplots(1, 3)
    forces, energy = series("test_forces_rmse_meV_per_A"), series("test_energy_rmse_meV_per_atom")
    ax_f.plot(forces[:, 0], forces[:, 1], "o-", color="C0", label="forces (meV/Å)")
    ax_f.set_ylabel("test force RMSE (meV/Å)", color="C0")
    ax_e = ax_f.twinx()
    ax_e.plot(energy[:, 0], energy[:, 1], "s--", color="C1", label="energy (meV/atom)")
    ax_e.set_ylabel("test energy RMSE (meV/atom)", color="C1")
    ax_f.set_title("errors on the test set")
    rate = series("candidate_rate")
    ax_rate.plot(rate[:, 0], rate[:, 1], "o-", color="C2")
    if target_rate is not None:
        ax_rate.axhline(target_rate, color="C3", ls="--", lw=1.0,
                        label=f"stop below {target_rate:g}")
        ax_rate.legend(loc="upper right", fontsize="small")
    ax_rate.set_ylabel("candidate rate (per MD step)")
    ax_rate.set_title("exploration with the previous model")
    size = series("n_train")
    ax_n.bar(size[:, 0], size[:, 1], color="C4")
    ax_n.set_ylabel("training frames")
    ax_n.set_title("training set")
    for ax in (ax_f, ax_rate, ax_n):
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        ax.set_xticks([int(r["round"]) for r in rows])
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
