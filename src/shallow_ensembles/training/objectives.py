"""The loss of a trained stage kind on a batch. docs/method.md, "Losses".

Per batch: L = w_E · mean_k N_k^(−a) ℓ_E,k + w_F · mean over atoms and components ℓ_F
(+ w_S · mean stress MSE). The terms ℓ_E and ℓ_F come from the kind's descriptor in
:data:`~shallow_ensembles.training.stages.STAGES` (its module docstring has the table).
Uncertainty stages (energy ``score``) add ``energy_anchor`` times the MSE stage's energy term
on the ensemble mean: an NLL constrains the mean energy only within σ_E, and without the anchor
it drifted where σ_E grew. With ``loss.uncertainty_loss: crps`` the NLLs are replaced by the
Gaussian CRPS (per structure energy, per force component). The stress term is the MSE of the
mean stress in every kind (from the member stresses when the kind uses member forces).
"""

from __future__ import annotations

import torch

from ..conventions import DDOF
from ..data.batch import Batch
from ..model import ShallowEnsemble
from ..model.ensemble import apply_calibration
from . import losses
from .config import LossConfig
from .stages import STAGES


def stage_loss(model: ShallowEnsemble, batch: Batch, kind: str, cfg: LossConfig,
               training: bool = True, method: str = "auto",
               details: dict | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of ``kind`` on ``batch`` and its parts (plain floats, for logs).

    ``training`` keeps the graph for a parameter update (``create_graph`` through forces);
    ``method`` is the member-force route (:meth:`ShallowEnsemble.member_forces`). With member
    forces, ``details`` (if given) receives ``force_residual`` and ``force_sigma`` (N, 3), eV/Å,
    detached, for calibration metrics.
    """
    spec = STAGES[kind]
    want_stress = cfg.stress_weight > 0 and batch.stress is not None
    member = spec.member_forces
    out = model.predict(batch, forces=not member, stress=want_stress, member_forces=member,
                        create_graph=training, method=method)
    members = out["energy_ensemble"]
    exponent = cfg.nll_atom_exponent if spec.uncertainty else cfg.atom_exponent
    weights = losses.structure_weights(batch.n_atoms, exponent).to(batch.energy)
    if spec.energy == "mean":
        energy = losses.mse(out["energy"], batch.energy)
    elif spec.energy == "members":
        energy = losses.mse(members, batch.energy[:, None]).mean(1)
    else:
        energy = _energy_score(members, batch.energy, cfg)
    energy_term = (weights * energy).mean()
    if spec.uncertainty and cfg.energy_anchor:
        variance = members.detach().var(1, correction=DDOF).clamp_min(cfg.variance_floor)
        mean_variance = variance.to(torch.float64).mean()
        anchor = losses.anchor_weights(batch.n_atoms, mean_variance, cfg).to(batch.energy)
        energy_term = energy_term + (anchor * losses.mse(out["energy"], batch.energy)).mean()
    if member:
        forces = out["forces_ensemble"]
        force_term = _force_score(forces, batch.forces, cfg).mean() / 3
        mean_forces = forces.mean(0)
        if details is not None:
            details["force_residual"] = (batch.forces - mean_forces).detach()
            details["force_sigma"] = forces.detach().std(0, correction=1)
    else:
        mean_forces = out["forces"]
        force_term = losses.mse(mean_forces, batch.forces).mean()
    total = cfg.energy_weight * energy_term + cfg.forces_weight * force_term
    parts = {"energy": float(energy_term.detach()), "forces": float(force_term.detach())}
    if want_stress and "stress" in out:
        mask = batch.stress_mask
        stress_term = losses.mse(out["stress"][mask], batch.stress[mask]).mean()
        total = total + cfg.stress_weight * stress_term
        parts["stress"] = float(stress_term.detach())
    n = batch.n_atoms.to(members.dtype)
    error = (out["energy"].detach() - batch.energy) / n
    parts["rmse_e_per_atom"] = float(error.pow(2).mean().sqrt())
    parts["rmse_f"] = float((mean_forces.detach() - batch.forces).pow(2).mean().sqrt())
    return total, parts


def rescale_spread(model: ShallowEnsemble, batch: Batch, kind: str, cfg: LossConfig) -> float:
    """Scale the head deviations w_m − w̄ by the c that minimises the NLL loss of ``kind``.

    Members then deviate c times as much from the (unchanged) mean, in energies and forces
    alike; c is searched on a log grid 10^(−3..3). Starting an NLL stage from heads whose
    spread is far off (LLPR heads fitted to energies, random heads) otherwise gives huge first
    gradients. Returns c.
    """
    member = STAGES[kind].member_forces
    out = model.predict(batch, forces=not member, member_forces=member)
    energies = out["energy_ensemble"].detach()
    forces = out["forces_ensemble"].detach() if member else None
    weights = losses.structure_weights(batch.n_atoms, cfg.nll_atom_exponent).to(energies)

    raw = {"energy_ensemble": energies, "energy_uncertainty": energies.std(1)}
    if member:
        raw["forces_ensemble"] = forces

    def loss(c):
        scaled = apply_calibration(raw, c, c)
        total = cfg.energy_weight * (weights * _energy_score(
            scaled["energy_ensemble"], batch.energy, cfg)).mean()
        if member:
            total = total + cfg.forces_weight * _force_score(
                scaled["forces_ensemble"], batch.forces, cfg).mean() / 3
        return float(total)

    grid = [10.0 ** (k / 8) for k in range(-24, 25)]
    best = min(grid, key=loss)
    with torch.no_grad():
        weight = model.head.weight
        mean = weight.mean(0, keepdim=True)
        weight.copy_(mean + best * (weight - mean))
    return best


def _energy_score(members: torch.Tensor, target: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Per-structure NLL or CRPS (``cfg.uncertainty_loss``), (S,), of member totals (S, M) eV."""
    if cfg.uncertainty_loss == "crps":
        sigma = members.var(1, correction=DDOF).clamp_min(cfg.variance_floor).sqrt()
        return losses.gaussian_crps(members.mean(1), sigma, target)
    nll = losses.energy_nll(members, target, cfg.variance_floor)
    if cfg.energy_nll_beta:
        variance = members.var(1, correction=DDOF).clamp_min(cfg.variance_floor)
        nll = nll * losses.beta_weights(variance, cfg.energy_nll_beta)
    return nll


def _force_score(members: torch.Tensor, target: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Per-atom force NLL or CRPS summed over xyz, (N,), of member forces (M, N, 3) eV/Å."""
    if cfg.uncertainty_loss == "crps":
        sigma = members.var(0, correction=DDOF).clamp_min(cfg.variance_floor).sqrt()
        return losses.gaussian_crps(members.mean(0), sigma, target).sum(-1)
    return losses.force_nll(members, target, cfg.force_nll, cfg.variance_floor, cfg.force_jitter)
