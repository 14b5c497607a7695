"""Training losses on ensemble predictions (pure functions). docs/method.md, "Losses".

Symbols: S structures, N atoms, M members. Energies eV, forces eV/Å. All NLLs drop the
constant ½ log 2π. Variances come from the members with ddof=1 and are floored at
``floor`` (eV² or (eV/Å)²) so that gradients stay finite when members collapse.
"""

from __future__ import annotations

import math

import torch

from ..conventions import DDOF


def structure_weights(n_atoms: torch.Tensor, exponent: float) -> torch.Tensor:
    """w_k = N_k^(−a), (S,) float64 (callers cast): a = 1 makes every structure's loss per atom."""
    return n_atoms.to(torch.float64).pow(-exponent)


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Elementwise squared error (y − μ)², same shape as the inputs."""
    return (prediction - target).pow(2)


def gaussian_nll(mean: torch.Tensor, variance: torch.Tensor, target: torch.Tensor,
                 floor: float = 1e-6) -> torch.Tensor:
    """ℓ = ½[log σ² + (y − μ)²/σ²] with σ² = max(variance, floor), elementwise."""
    variance = variance.clamp_min(floor)
    return 0.5 * (variance.log() + (target - mean).pow(2) / variance)


def energy_nll(members: torch.Tensor, target: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """Per-structure energy NLL, (S,), from member totals (S, M) and targets (S,) eV."""
    return gaussian_nll(members.mean(1), members.var(1, correction=DDOF), target, floor)


def anchor_weights(n_atoms: torch.Tensor, mean_variance: torch.Tensor, cfg) -> torch.Tensor:
    """Per-structure weights (S,) float64 of the anchor (Ē − E)² (``cfg``: a ``LossConfig``):
    λ N^(−a) (``energy_anchor_scale: absolute``) or λ ½ N^(−a_NLL) / σ̄² (``variance``), with
    ``mean_variance`` σ̄² the mean floored σ_E² (a scalar, eV², detached here)."""
    if cfg.energy_anchor_scale == "auto":
        raise ValueError("energy_anchor_scale 'auto' depends on the stage and the training "
                         "frames: resolve it with LossConfig.for_stage first")
    if cfg.energy_anchor_scale == "absolute":
        return cfg.energy_anchor * structure_weights(n_atoms, cfg.atom_exponent)
    return cfg.energy_anchor * 0.5 * structure_weights(n_atoms, cfg.nll_atom_exponent) \
        / mean_variance.detach().to(torch.float64)


def beta_weights(variance: torch.Tensor, beta: float) -> torch.Tensor:
    """β-NLL weights (σ_k² / mean σ²)^β, detached, (S,), from variances (S,) (Seitzer 2022)."""
    variance = variance.detach()
    return (variance / variance.mean()) ** beta


def force_nll(members: torch.Tensor, target: torch.Tensor, kind: str = "component",
              floor: float = 1e-6, jitter: float = 1e-6) -> torch.Tensor:
    """Per-atom force NLL, (N,), from member forces (M, N, 3) and targets (N, 3) eV/Å.

    ``component``: Σ_xyz ½[log σ_x² + r_x²/σ_x²] (one Gaussian per Cartesian component);
    ``isotropic``: 3 × ½[log σ̄² + |r|²/(3σ̄²)] with σ̄² the mean of the 3 component variances;
    ``full``: ½[rᵀΣ⁻¹r + log det Σ], Σ = (1/(M−1)) Σ_m d_m d_mᵀ + jitter·I, d_m = F_m − F̄.
    With M ≤ 3 members Σ is singular without the jitter; see :func:`_cholesky_3x3`.
    """
    mean = members.mean(0)
    residual = target - mean
    if kind == "component":
        return gaussian_nll(mean, members.var(0, correction=DDOF), target, floor).sum(-1)
    if kind == "isotropic":
        var = members.var(0, correction=DDOF).mean(-1).clamp_min(floor)
        return 1.5 * var.log() + 0.5 * residual.pow(2).sum(-1) / var
    if kind == "full":
        dev = members - mean
        cov = torch.einsum("mna,mnb->nab", dev, dev) / (members.shape[0] - DDOF)
        chol = _cholesky_3x3(cov, jitter)
        solved = torch.cholesky_solve(residual.unsqueeze(-1), chol).squeeze(-1)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        return 0.5 * ((residual * solved).sum(-1) + logdet)
    raise ValueError(f"force NLL kind must be component, isotropic or full, got {kind!r}")


def _cholesky_3x3(cov: torch.Tensor, jitter: float) -> torch.Tensor:
    """Cholesky factors (N, 3, 3) of cov (N, 3, 3) + j·I, with j large enough for the dtype.

    The jitter is at least √ε_dtype · max(trace(Σ)/3, 1) per atom: float32 rounds a 1e-6 jitter
    away for forces of order 1 eV/Å, and with M ≤ 3 members (singular Σ) the condition number,
    hence the relative error of the solve, stays near 1/√ε (3e-4 in float32). Atoms whose
    factorisation still fails (``cholesky_ex`` info > 0) are retried with a 1000× larger
    jitter, so one degenerate atom does not stop training.
    """
    eye = torch.eye(3, dtype=cov.dtype, device=cov.device)
    scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1).detach().clamp_min(1.0)
    floor = torch.finfo(cov.dtype).eps ** 0.5 * scale
    jitter = torch.clamp_min(floor, jitter)[:, None, None]
    chol, info = torch.linalg.cholesky_ex(cov + jitter * eye)
    if bool((info > 0).any()):
        retry, _ = torch.linalg.cholesky_ex(cov + 1e3 * jitter * eye)
        chol = torch.where((info > 0)[:, None, None], retry, chol)
    return chol


def gaussian_crps(mean: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Closed-form CRPS of N(μ, σ²) at y: σ[z(2Φ(z) − 1) + 2φ(z) − 1/√π], z = (y − μ)/σ."""
    z = (target - mean) / sigma
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return sigma * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))
