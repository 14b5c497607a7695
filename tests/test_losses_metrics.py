"""Losses and metrics against hand computations."""

import math

import numpy as np
import pytest
import torch

from shallow_ensembles import metrics
from shallow_ensembles.training import losses


def test_gaussian_nll_by_hand():
    members = torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64)
    target = torch.tensor([3.0], dtype=torch.float64)
    mean, var = 7 / 3, np.var([1, 2, 4], ddof=1)
    expected = 0.5 * (math.log(var) + (3 - mean) ** 2 / var)
    assert float(losses.energy_nll(members, target)) == pytest.approx(expected)
    # σ = 1: NLL is half the squared error
    one = losses.gaussian_nll(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(2.0))
    assert float(one) == pytest.approx(2.0)


def test_variance_floor_keeps_gradients_finite():
    members = torch.full((2, 4), 1.0, dtype=torch.float64, requires_grad=True)
    loss = losses.energy_nll(members, torch.tensor([1.5, 0.5], dtype=torch.float64)).sum()
    loss.backward()
    assert torch.isfinite(members.grad).all()


def test_force_nll_variants_by_hand():
    rng = np.random.default_rng(0)
    members = rng.normal(size=(6, 2, 3))
    target = rng.normal(size=(2, 3))
    t_members, t_target = torch.tensor(members), torch.tensor(target)
    mean, var = members.mean(0), members.var(0, ddof=1)
    r = target - mean
    comp = (0.5 * (np.log(var) + r**2 / var)).sum(1)
    np.testing.assert_allclose(losses.force_nll(t_members, t_target, "component"), comp)
    iso_var = var.mean(1)
    iso = 1.5 * np.log(iso_var) + 0.5 * (r**2).sum(1) / iso_var
    np.testing.assert_allclose(losses.force_nll(t_members, t_target, "isotropic"), iso)
    full = []
    for n in range(2):
        d = members[:, n] - mean[n]
        cov = d.T @ d / 5 + 1e-6 * np.eye(3)
        full.append(0.5 * (r[n] @ np.linalg.solve(cov, r[n]) + np.log(np.linalg.det(cov))))
    np.testing.assert_allclose(losses.force_nll(t_members, t_target, "full"), full, rtol=1e-8)


def test_crps_matches_numerical_integral():
    mu, sigma, y = 0.3, 0.7, 1.1
    grid = np.linspace(-10, 10, 200001)
    cdf = 0.5 * (1 + np.vectorize(math.erf)((grid - mu) / (sigma * math.sqrt(2))))
    numeric = np.trapezoid((cdf - (grid >= y)) ** 2, grid)
    closed = losses.gaussian_crps(torch.tensor(mu), torch.tensor(sigma), torch.tensor(y))
    assert float(closed) == pytest.approx(numeric, rel=1e-4)


def test_structure_weights():
    w = losses.structure_weights(torch.tensor([1, 4, 9]), 0.5)
    np.testing.assert_allclose(w, [1, 0.5, 1 / 3])


def test_rll_by_hand():
    r = np.array([0.1, -0.3, 0.2, 0.5])
    sigma = np.array([0.2, 0.2, 0.3, 0.4])

    def nll(v):
        return np.mean(0.5 * (np.log(v) + r**2 / v))

    mse = np.mean(r**2)
    expected = 100 * (nll(sigma**2) - nll(np.full(4, mse))) / (nll(r**2) - nll(np.full(4, mse)))
    assert metrics.rll(r, sigma) == pytest.approx(expected)
    assert metrics.rll(r, np.abs(r)) == pytest.approx(100)
    assert metrics.rll(r, np.full(4, np.sqrt(mse))) == pytest.approx(0, abs=1e-9)


def test_calibration_metrics_known_values():
    rng = np.random.default_rng(1)
    sigma = rng.uniform(0.5, 2.0, 200000)
    r = sigma * rng.normal(size=sigma.size)
    assert metrics.miscalibration_area(r, sigma) < 0.01
    assert metrics.coverage(r, sigma, 1) == pytest.approx(0.6827, abs=0.005)
    assert metrics.coverage(r, sigma, 2) == pytest.approx(0.9545, abs=0.003)
    assert metrics.ence(r, sigma) < 0.02
    assert metrics.miscalibration_area(r, 3 * sigma) > 0.2
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert metrics.gaussian_nll([0.0], [1.0]) == pytest.approx(0.5 * math.log(2 * math.pi))


def test_full_force_nll_in_float32_with_singular_covariance():
    # M = 3 members: the 3×3 member covariance has rank ≤ 2, so only the jitter makes it
    # positive definite; 1e-6 vanishes against float32 rounding of (eV/Å)²-sized entries.
    rng = np.random.default_rng(3)
    members = rng.normal(scale=2.0, size=(3, 5, 3))
    target = members.mean(0) + rng.normal(scale=0.1, size=(5, 3))
    got = losses.force_nll(torch.tensor(members, dtype=torch.float32),
                           torch.tensor(target, dtype=torch.float32), "full")
    assert torch.isfinite(got).all()
    expected = []
    for n in range(5):  # float64 oracle with the jitter the float32 path documents
        d = members[:, n] - members[:, n].mean(0)
        cov = d.T @ d / 2
        jitter = max(np.finfo(np.float32).eps ** 0.5 * max(np.trace(cov) / 3, 1.0), 1e-6)
        cov = cov + jitter * np.eye(3)
        r = target[n] - members[:, n].mean(0)
        expected.append(0.5 * (r @ np.linalg.solve(cov, r) + np.log(np.linalg.det(cov))))
    # float32 solve of a system with condition number ≤ 1/√ε: relative error ~1e-3 at most
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=2e-3)


def test_rll_oracle_floor_is_1e_minus_12():
    r = np.array([0.0, 0.3, -0.2, 0.1])  # one exact prediction: r² = 0 → floored at 1e-12
    sigma = np.array([0.05, 0.2, 0.2, 0.1])

    def nll(v):
        return np.mean(0.5 * (np.log(v) + r**2 / v))

    mse = np.full(4, np.mean(r**2))
    oracle = np.maximum(r**2, 1e-12)
    expected = 100 * (nll(sigma**2) - nll(mse)) / (nll(oracle) - nll(mse))
    assert metrics.rll(r, sigma) == pytest.approx(expected, rel=1e-12)


def test_miscalibration_area_spans_the_full_unit_interval():
    rng = np.random.default_rng(2)
    r = rng.normal(size=1000)
    expected, observed = metrics.calibration_curve(r, np.ones_like(r))
    assert expected[0] == 0.0 and expected[-1] == 1.0
    assert observed[0] == 0.0 and observed[-1] == 1.0
    # σ → ∞: every |r|/σ is inside every interval with p > 0, so observed = 1 there and the
    # area is the trapezoid of 1 − p on the 101-point grid: ½·0.99² + ½·0.01·0.99
    area = metrics.miscalibration_area(r, np.full_like(r, 1e12))
    assert area == pytest.approx(0.5 * 0.99**2 + 0.5 * 0.01 * 0.99, rel=1e-12)


def _labelled_periodic_batch():
    from conftest import tiny_model
    from shallow_ensembles.data import collate, graphs_from_atoms
    from test_md_model_devi import water_box

    frames = [water_box(seed=s) for s in range(2)]
    model = tiny_model(species=(1, 8), frames=frames)
    graphs = graphs_from_atoms(frames, model.cutoff)
    rng = np.random.default_rng(0)
    for g in graphs:
        g.energy = float(rng.normal())
        g.forces = rng.normal(size=(len(g), 3))
        g.stress = rng.normal(scale=0.01, size=6)
    return model, collate(graphs)


def test_force_nll_stage_keeps_the_stress_term_and_crps_is_selectable():
    from shallow_ensembles.training.config import LossConfig
    from shallow_ensembles.training.objectives import stage_loss

    model, batch = _labelled_periodic_batch()
    cfg = LossConfig(stress_weight=2.0, uncertainty_loss="crps", energy_anchor=0.5,
                     energy_anchor_scale="absolute")
    total, parts = stage_loss(model, batch, "force-nll", cfg, training=False)
    out = model.predict(batch, forces=True, stress=True, member_forces=True)
    stress_mse = float(((out["stress"] - batch.stress) ** 2).mean())
    assert parts["stress"] == pytest.approx(stress_mse, rel=1e-10)
    # the same loss by hand: Gaussian CRPS of energies (per atom weighted) and force components,
    # plus the MSE anchor of the mean energy
    members, forces = out["energy_ensemble"], out["forces_ensemble"]
    energy = losses.gaussian_crps(members.mean(1), members.std(1), batch.energy)
    energy = (energy / batch.n_atoms.double()).mean()  # nll_atom_exponent 1, then the anchor:
    energy = energy + 0.5 * ((members.mean(1) - batch.energy) ** 2 / batch.n_atoms).mean()
    force = losses.gaussian_crps(forces.mean(0), forces.std(0), batch.forces).sum(-1).mean() / 3
    energy, force = float(energy.detach()), float(force.detach())
    assert parts["energy"] == pytest.approx(energy, rel=1e-10)
    assert parts["forces"] == pytest.approx(force, rel=1e-10)
    assert float(total.detach()) == pytest.approx(energy + force + 2.0 * stress_mse, rel=1e-10)


def test_a_variance_scaled_anchor_pulls_every_mean_alike_by_hand():
    """``energy_anchor_scale: variance``: the energy term is the NLL plus
    λ ½ mean_k[N_k^(−a_NLL) r_k² / σ̄²], σ̄² the batch mean of the floored σ_E², detached: the
    anchor's gradient on a structure's mean is λ r_k N_k^(−a_NLL) / (S σ̄²), whatever its σ_E
    and whatever the energy unit."""
    from shallow_ensembles.training.config import LossConfig
    from shallow_ensembles.training.objectives import stage_loss

    model, batch = _labelled_periodic_batch()
    cfg = LossConfig(energy_anchor=2.0, energy_anchor_scale="variance")
    _, parts = stage_loss(model, batch, "energy-nll", cfg, training=False)
    out = model.predict(batch, forces=False)
    members = out["energy_ensemble"].detach().double()
    n = batch.n_atoms.double()
    variance = members.var(1, correction=1).clamp_min(cfg.variance_floor)
    residual = members.mean(1) - batch.energy
    nll = 0.5 * (torch.log(variance) + residual**2 / variance)
    anchor = 2.0 * 0.5 * residual**2 / variance.mean()
    assert parts["energy"] == pytest.approx(float(((nll + anchor) / n).mean()), rel=1e-8)
    absolute = LossConfig(energy_anchor=2.0, energy_anchor_scale="absolute")
    _, parts = stage_loss(model, batch, "energy-nll", absolute, training=False)
    assert parts["energy"] == pytest.approx(float(((nll + 2.0 * residual**2) / n).mean()),
                                            rel=1e-8)
    with pytest.raises(ValueError, match="for_stage"):  # auto needs the stage and the data
        stage_loss(model, batch, "energy-nll", LossConfig(), training=False)


@pytest.mark.parametrize(("scale", "member_forces", "sizes", "expected"), [
    ("auto", True, [4, 64, 4], "variance"), ("auto", True, [9, 9], "absolute"),
    ("auto", False, [4, 64], "absolute"), ("absolute", True, [4, 64], "absolute"),
    ("variance", False, [9], "variance")])
def test_auto_anchor_is_variance_scaled_only_in_force_nll_stages_on_mixed_sizes(
        scale, member_forces, sizes, expected):
    from shallow_ensembles.training.config import LossConfig

    resolved = LossConfig(energy_anchor_scale=scale).for_stage(member_forces, sizes)
    assert resolved.energy_anchor_scale == expected


def test_beta_nll_with_beta_one_pulls_every_mean_like_an_mse():
    """β = 1: the gradient of the weighted energy NLL with respect to each structure's mean is
    r / mean σ² (the same constant for every structure, whatever its own σ), as for an MSE."""
    from shallow_ensembles.errors import ConfigError
    from shallow_ensembles.training.config import LossConfig
    from shallow_ensembles.training.objectives import _energy_score

    torch.manual_seed(0)
    spread = torch.tensor([0.1, 1.0, 5.0], dtype=torch.float64)[:, None]
    members = (torch.randn(3, 6, dtype=torch.float64) * spread).requires_grad_(True)
    target = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    _energy_score(members, target, LossConfig(energy_nll_beta=1.0)).sum().backward()
    mean_grad = members.grad.sum(1)  # d/d(shift of all members of a structure)
    residual = (target - members.detach().mean(1))
    variance = members.detach().var(1, correction=1)
    torch.testing.assert_close(mean_grad, -residual / variance.mean(), rtol=1e-10, atol=0)
    with pytest.raises(ConfigError, match="energy_nll_beta"):
        LossConfig(energy_nll_beta=1.5)


def test_scores_floor_the_predicted_variance_at_the_training_floor():
    """A component at round-off (r = 1e-4, σ = 1e-6: a symmetric crystal with reference force
    0) must not dominate the NLL: every score uses N(μ, max(σ², 1e-6)), the distribution the
    NLL losses train (``LossConfig.variance_floor``)."""
    from shallow_ensembles.training.config import LossConfig

    assert LossConfig().variance_floor == metrics.VARIANCE_FLOOR
    r = np.array([0.3, -0.2, 0.1, 1e-4])
    sigma = np.array([0.25, 0.3, 0.1, 1e-6])

    def nll(v):
        return np.mean(0.5 * (np.log(v) + r**2 / v))

    floored = np.maximum(sigma**2, 1e-6)
    mse = np.full(4, np.mean(r**2))
    expected = 100 * (nll(floored) - nll(mse)) / (nll(np.maximum(r**2, 1e-12)) - nll(mse))
    assert metrics.rll(r, sigma) == pytest.approx(expected, rel=1e-12)
    assert metrics.rll(r, sigma) > 0 > metrics.rll(r, sigma, variance_floor=0)
    got = metrics.uncertainty_metrics(r, sigma)
    assert got["nll"] == pytest.approx(nll(floored) + 0.5 * math.log(2 * math.pi))
    assert got["coverage_1sigma"] == 0.75  # |1e-4| ≤ 1e-3 counts, |0.3| > 0.25 does not
    assert metrics.coverage(r, sigma, 1.0) == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_nll_scale_with_a_floor_is_the_nll_optimum(seed):
    """α of :func:`metrics.nll_scale` against a dense search of the floored NLL; without a
    floor it is the closed form sqrt(mean (r/σ)²)."""
    rng = np.random.default_rng(seed)
    n = 300
    sigma = np.exp(rng.normal(-5, 2.5, n))
    sigma[rng.random(n) < 0.05] = 0.0
    r = rng.normal(size=n) * np.exp(rng.normal(-5, 2.5, n))
    floor = 1e-6

    def nll(alpha):
        v = np.maximum((alpha * sigma) ** 2, floor)
        return np.mean(0.5 * (np.log(v) + r**2 / v))

    alpha = metrics.nll_scale(r, sigma, floor)
    grid = np.exp(np.linspace(-25, 25, 50001))
    assert nll(alpha) <= min(nll(a) for a in grid) + 1e-12
    positive = sigma > 0
    assert metrics.nll_scale(r[positive], sigma[positive], 0) == pytest.approx(
        np.sqrt(np.mean((r[positive] / sigma[positive]) ** 2)), rel=1e-12)
    # far above the floor the floor changes nothing
    assert metrics.nll_scale(r, sigma + 1.0) == pytest.approx(
        metrics.nll_scale(r, sigma + 1.0, 0), rel=1e-12)
