"""Model contract: forces and stress are exact derivatives for the mean and every member."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, make_supercell

from conftest import fd_member_forces, fd_member_stress, tiny_model
from conftest import member_energies as energies
from shallow_ensembles.data import Batch


def water_cell(seed=0):
    """A small skewed periodic cell with H and O, rattled."""
    atoms = Atoms("OH2OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0],
                                        [2.2, 1.5, 1.3], [3.1, 1.6, 1.4], [2.0, 2.4, 1.2]],
                  cell=[[4.2, 0.0, 0.0], [0.6, 4.0, 0.0], [0.3, 0.4, 4.4]], pbc=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


@pytest.mark.parametrize("periodic", [True, False])
def test_member_and_mean_forces_match_finite_differences(periodic, ethanol_frames):
    model = tiny_model(species=(1, 6, 8), frames=ethanol_frames[:3])
    atoms = water_cell() if periodic else ethanol_frames[0].copy()
    batch = Batch.from_atoms(atoms, model.cutoff)
    out = model.predict(batch, forces=True, member_forces=True)
    fd = fd_member_forces(model, atoms)
    members = out["forces_ensemble"].detach().numpy()
    np.testing.assert_allclose(members, fd, atol=1e-6)
    np.testing.assert_allclose(out["forces"].detach().numpy(), fd.mean(0), atol=1e-6)
    assert np.abs(members).max() > 1e-3  # non-trivial forces
    assert np.abs(members - members.mean(0)).max() > 1e-4  # members differ


def test_stress_matches_strain_finite_differences(ethanol_frames):
    model = tiny_model(species=(1, 8), frames=[water_cell()])
    atoms = water_cell(1)
    out = model.predict(Batch.from_atoms(atoms, model.cutoff), forces=True, stress=True,
                        member_forces=True)
    fd = fd_member_stress(model, atoms)
    np.testing.assert_allclose(out["stress_ensemble"][:, 0].detach().numpy(), fd, atol=1e-7)
    np.testing.assert_allclose(out["stress"][0].detach().numpy(), fd.mean(0), atol=1e-7)
    assert np.abs(fd).max() > 1e-4


@pytest.mark.parametrize("n_members,bottleneck", [(4, 3), (3, 6), (5, None)])
def test_member_force_routes_agree(n_members, bottleneck, ethanol_frames):
    model = tiny_model(n_members=n_members, bottleneck=bottleneck, frames=ethanol_frames[:3])
    batch = Batch.from_atoms([ethanol_frames[1], ethanol_frames[2]], model.cutoff)
    routes = {m: model.member_forces(batch, method=m) for m in ("explicit", "jacobian", "loop")}
    loop = routes["loop"]["forces_ensemble"]
    for name in ("explicit", "jacobian"):
        torch.testing.assert_close(routes[name]["forces_ensemble"], loop, atol=1e-10, rtol=1e-9)


def test_member_stress_routes_agree():
    model = tiny_model(species=(1, 8), frames=[water_cell()])
    batch = Batch.from_atoms([water_cell(2), water_cell(3)], model.cutoff)
    explicit = model.member_forces(batch, stress=True, method="explicit")["stress_ensemble"]
    loop = model.member_forces(batch, stress=True, method="loop")["stress_ensemble"]
    torch.testing.assert_close(explicit, loop, atol=1e-10, rtol=1e-9)


def test_mean_and_sigma_equal_numpy_over_members(ethanol_frames):
    model = tiny_model(frames=ethanol_frames[:3])
    out = model.predict(Batch.from_atoms(ethanol_frames[:4], model.cutoff), forces=False)
    ens = out["energy_ensemble"].detach().numpy()
    np.testing.assert_allclose(out["energy"].detach().numpy(), ens.mean(1), rtol=1e-12)
    np.testing.assert_allclose(out["energy_uncertainty"].detach().numpy(), ens.std(1, ddof=1),
                               rtol=1e-10)


def test_invariances(ethanol_frames):
    model = tiny_model(frames=ethanol_frames[:3])
    atoms = ethanol_frames[5].copy()
    ref = energies(model, atoms)
    rotated = atoms.copy()
    rotated.rotate(37, (0.3, -0.5, 0.8), center="COM")
    rotated.translate((1.3, -2.1, 0.4))
    np.testing.assert_allclose(energies(model, rotated), ref, rtol=1e-10, atol=1e-10)
    perm = np.random.default_rng(0).permutation(len(atoms))
    np.testing.assert_allclose(energies(model, atoms[perm]), ref, rtol=1e-10, atol=1e-10)
    shifted = atoms.copy()
    shifted.positions[0, 0] += 0.1
    assert np.abs(energies(model, shifted) - ref).max() > 1e-6


def test_supercell_gives_eight_times_the_member_energies():
    model = tiny_model(species=(1, 8), frames=[water_cell()])
    atoms = water_cell(4)
    big = make_supercell(atoms, 2 * np.eye(3))
    np.testing.assert_allclose(energies(model, big), 8 * energies(model, atoms), rtol=1e-9)


def test_small_cell_sees_periodic_images():
    atoms = bulk("C", "diamond", a=3.57) * (1, 1, 1)
    atoms.rattle(0.02, seed=0)
    model = tiny_model(species=(6,), cutoff=4.0, frames=[atoms])
    sup = make_supercell(atoms, 2 * np.eye(3))
    np.testing.assert_allclose(energies(model, sup), 8 * energies(model, atoms), rtol=1e-9)


def test_float32_matches_float64(ethanol_frames):
    model = tiny_model(frames=ethanol_frames[:3])
    batch64 = Batch.from_atoms(ethanol_frames[:2], model.cutoff)
    ref = model.predict(batch64, member_forces=True)
    model32 = model.float()
    out = model32.predict(batch64.to(dtype=torch.float32), member_forces=True)
    assert out["forces_ensemble"].dtype == torch.float32
    np.testing.assert_allclose(out["forces_ensemble"].detach().numpy(),
                               ref["forces_ensemble"].detach().numpy(), atol=1e-4, rtol=1e-3)


def test_member_force_parameter_gradients_agree_across_routes(ethanol_frames):
    """Training with a member-force loss differentiates the explicit route exactly."""
    model = tiny_model(n_members=4, bottleneck=3, frames=ethanol_frames[:3])
    batch = Batch.from_atoms(ethanol_frames[3:5], model.cutoff)
    grads = {}
    for method in ("explicit", "loop"):
        model.zero_grad()
        forces = model.member_forces(batch, create_graph=True, method=method)["forces_ensemble"]
        (forces.pow(2).sum() + forces.var(0).sum()).backward()
        grads[method] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(grads["explicit"]) == len(grads["loop"]) > 5
    for a, b in zip(grads["explicit"], grads["loop"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_pair_gradients_chunking_does_not_change_results(ethanol_frames):
    model = tiny_model(frames=ethanol_frames[:3])
    batch = Batch.from_atoms(ethanol_frames[:3], model.cutoff)
    edges = batch.edge_vectors()
    n_slots = batch.numbers.shape[0] * len(model.species)
    cot = torch.randn(5, n_slots, model.backbone.n_radial, 16, dtype=torch.float64)
    whole = model.backbone.pair_gradients(batch, edges, cot)
    chunked = model.backbone.pair_gradients(batch, edges, cot, max_elements=1)
    torch.testing.assert_close(whole, chunked, rtol=0, atol=1e-13)
    derivative = model.backbone.edge_basis_derivative(edges)  # (P, 3, B·Y)
    gathered = cot.flatten(2)[:, model.backbone.slot_index(batch)]  # (K, P, B·Y)
    reference = torch.einsum("kpf,pxf->kpx", gathered, derivative)
    torch.testing.assert_close(whole, reference, rtol=1e-10, atol=1e-12)
