"""σ_E must describe the structure, not a per-member constant: the offset diagnostic against
numpy, feature centring that keeps the mean, and a trained ensemble whose σ_E varies from frame
to frame and ranks its energy errors."""

import ase.io
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
    # per atom: an offset proportional to the size of each frame is still an offset
    sizes = rng.integers(4, 64, size=500)
    assert offset_share(sizes[:, None] * offsets[None, :], sizes) == pytest.approx(1.0)
    assert offset_share(sizes[:, None] * offsets[None, :]) < 0.95


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


def emt_frames(n: int, stdev: float, seed: int):
    """Rattled 2×2×2 fcc Cu cells (32 atoms) labelled by ASE's EMT (energies, forces)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        atoms.rattle(stdev(k) if callable(stdev) else stdev, seed=seed + k)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return frames


def test_trained_energy_sigma_varies_and_ranks_errors(tmp_path):
    """Trained (two-step) on mildly rattled Cu and tested on ever more rattled cells, with EMT
    as the oracle: the energy errors grow away from the training data and σ_E follows them."""
    ase.io.write(tmp_path / "train.extxyz", emt_frames(48, 0.05, 0))
    cfg = {"data": {"train_file": str(tmp_path / "train.extxyz"), "n_train": 40,
                    "n_validation": 8, "n_test": 0},
           "model": {"n_members": 4, "hidden": [16, 16], "bottleneck": 8, "n_radial": 4,
                     "n_channels": 3, "cutoff_A": 4.0, "dtype": "float64"},
           "protocol": "two-step-llpr",
           "stages": [{"kind": "mse", "epochs": 30}, {"kind": "llpr"},
                      {"kind": "force-nll", "epochs": 6, "learning_rate": 0.001,
                       "warmup_epochs": 0}],
           "training": {"batch_size": 4, "threads": 1, "progress": False,
                        "learning_rate": 0.005},
           "output_dir": str(tmp_path / "run")}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    model = load_model(tmp_path / "run" / "model.pt")
    def predict(frames):
        ase.io.write(tmp_path / "test.extxyz", frames)
        graphs = graphs_from_atoms(read_structures(tmp_path / "test.extxyz"), model.cutoff)
        return predict_dataset(model, graphs, member_forces=False)

    alike = predict(emt_frames(24, 0.05, 500))
    assert offset_share(alike["energy_ensemble"]) < 0.2  # in distribution: no member offset
    assert alike["energy_sigma"].std() / alike["energy_sigma"].mean() > 0.1
    pred = predict(emt_frames(24, lambda k: 0.02 + 0.01 * k, 1000))
    assert spearman(np.abs(pred["ref_energy"] - pred["energy"]), pred["energy_sigma"]) > 0.5


def test_float32_network_sums_energies_in_float64():
    """A float32 network with large per-element baselines: a 4×4×4 supercell has 64 times the
    energy of its cell, and σ_E is the ddof = 1 spread of the members, both to float64 accuracy
    of the sums (a float32 total of ~10⁵ eV would be off by ~10 meV)."""
    from ase.build import bulk

    model = tiny_model(species=(8, 22), bottleneck=4).float()
    with torch.no_grad():
        model.composition.copy_(torch.tensor([-430.0, -1600.0]))
    cell = bulk("TiO", "rocksalt", a=4.2)
    cell.rattle(0.02, seed=1)
    small = model.predict(Batch.from_atoms(cell, model.cutoff, dtype=torch.float32),
                          forces=False)
    large = model.predict(Batch.from_atoms(cell.repeat(4), model.cutoff, dtype=torch.float32),
                          forces=False)
    assert large["energy"].dtype == torch.float64
    energy_small, energy_large = float(small["energy"][0].detach()), float(
        large["energy"][0].detach())
    per_atom = energy_large / (64 * len(cell)) - energy_small / len(cell)
    assert abs(per_atom) < 1e-6
    members = large["energy_ensemble"][0].detach().numpy()
    assert float(large["energy_uncertainty"][0].detach()) == pytest.approx(np.std(members, ddof=1),
                                                                  rel=1e-9)


@pytest.mark.parametrize(("kind", "force_nll", "beta", "anchor"), [
    ("energy-nll", "component", 0.0, "absolute"), ("energy-nll", "component", 0.5, "absolute"),
    ("force-nll", "component", 0.0, "absolute"), ("force-nll", "full", 0.5, "absolute"),
    ("energy-nll", "component", 0.0, "variance"), ("force-nll", "component", 0.5, "variance")])
def test_shared_last_layer_is_solved_at_the_stage_optimum(ethanol_frames, kind, force_nll, beta,
                                                          anchor):
    """After the closed-form solve, the autograd gradient of the stage loss (all frames in one
    batch, so that its means, β-NLL and anchor normaliser included, are the solve's) in the shared
    directions — every head moved by the same δ, and the shift β — vanishes; a second call
    moves nothing; a known displacement of the mean head and of β is undone, energies and
    forces alike."""
    from shallow_ensembles.data.batch import collate
    from shallow_ensembles.training.config import LossConfig
    from shallow_ensembles.training.init import solve_shared_last_layer
    from shallow_ensembles.training.objectives import stage_loss

    model = tiny_model(frames=ethanol_frames[:5])
    with torch.no_grad():
        model.scale.copy_(torch.tensor([0.7, 1.3, 0.9], dtype=model.dtype))
    graphs = graphs_from_atoms(read_structures(ETHANOL)[:24], model.cutoff)
    loss = LossConfig(force_nll=force_nll, energy_nll_beta=beta, energy_anchor_scale=anchor)
    batch = collate(graphs, dtype=model.dtype)

    def shared_gradient():
        model.zero_grad()
        total, _ = stage_loss(model, batch, kind, loss, training=True)
        total.backward()
        return torch.cat([model.head.weight.grad.sum(0), model.shift.grad])

    def prediction():
        out = model.predict(batch, forces=True)
        return out["energy"].detach(), out["forces"].detach()

    before = shared_gradient().abs().max()
    solve_shared_last_layer(model, graphs, loss, kind)
    assert shared_gradient().abs().max() < 1e-6 * before
    energies, forces = prediction()
    delta, shift = solve_shared_last_layer(model, graphs, loss, kind)
    assert max(delta.abs().max(), shift.abs().max()) < 1e-8
    with torch.no_grad():
        model.shift += torch.tensor([0.01, 0.02, 0.005], dtype=model.dtype)
        model.head.weight += 0.05
    assert (prediction()[0] - energies).abs().min() > 0.05
    solve_shared_last_layer(model, graphs, loss, kind)
    # one composition: only Σ_Z n_Z s_Z β_Z is fixed, so compare predictions, not parameters
    torch.testing.assert_close(prediction()[0], energies, rtol=0, atol=1e-7)
    torch.testing.assert_close(prediction()[1], forces, rtol=0, atol=1e-7)


def mixed_sizes(frames):
    """Frames of 9 and 18 atoms: the first 6 ethanol molecules, then 6 pairs of molecules
    side by side (20 Å apart) labelled with the sums of their energies and their forces."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    mixed = list(frames[:6])
    for a, b in zip(frames[6:12], frames[12:18], strict=True):
        pair = Atoms(a.numbers.tolist() + b.numbers.tolist(),
                     positions=np.vstack([a.positions, b.positions + [20.0, 0, 0]]))
        pair.calc = SinglePointCalculator(pair, energy=a.get_potential_energy()
                                          + b.get_potential_energy(),
                                          forces=np.vstack([a.get_forces(), b.get_forces()]))
        mixed.append(pair)
    return mixed


def test_frame_weighted_centring_removes_the_per_atom_offset_of_mixed_sizes(ethanol_frames):
    """Frames of 9 and 18 atoms: with ``weighting="frames"`` every member's per-atom deviation
    averages to zero over the frames (offset share 0 against numpy), the mean is unchanged,
    and on frames of one size the centre is the plain atom mean."""
    frames = mixed_sizes(ethanol_frames)
    model = tiny_model(frames=ethanol_frames[:5])
    graphs = graphs_from_atoms(frames, model.cutoff)
    batch = Batch.from_atoms(frames, model.cutoff)
    n = batch.n_atoms.numpy()
    before = model.predict(batch, forces=False)
    centre_features(model, graphs)  # atoms: the 18-atom frames weigh twice
    atoms = model.predict(batch, forces=False)["energy_ensemble"].detach().numpy()
    assert offset_share(atoms, n) > 1e-3
    centre_features(model, graphs, weighting="frames")
    after = model.predict(batch, forces=False)
    torch.testing.assert_close(after["energy"], before["energy"], rtol=0, atol=1e-8)
    assert offset_share(after["energy_ensemble"].detach().numpy(), n) < 1e-10
    # one size: "frames" is the atom mean
    one_size = graphs_from_atoms(ethanol_frames[:20], model.cutoff)
    centre_features(model, one_size)
    centre = model.feature_centre.clone()
    assert centre_features(model, one_size, weighting="frames") < 1e-6
    torch.testing.assert_close(model.feature_centre, centre, rtol=0, atol=1e-6)


@pytest.mark.parametrize("last", ["force-nll", "llpr", "subsample"])
@pytest.mark.parametrize("centring", ["atoms", "frames"])
def test_a_stage_centres_the_features_as_its_centring_says(ethanol_frames, tmp_path, centring,
                                                           last, caplog):
    """On frames of 9 and 18 atoms, after one epoch of force NLL, or an LLPR or subsampling
    initialisation that follows an MSE epoch centred the other way: the model's feature centre
    is the one the last stage's ``StageConfig.centring`` asks for (centring once more moves
    nothing), and with ``frames`` no member keeps a per-atom offset over the training
    frames. On these mixed sizes the force-NLL stage's anchor is variance-scaled (auto)."""
    from shallow_ensembles.config import from_dict
    from shallow_ensembles.training import train
    from shallow_ensembles.training.config import TrainConfig

    other = "atoms" if centring == "frames" else "frames"
    stages = ([{"kind": last, "epochs": 1, "centring": centring}] if last == "force-nll" else
              [{"kind": "mse", "epochs": 1, "centring": other},
               {"kind": last, "centring": centring}])
    frames = mixed_sizes(ethanol_frames)
    ase.io.write(tmp_path / "train.extxyz", frames)
    ase.io.write(tmp_path / "validation.extxyz", mixed_sizes(ethanol_frames[18:]))
    config = from_dict(TrainConfig, {
        "data": {"train_file": str(tmp_path / "train.extxyz"),
                 "validation_file": str(tmp_path / "validation.extxyz")},
        "model": {"n_members": 4, "bottleneck": 4, "dtype": "float64",
                  "backbone": {"kind": "power-spectrum", "cutoff_A": 4.0, "n_radial": 4,
                               "l_max": 2, "n_channels": 3, "hidden": [12]}},
        "protocol": "custom",
        "stages": stages,
        "training": {"batch_size": 4, "threads": 1, "progress": False},
        "output_dir": str(tmp_path / centring)})
    with caplog.at_level("INFO", logger="shallow_ensembles"):
        model = train(config)
    if last == "force-nll":
        assert "energy anchor variance (loss.energy_anchor_scale: auto)" in caplog.text
    graphs = graphs_from_atoms(read_structures(tmp_path / "train.extxyz"), model.cutoff)
    batch = Batch.from_atoms(frames, model.cutoff)
    share = offset_share(model.predict(batch, forces=False)["energy_ensemble"].detach().numpy(),
                         batch.n_atoms.numpy())
    assert centre_features(model, graphs, weighting=centring) < 1e-8
    assert centre_features(model, graphs, weighting=other) > 1e-4
    if centring == "frames":
        assert share < 1e-10
    else:
        assert share > 1e-3
