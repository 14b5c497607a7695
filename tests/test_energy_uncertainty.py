"""σ_E must describe the structure, not a per-member constant: the offset diagnostic against
numpy, feature centring that keeps the mean, and a trained ensemble whose σ_E varies from frame
to frame and ranks its energy errors."""

import numpy as np
import pytest
import torch
import yaml

from conftest import ETHANOL, tiny_model
from shallow_ensembles import load_model
from shallow_ensembles.calibration import predict_dataset
from shallow_ensembles.cli import main
from shallow_ensembles.data import Batch, graphs_from_atoms, read_structures
from shallow_ensembles.metrics import offset_share, spearman
from shallow_ensembles.training.init import centre_features


def test_offset_share_is_the_variance_share_of_a_constant_per_member():
    rng = np.random.default_rng(0)
    offsets = np.array([3.0, -1.0, 0.5, -2.5])
    frames = rng.normal(size=(500, 4))
    assert offset_share(offsets[None, :] + 0 * frames) == pytest.approx(1.0)
    assert offset_share(frames) < 0.02  # noise alone: ~ 1/S
    mixed = offsets + frames  # oracle: share of Σ c² against Σ c² + noise variance
    expected = np.sum((offsets - offsets.mean()) ** 2) / (
        np.sum((offsets - offsets.mean()) ** 2) + 4 * (1 - 1 / 4))
    assert offset_share(mixed) == pytest.approx(expected, abs=0.03)


def test_centring_moves_only_the_spread_and_removes_the_offset(ethanol_frames):
    model = tiny_model(frames=ethanol_frames[:5])
    batch = Batch.from_atoms(ethanol_frames[:20], model.cutoff)
    before = model.predict(batch, forces=False)
    centre_features(model, graphs_from_atoms(ethanol_frames[:20], model.cutoff))
    after = model.predict(batch, forces=False)
    torch.testing.assert_close(after["energy"], before["energy"], rtol=0, atol=1e-9)
    assert offset_share(before["energy_ensemble"].detach().numpy()) > 0.5
    # centred on these very frames, every member's mean deviation over them is zero
    assert offset_share(after["energy_ensemble"].detach().numpy()) < 1e-12


def test_trained_energy_sigma_varies_and_ranks_errors(tmp_path):
    cfg = {"data": {"train_file": str(ETHANOL), "n_train": 36, "n_validation": 8,
                    "n_test": 16},
           "model": {"n_members": 4, "hidden": [24, 24], "bottleneck": 8, "n_radial": 5,
                     "n_channels": 4, "cutoff_A": 4.0, "dtype": "float64"},
           "protocol": "two-step-llpr",
           "stages": [{"kind": "mse", "epochs": 40}, {"kind": "llpr"},
                      {"kind": "force-nll", "epochs": 6, "learning_rate": 0.001,
                       "warmup_epochs": 0}],
           "training": {"batch_size": 4, "threads": 1, "progress": False,
                        "learning_rate": 0.005},
           "output_dir": str(tmp_path / "run")}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--set", "training.seed=1"]) == 0
    model = load_model(tmp_path / "run" / "model.pt")
    frames = read_structures(ETHANOL)
    pred = predict_dataset(model, graphs_from_atoms(frames, model.cutoff), member_forces=False)
    sigma = pred["energy_sigma"]
    assert offset_share(pred["energy_ensemble"]) < 0.2
    assert sigma.std() / sigma.mean() > 0.2, "σ_E hardly changes with the structure"
    assert spearman(np.abs(pred["ref_energy"] - pred["energy"]), sigma) > 0
