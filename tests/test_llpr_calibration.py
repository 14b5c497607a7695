"""LLPR posterior sampling and calibration."""

import numpy as np
import pytest
import torch

from conftest import tiny_model
from shallow_ensembles.calibration import calibrate, predict_dataset
from shallow_ensembles.data import graphs_from_atoms
from shallow_ensembles.metrics import gaussian_nll
from shallow_ensembles.training import init as heads
from shallow_ensembles.training.llpr import fit_posterior


def test_llpr_mean_is_map_and_covariance_converges():
    rng = torch.Generator().manual_seed(0)
    phi = torch.randn(50, 4, generator=rng, dtype=torch.float64)
    post = fit_posterior(phi, phi[:10], 0.1 * torch.randn(10, generator=rng, dtype=torch.float64),
                         regularizer=0.5)
    theta_map = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    errors = []
    for n in (50, 5000):
        samples = post.sample(theta_map, n, torch.Generator().manual_seed(n))
        torch.testing.assert_close(samples.mean(0), theta_map, rtol=0, atol=1e-12)
        cov = torch.cov(samples.T)
        errors.append(float((cov - post.covariance()).norm() / post.covariance().norm()))
    assert errors[1] < 0.1 and errors[1] < errors[0]
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(post.variance(x), torch.einsum("ka,ab,kb->k", x,
                                                               post.covariance(), x))


def test_llpr_heads_keep_the_map_prediction(ethanol_frames):
    model = tiny_model(n_members=6, frames=ethanol_frames[:5])
    graphs = graphs_from_atoms(ethanol_frames[:20], model.cutoff)
    for g, a in zip(graphs, ethanol_frames[:20], strict=True):
        g.energy, g.forces = a.get_potential_energy(), a.get_forces()
    with torch.no_grad():
        model.composition.fill_(float(np.mean([g.energy for g in graphs])) / 9)
    before = predict_dataset(model, graphs, member_forces=False)["energy"]
    heads.llpr_heads(model, graphs[:15], graphs[15:], torch.Generator().manual_seed(0))
    after = predict_dataset(model, graphs, member_forces=True)
    np.testing.assert_allclose(after["energy"], before, rtol=1e-11)
    assert after["energy_sigma"].min() > 0 and after["forces_sigma"].max() > 0


def synthetic_labels(model, frames, seed):
    """Labels drawn from the model's own predictive distribution."""
    graphs = graphs_from_atoms(frames, model.cutoff)
    pred = predict_dataset(model, graphs, member_forces=True)
    rng = np.random.default_rng(seed)
    offset = 0
    for k, g in enumerate(graphs):
        n = len(g)
        g.energy = pred["energy"][k] + pred["energy_sigma"][k] * rng.normal()
        sl = slice(offset, offset + n)
        g.forces = pred["forces"][sl] + pred["forces_sigma"][sl] * rng.normal(size=(n, 3))
        offset += n
    return graphs


def test_alpha_is_one_on_data_from_the_model(ethanol_frames):
    model = tiny_model(frames=ethanol_frames[:5])
    graphs = synthetic_labels(model, ethanol_frames, seed=0)
    alphas = calibrate(model, graphs)
    assert alphas["alpha_energy"] == pytest.approx(1.0, abs=0.25)
    assert alphas["alpha_forces"] == pytest.approx(1.0, abs=0.08)


def test_calibration_lowers_held_out_nll(ethanol_frames):
    model = tiny_model(frames=ethanol_frames[:5])
    graphs = graphs_from_atoms(ethanol_frames, model.cutoff)
    for g, a in zip(graphs, ethanol_frames, strict=True):
        g.energy, g.forces = a.get_potential_energy(), a.get_forces()
    with torch.no_grad():
        model.composition.fill_(float(np.mean([g.energy for g in graphs])) / 9)
    held_out = predict_dataset(model, graphs[30:])
    r_f = (held_out["ref_forces"] - held_out["forces"]).ravel()
    before = gaussian_nll(r_f, held_out["forces_sigma"].ravel() ** 2)
    alphas = calibrate(model, graphs[:30])
    after = gaussian_nll(r_f, (alphas["alpha_forces"] * held_out["forces_sigma"].ravel()) ** 2)
    assert after < before - 0.1
    assert float(model.alpha_forces) == pytest.approx(alphas["alpha_forces"])


def test_per_element_force_calibration(ethanol_frames):
    from shallow_ensembles import ShallowEnsembleCalculator

    model = tiny_model(frames=ethanol_frames[:5])
    graphs = synthetic_labels(model, ethanol_frames, seed=1)
    pred = predict_dataset(model, graphs)
    hydrogen = pred["numbers"] == 1
    offset = 0
    for g in graphs:
        n = len(g)
        h = g.numbers == 1
        mean = pred["forces"][offset:offset + n]
        g.forces = np.where(h[:, None], mean + 3 * (g.forces - mean), g.forces)
        offset += n
    alphas = calibrate(model, graphs, per_element=True)
    assert alphas["alpha_forces_Z1"] == pytest.approx(3.0, rel=0.15)
    assert alphas["alpha_forces_Z6"] == pytest.approx(1.0, rel=0.25)
    atoms = ethanol_frames[0].copy()
    atoms.calc = ShallowEnsembleCalculator(model)
    sigma = atoms.calc.get_property("forces_uncertainty", atoms)
    raw = pred["forces_sigma"][:9]
    ratio = sigma / raw
    np.testing.assert_allclose(ratio[atoms.numbers == 1], alphas["alpha_forces_Z1"], rtol=1e-6)
    np.testing.assert_allclose(ratio[atoms.numbers == 6], alphas["alpha_forces_Z6"], rtol=1e-6)
    assert hydrogen.any()


def test_evaluate_uses_the_per_element_force_factors(ethanol_frames, tmp_path):
    import json

    from shallow_ensembles.evaluation import evaluate
    from shallow_ensembles.metrics import uncertainty_metrics

    model = tiny_model(frames=ethanol_frames[:5])
    graphs = synthetic_labels(model, ethanol_frames, seed=2)[:12]
    with torch.no_grad():
        model.alpha_energy.fill_(1.5)
        model.alpha_forces.fill_(0.8)
        model.alpha_forces_species.copy_(torch.tensor([2.0, 0.5, 1.0], dtype=model.dtype))
    metrics = evaluate(model, graphs, tmp_path, plots=False)
    raw = predict_dataset(model, graphs)
    # oracle: raw σ times α_F·a_Z of each atom's element (H 1.6, C 0.4, O 0.8), by hand
    factor = {1: 1.6, 6: 0.4, 8: 0.8}
    per_atom = np.array([factor[z] for z in raw["numbers"]])[:, None]
    expected = uncertainty_metrics(raw["ref_forces"] - raw["forces"],
                                   per_atom * raw["forces_sigma"])
    for key in ("mean_sigma", "nll", "rll", "miscalibration_area"):
        assert metrics["calibrated"]["forces"][key] == pytest.approx(expected[key], rel=1e-9)
    energy = uncertainty_metrics(raw["ref_energy"] - raw["energy"], 1.5 * raw["energy_sigma"])
    assert metrics["calibrated"]["energy"]["nll"] == pytest.approx(energy["nll"], rel=1e-9)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["alpha"]["forces_H"] == pytest.approx(1.6)
    deviations = raw["energy_ensemble"] - raw["energy_ensemble"].mean(1, keepdims=True)
    deviations = deviations / raw["n_atoms"][:, None]
    share = len(deviations) * np.sum(deviations.mean(0) ** 2) / np.sum(deviations**2)
    assert saved["energy_offset_share"] == pytest.approx(share, rel=1e-9)
    assert "Energy offset share" in (tmp_path / "report.md").read_text()
    assert "per element: H 1.6, C 0.4, O 0.8" in (tmp_path / "report.md").read_text()
