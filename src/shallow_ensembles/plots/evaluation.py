"""Figures of an evaluation: parity, error against σ, coverage and z histograms (PNG)."""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..metrics import calibration_curve, miscalibration_area  # noqa: E402

UNITS = {"energy": "eV", "energy_per_atom": "eV/atom", "forces": "eV/Å", "forces_norm": "eV/Å"}


def parity(ax, pred, ref, sigma, unit, label):
    """Reference vs prediction with ±σ error bars (at most 2000 points)."""
    idx = np.random.default_rng(0).permutation(len(pred))[:2000]
    ax.errorbar(ref[idx], pred[idx], yerr=sigma[idx], fmt="o", ms=2, alpha=0.5, elinewidth=0.6,
                color="C0")
    lo, hi = min(ref.min(), pred.min()), max(ref.max(), pred.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(f"reference {label} ({unit})")
    ax.set_ylabel(f"predicted {label} ({unit})")
    ax.set_title(f"parity: {label}")


def error_vs_sigma(ax, residual, sigma, unit, label):
    """|error| against σ on log-log axes, with the Gaussian quantile lines of |r|/σ."""
    err = np.maximum(np.abs(residual), 1e-12)
    sig = np.maximum(sigma, 1e-12)
    ax.loglog(sig, err, "o", ms=2, alpha=0.4, color="C0", rasterized=True)
    grid = np.logspace(np.log10(sig.min()), np.log10(sig.max()), 50)
    for p, style in ((0.5, ":"), (0.95, "--"), (0.99, "-")):
        q = NormalDist().inv_cdf(0.5 + p / 2)
        ax.loglog(grid, q * grid, "k" + style, lw=0.8, label=f"{int(p * 100)} % of |error|")
    ax.set_xlabel(f"σ ({unit})")
    ax.set_ylabel(f"|error| ({unit})")
    ax.set_title(f"error vs σ: {label}")
    ax.legend(fontsize=7)


def coverage_plot(ax, residual, sigma, label):
    """Observed against expected coverage of central Gaussian intervals."""
    expected, observed = calibration_curve(residual, sigma)
    ax.plot(expected, observed, color="C1", label=f"{label}")
    ax.fill_between(expected, expected, observed, color="C1", alpha=0.2)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("expected coverage")
    ax.set_ylabel("observed coverage")
    ax.set_title(f"calibration: {label} (area {miscalibration_area(residual, sigma):.3f})")


def z_histogram(ax, residual, sigma, label):
    """Histogram of z = r/σ against the unit Gaussian."""
    z = np.clip(residual / np.maximum(sigma, 1e-300), -6, 6)
    ax.hist(z, bins=60, range=(-6, 6), density=True, color="C2", alpha=0.6)
    x = np.linspace(-6, 6, 200)
    ax.plot(x, np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi), "k", lw=1, label="N(0, 1)")
    ax.set_xlabel("z = error / σ")
    ax.set_title(f"z-scores: {label}")
    ax.legend(fontsize=7)


def evaluation_figures(quantities: dict, output: Path) -> list[Path]:
    """One 2×2 PNG per quantity (parity, error vs σ, calibration, z-scores)."""
    paths = []
    for name, (pred, ref, sigma) in quantities.items():
        if name == "forces_norm":
            continue
        fig, axes = plt.subplots(2, 2, figsize=(10, 9))
        residual = ref - pred
        parity(axes[0, 0], pred, ref, sigma, UNITS[name], name)
        error_vs_sigma(axes[0, 1], residual, sigma, UNITS[name], name)
        coverage_plot(axes[1, 0], residual, sigma, name)
        z_histogram(axes[1, 1], residual, sigma, name)
        fig.tight_layout()
        path = output / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
