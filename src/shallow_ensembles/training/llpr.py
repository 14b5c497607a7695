"""Last-layer Laplace / LLPR posterior of the heads. docs/method.md, "Head initialisation".

The heads are a linear model in their weights θ = w on centred structure features x_k
(``ShallowEnsemble.structure_features``, per-atom normalised): E_k/N_k = θ·x_k + shared/N_k
(the shift every member shares is not sampled). With Φ the loss-weighted rows (energy rows and
optionally force rows, ``init.llpr_heads``), C = ΦᵀΦ + ςI and the analytic uncertainty is
σ²(x) = α² xᵀ C⁻¹ x. Heads are sampled as θ_m = θ_MAP + α C^(−½) z_m, z_m ~ N(0, I), and
re-centred so that their mean is exactly θ_MAP (the ensemble mean is the MAP prediction).

C is handled through its eigendecomposition, so no Cholesky can fail: ς is chosen on a
log grid by validation NLL (α fitted in closed form for each ς), and logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

LOG = logging.getLogger(__name__)


@dataclass
class LastLayerPosterior:
    """C = ΦᵀΦ + ςI through its eigenpairs, and the scale α."""

    eigenvalues: torch.Tensor  # (D,) of ΦᵀΦ
    eigenvectors: torch.Tensor  # (D, D)
    regularizer: float  # ς
    alpha: float  # α

    def variance(self, x: torch.Tensor) -> torch.Tensor:
        """α² xᵀ C⁻¹ x for rows x (K, D) → (K,)."""
        proj = x @ self.eigenvectors
        return self.alpha**2 * (proj.pow(2) / (self.eigenvalues + self.regularizer)).sum(-1)

    def covariance(self) -> torch.Tensor:
        """α² C⁻¹, (D, D)."""
        inv = 1.0 / (self.eigenvalues + self.regularizer)
        return self.alpha**2 * (self.eigenvectors * inv) @ self.eigenvectors.T

    def sample(self, theta_map: torch.Tensor, n: int, generator=None) -> torch.Tensor:
        """n heads θ_m = θ_MAP + α C^(−½) z_m, re-centred on θ_MAP; (n, D)."""
        z = torch.randn(n, theta_map.shape[0], generator=generator, dtype=theta_map.dtype)
        scale = self.alpha / (self.eigenvalues + self.regularizer).sqrt()
        samples = (z * scale) @ self.eigenvectors.T
        return theta_map + samples - samples.mean(0, keepdim=True)


def fit_posterior(train_rows: torch.Tensor, val_rows: torch.Tensor, val_residual: torch.Tensor,
                  regularizer: float | None = None) -> LastLayerPosterior:
    """Build C from training rows (K, D) and choose ς and α on validation.

    Parameters
    ----------
    train_rows : (K, D) rows of Φ (structure features, optionally force rows)
    val_rows : (V, D) validation structure features
    val_residual : (V,) validation residual of the MAP model, per atom (eV/atom)
    regularizer : fixed ς; ``None`` scans ς = λ_max · 10^(−12..0) and keeps the best NLL
    """
    gram = train_rows.T @ train_rows
    gram = 0.5 * (gram + gram.T)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    eigenvalues = eigenvalues.clamp_min(0.0)
    top = float(eigenvalues.max()) if eigenvalues.numel() else 1.0
    grid = [regularizer] if regularizer is not None else [
        top * 10.0**k for k in range(-12, 1)]
    best = None
    for reg in grid:
        post = LastLayerPosterior(eigenvalues, eigenvectors, float(reg), 1.0)
        base = post.variance(val_rows).clamp_min(1e-30)
        alpha2 = float((val_residual.pow(2) / base).mean())
        var = alpha2 * base
        nll = float((0.5 * (var.log() + val_residual.pow(2) / var)).mean())
        if best is None or nll < best[0]:
            best = (nll, reg, alpha2**0.5)
    nll, reg, alpha = best
    LOG.info("LLPR: regulariser ς = %.3e (λ_max = %.3e), α = %.4g, validation NLL %.4f",
             reg, top, alpha, nll)
    return LastLayerPosterior(eigenvalues, eigenvectors, float(reg), float(alpha))
