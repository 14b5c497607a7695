"""Figures of MD runs (matplotlib, imported lazily; Agg canvas, no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..thresholds import TrustLevels


def plot_uncertainty(time_fs: np.ndarray, energy_per_atom_eV: np.ndarray,
                     max_forces_eV_per_A: np.ndarray, path: str | Path,
                     levels: TrustLevels | None = None,
                     relative: np.ndarray | None = None,
                     relative_levels: TrustLevels | None = None,
                     title: str | None = None) -> Path:
    """σ against time with the trust levels drawn, written as a PNG.

    Parameters
    ----------
    time_fs : shape (T,), fs
    energy_per_atom_eV : shape (T,), eV/atom; σ_E / N (standard deviation, ddof=1)
    max_forces_eV_per_A : shape (T,), eV/Å; max_i ‖σ(F_i)‖ (ddof=1), nan where not computed
    path : the PNG to write
    levels : lo (dashed) and hi (solid) lines on each panel
    relative : shape (T,), dimensionless relative force σ, drawn in a third panel when given
    relative_levels : its levels, on the force slot of a :class:`TrustLevels`
    title : figure title

    Returns
    -------
    The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    levels = levels or TrustLevels()
    panels = [("σ_E / atom (eV)", energy_per_atom_eV,
               levels.energy_per_atom_lo_eV, levels.energy_per_atom_hi_eV),
              ("max σ_F (eV/Å)", max_forces_eV_per_A,
               levels.forces_lo_eV_per_A, levels.forces_hi_eV_per_A)]
    if relative is not None and np.isfinite(relative).any():
        rel = relative_levels or TrustLevels()
        panels.append(("max relative σ_F", relative, rel.forces_lo_eV_per_A,
                       rel.forces_hi_eV_per_A))
    fig = Figure(figsize=(7.0, 2.2 * len(panels) + 0.6), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    time_fs = np.asarray(time_fs, dtype=float)
    for ax, (label, values, lo, hi) in zip(axes, panels, strict=True):
        values = np.asarray(values, dtype=float)
        shown = np.isfinite(values)
        ax.plot(time_fs[shown], values[shown], lw=1.0, color="C0")
        if lo is not None:
            ax.axhline(lo, color="C1", ls="--", lw=1.0, label=f"lo = {lo:g}")
        if hi is not None:
            ax.axhline(hi, color="C3", ls="-", lw=1.0, label=f"hi = {hi:g}")
        if lo is not None or hi is not None:
            ax.legend(loc="upper left", fontsize="small")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time (fs)")
    if title:
        axes[0].set_title(title)
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
