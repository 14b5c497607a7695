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
