"""Accuracy and calibration metrics on residuals and predicted standard deviations (numpy).

Inputs everywhere: ``residual`` r = y − μ and ``sigma`` σ (standard deviation, same unit, > 0),
flat arrays of the same length: one entry per structure (energies) or per Cartesian component
(forces). docs/method.md, "Metrics".
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

_TINY = 1e-300
ORACLE_EPS = 1e-12
"""Floor of the oracle variance r² in :func:`rll` (same unit²), so that a residual of exactly 0
does not make the oracle NLL −∞; the usual definition's ε."""
VARIANCE_FLOOR = 1e-6
"""Resolution of a predicted variance, eV² or (eV/Å)²: the scores of this module (and α of
:func:`nll_scale`) take the predictive distribution N(μ, max(σ², floor)), the one the NLL
training losses optimise (``LossConfig.variance_floor``, same default). Below it σ and r are
float32 round-off: on carbon, two symmetric 4-atom crystals of 40 test frames have reference
forces of exactly 0, mean forces of ~1e-4 eV/Å and member spreads of ~1e-6 eV/Å, and their
24 components (2 % of 1020) took the test NLL_F of force NLL from scratch from −0.14 to +2.7
(RLL_F cal +55 → −44 %). On water, ethanol and BaTiO3 it moves no RLL by more than 0.4."""


def rmse(residual) -> float:
    """Root-mean-square of the residuals."""
    return float(np.sqrt(np.mean(np.square(residual))))


def mae(residual) -> float:
    """Mean absolute residual."""
    return float(np.mean(np.abs(residual)))


def gaussian_nll(residual, variance) -> float:
    """Mean Gaussian negative log-likelihood, ½ mean[log(2π v) + r²/v] (nats per sample)."""
    r2 = np.square(residual)
    v = np.maximum(np.asarray(variance, dtype=float), _TINY)
    return float(np.mean(0.5 * (np.log(2 * math.pi * v) + r2 / v)))


def floored_sigma(sigma, variance_floor: float = VARIANCE_FLOOR) -> np.ndarray:
    """σ of the predictive distribution N(μ, max(σ², floor)): sqrt(max(σ², floor))."""
    return np.sqrt(np.maximum(np.square(np.asarray(sigma, dtype=float)), variance_floor))


def rll(residual, sigma, variance_floor: float = VARIANCE_FLOOR) -> float:
    """Relative log-likelihood, %: 100 (NLL(σ²) − NLL(MSE)) / (NLL(r²) − NLL(MSE)).

    100 is the oracle (σ = |r|), 0 a constant error bar equal to the RMSE, negative is worse.
    Here NLL(v) is the mean ½[log v + r²/v]: the ratio is free of the 2π constant. σ² is
    floored at ``variance_floor`` (:data:`VARIANCE_FLOOR`), the oracle's r² at
    :data:`ORACLE_EPS`.
    """
    residual = np.asarray(residual, dtype=float)
    mse = np.mean(np.square(residual))
    oracle = np.maximum(np.square(residual), ORACLE_EPS)
    reference = gaussian_nll(residual, np.full_like(residual, mse))
    best = gaussian_nll(residual, oracle)
    model = gaussian_nll(residual, np.square(floored_sigma(sigma, variance_floor)))
    return float(100 * (model - reference) / (best - reference))


def nll_scale(residual, sigma, variance_floor: float = VARIANCE_FLOOR) -> float:
    """The α minimising the Gaussian NLL of ``residual`` under σ² → max(α² σ², floor).

    Without a floor (``variance_floor`` = 0) it is sqrt(mean (r/σ)²). With one, the entries
    whose α σ is below √floor are constant in α, so on each interval between the thresholds
    t_i = √floor / σ_i the optimum is α² = Σ_active (r/σ)² / n_active, clipped to the interval;
    the best interval is found exactly from cumulative sums (O(n log n)). Entries with σ = 0
    stay at the floor for every α.
    """
    residual, sigma = np.ravel(np.asarray(residual, dtype=float)), np.ravel(
        np.asarray(sigma, dtype=float))
    if variance_floor <= 0 or not np.any(sigma > 0):
        sigma = np.maximum(sigma, _TINY)
        return float(np.sqrt(np.mean((residual / sigma) ** 2)))
    active_ok = sigma > 0
    thresholds = np.full(sigma.shape, np.inf)
    thresholds[active_ok] = np.sqrt(variance_floor) / sigma[active_ok]
    order = np.argsort(thresholds, kind="stable")
    t = thresholds[order]
    n_finite = int(np.sum(active_ok))
    q = np.zeros_like(t)  # (r/σ)² of the entries in threshold order
    log_var = np.zeros_like(t)
    r2 = np.square(residual[order])
    ok = order[:n_finite]
    q[:n_finite] = np.square(residual[ok] / sigma[ok])
    log_var[:n_finite] = np.log(np.square(sigma[ok]))
    # interval j (j = 1..n_finite): α ∈ (t_j, t_{j+1}], entries 1..j active
    j = np.arange(1, n_finite + 1)
    q_sum = np.cumsum(q[:n_finite])
    log_sum = np.cumsum(log_var[:n_finite])
    floored_r2 = np.sum(r2) - np.cumsum(r2[:n_finite])  # r² of the entries still floored
    n_floored = len(t) - j
    upper = np.append(t[1:n_finite], np.inf)  # t_{j+1}
    alpha2 = np.clip(q_sum / j, np.square(t[:n_finite]), np.square(upper))
    total = (0.5 * (j * np.log(alpha2) + log_sum + q_sum / alpha2)
             + 0.5 * (n_floored * math.log(variance_floor) + floored_r2 / variance_floor))
    return float(np.sqrt(alpha2[int(np.argmin(total))]))


def coverage(residual, sigma, k: float) -> float:
    """Fraction of |r| ≤ k σ (a Gaussian gives 0.683 for k=1, 0.954 for k=2)."""
    return float(np.mean(np.abs(residual) <= k * np.asarray(sigma)))


def calibration_curve(residual, sigma, n_points: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """Expected vs observed coverage of central Gaussian intervals on the full [0, 1] grid.

    Returns two arrays of shape (n_points,): expected fractions p = 0, …, 1 and the observed
    fractions of |r|/σ ≤ Φ⁻¹(½ + p/2) (the interval is empty at p = 0, the whole line at 1).
    """
    expected = np.linspace(0.0, 1.0, n_points)
    z = np.abs(np.asarray(residual)) / np.maximum(np.asarray(sigma), _TINY)
    quantiles = np.array([NormalDist().inv_cdf(0.5 + p / 2) if p < 1 else np.inf
                          for p in expected])
    observed = (z[None, :] <= quantiles[:, None]).mean(axis=1)
    return expected, observed


def miscalibration_area(residual, sigma) -> float:
    """Area between observed and expected coverage over p ∈ [0, 1], in [0, 0.5]; 0 is calibrated."""
    expected, observed = calibration_curve(residual, sigma)
    return float(np.trapezoid(np.abs(observed - expected), expected))


def _ranks(x) -> np.ndarray:
    """Ranks with ties averaged."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(a, b) -> float:
    """Spearman rank correlation of two arrays."""
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def ence(residual, sigma, n_bins: int = 10) -> float:
    """Expected normalised calibration error: mean over σ-quantile bins of |RMV − RMSE| / RMV."""
    sigma = np.asarray(sigma, dtype=float)
    order = np.argsort(sigma)
    bins = [b for b in np.array_split(order, min(n_bins, len(order))) if len(b)]
    values = []
    for b in bins:
        rmv = np.sqrt(np.mean(np.square(sigma[b])))
        values.append(abs(rmv - rmse(np.asarray(residual)[b])) / max(rmv, _TINY))
    return float(np.mean(values))


def offset_share(energy_ensemble, n_atoms=None) -> float:
    """Share of the member-energy variance that is one constant per atom and member.

    ``energy_ensemble`` (S, M), eV; ``n_atoms`` (S,) (None: all equal). With
    D_km = (E_km − Ē_k) / N_k and c_m = mean_k D_km, returns S Σ_m c_m² / Σ_km D_km², in [0, 1]:
    near 1, σ_E is a frame-independent offset per atom (a per-member bias, say) and ranks
    nothing; near 0, the spread changes with the structure. Per atom, so that frames of
    different sizes compare; for frames of one size it is the same as on totals.
    """
    ensemble = np.asarray(energy_ensemble, dtype=float)
    deviations = ensemble - ensemble.mean(axis=1, keepdims=True)
    if n_atoms is not None:
        deviations = deviations / np.asarray(n_atoms, dtype=float)[:, None]
    total = float(np.sum(deviations**2))
    if total == 0.0:
        return float("nan")
    return float(len(deviations) * np.sum(deviations.mean(axis=0) ** 2) / total)


def uncertainty_metrics(residual, sigma,
                        variance_floor: float = VARIANCE_FLOOR) -> dict[str, float]:
    """Every metric of this module, as a dictionary, for the predictive distribution
    N(μ, max(σ², ``variance_floor``)) (:data:`VARIANCE_FLOOR`)."""
    residual = np.asarray(residual, dtype=float).ravel()
    sigma = floored_sigma(np.asarray(sigma, dtype=float).ravel(), variance_floor)
    return {
        "rmse": rmse(residual),
        "mae": mae(residual),
        "nll": gaussian_nll(residual, np.square(sigma)),
        "rll": rll(residual, sigma, variance_floor),
        "miscalibration_area": miscalibration_area(residual, sigma),
        "spearman": spearman(np.abs(residual), sigma),
        "ence": ence(residual, sigma),
        "coverage_1sigma": coverage(residual, sigma, 1.0),
        "coverage_2sigma": coverage(residual, sigma, 2.0),
        "mean_sigma": float(np.mean(sigma)),
        "n": int(residual.size),
    }
