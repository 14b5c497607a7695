"""Conformance of every registered backbone kind (``model/registry.py``).

Each kind, built tiny from the registry in float64, must give: forces and stress equal to finite
differences of the member energies, every route of member forces and stresses equal to one
backward pass per member, an identical model after save → load, and LLPR heads that keep the
mean. A new kind registers itself and adds its tiny options to ``TINY``; nothing else changes.
"""

import importlib.util

import numpy as np
import pytest
import torch
from ase.io import read

from conftest import ETHANOL, ROOT, fd_member_forces, fd_member_stress
from shallow_ensembles.data import Batch, graphs_from_atoms
from shallow_ensembles.model import BACKBONES, ShallowEnsemble, load_model, save_model
from shallow_ensembles.model.config import ModelConfig
from shallow_ensembles.training import init

BATIO3 = ROOT / "tests" / "data" / "batio3_23.extxyz"
TINY = {
    "power-spectrum": {"cutoff_A": 4.0, "n_radial": 4, "l_max": 2, "n_channels": 3,
                       "hidden": [12, 10]},
    "mace": {"cutoff_A": 4.0, "channels": 8, "max_L": 1, "correlation": 2,
             "num_interactions": 2, "max_ell": 2, "num_radial": 4, "radial_mlp": [8]},
}
"""Tiny options of every registered kind (the conformance test fails for a kind without)."""
NEEDS = {"mace": "mace"}
"""Optional modules a kind needs; its tests are skipped when it is not installed."""


def kinds():
    params = []
    for kind in sorted(BACKBONES):
        missing = NEEDS.get(kind) and importlib.util.find_spec(NEEDS[kind]) is None
        params.append(pytest.param(kind, marks=pytest.mark.skipif(
            bool(missing), reason=f"{NEEDS.get(kind)} not installed")))
    return params


def build(kind, frames, n_members=4, bottleneck=5, seed=0):
    torch.manual_seed(seed)
    species = sorted({int(z) for a in frames for z in a.numbers})
    config = ModelConfig(backbone={"kind": kind, **TINY[kind]}, bottleneck=bottleneck,
                         n_members=n_members, dtype="float64")
    batch = Batch.from_atoms(frames, config_cutoff(kind))
    model = ShallowEnsemble.from_config(config, species, batch)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 1.0)
        model.scale.copy_(torch.linspace(0.6, 1.4, len(model.species), dtype=model.dtype))
        model.shift.normal_(0.0, 0.1)
    return model


def config_cutoff(kind):
    return float(TINY[kind]["cutoff_A"])


@pytest.fixture(scope="module")
def molecules():
    return read(ETHANOL, ":3")


@pytest.fixture(scope="module")
def crystals():
    frames = read(BATIO3, ":2")
    for atoms in frames:
        atoms.rattle(0.03, seed=1)
    return frames


def test_every_kind_has_tiny_options():
    assert sorted(TINY) == sorted(BACKBONES)


@pytest.mark.parametrize("kind", kinds())
def test_forces_are_finite_differences_of_member_energies(kind, molecules):
    model = build(kind, molecules)
    atoms = molecules[0]
    out = model.predict(Batch.from_atoms(atoms, model.cutoff), member_forces=True)
    fd = fd_member_forces(model, atoms)
    members = out["forces_ensemble"].detach().numpy()
    np.testing.assert_allclose(members, fd, atol=1e-6)
    np.testing.assert_allclose(out["forces"].detach().numpy(), fd.mean(0), atol=1e-6)
    assert np.abs(members - members.mean(0)).max() > 1e-4  # the members differ


@pytest.mark.parametrize("kind", kinds())
def test_stress_is_the_strain_derivative(kind, crystals):
    model = build(kind, crystals)
    atoms = crystals[0]
    out = model.predict(Batch.from_atoms(atoms, model.cutoff), stress=True, member_forces=True)
    fd = fd_member_stress(model, atoms)
    np.testing.assert_allclose(out["stress_ensemble"][:, 0].detach().numpy(), fd, atol=1e-7)
    np.testing.assert_allclose(out["stress"][0].detach().numpy(), fd.mean(0), atol=1e-7)


@pytest.mark.parametrize("n_members,bottleneck", [(4, 5), (6, 3)])
@pytest.mark.parametrize("kind", kinds())
def test_member_force_routes_equal_per_member_autograd(kind, n_members, bottleneck, crystals):
    model = build(kind, crystals, n_members, bottleneck)
    batch = Batch.from_atoms(crystals, model.cutoff)
    reference = model.predict(batch, stress=True, member_forces=True, method="loop")
    routes = ["jacobian", "auto"] + (["explicit"] if hasattr(model.backbone, "explicit_vjp")
                                     else [])
    for method in routes:
        out = model.predict(batch, stress=True, member_forces=True, method=method)
        for key in ("forces_ensemble", "stress_ensemble"):
            torch.testing.assert_close(out[key], reference[key], atol=1e-10, rtol=1e-8)
    # one backward pass per member: the oracle the routes are checked against
    batch_grad = batch.positions.detach().requires_grad_(True)
    member = model.forward(batch._replace(positions=batch_grad))
    totals = torch.zeros(batch.n_structures, model.n_members, dtype=torch.float64).index_add(
        0, batch.structure, member)
    for m in range(model.n_members):
        (grad,) = torch.autograd.grad(totals[:, m].sum(), batch_grad, retain_graph=True)
        torch.testing.assert_close(reference["forces_ensemble"][m], -grad.to(model.dtype),
                                   atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("kind", kinds())
def test_save_load_round_trip_is_identical(kind, crystals, tmp_path):
    model = build(kind, crystals)
    path = save_model(model, tmp_path / "m.pt")
    loaded = load_model(path)
    batch = Batch.from_atoms(crystals, model.cutoff)
    a = model.predict(batch, stress=True, member_forces=True)
    b = loaded.predict(batch, stress=True, member_forces=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, equal_nan=True)
    assert loaded.hyperparameters["backbone"]["kind"] == kind


@pytest.mark.parametrize("kind", kinds())
def test_llpr_heads_keep_the_mean_and_spread_the_members(kind):
    frames = read(ETHANOL, ":12")
    model = build(kind, frames)
    graphs = graphs_from_atoms(frames, model.cutoff)
    for graph, atoms in zip(graphs, frames, strict=True):
        graph.energy, graph.forces = atoms.get_potential_energy(), atoms.get_forces()
    batch = Batch.from_atoms(frames, model.cutoff)
    init.centre_features(model, graphs[:8])
    with torch.no_grad():
        model.head.weight.copy_(model.head.weight.mean(0).expand_as(model.head.weight))
    before = model.predict(batch, forces=False)["energy"]
    init.llpr_heads(model, graphs[:8], graphs[8:], torch.Generator().manual_seed(0),
                    force_rows=True)
    out = model.predict(batch, forces=False)
    # the heads are sampled around the MAP head (re-centred): the mean energy is unchanged
    torch.testing.assert_close(out["energy"], before, atol=1e-8, rtol=0)
    assert float(out["energy_uncertainty"].detach().min()) > 0
