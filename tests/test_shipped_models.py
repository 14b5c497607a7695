"""Every model in models/ loads, has a card, is under 5 MB and serves consistent results."""

import importlib.util

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.fd import calculate_numerical_forces

from conftest import ETHANOL, ROOT, WATER
from shallow_ensembles import ShallowEnsembleCalculator, load_model
from shallow_ensembles import conventions as K

MODELS = [pytest.param(p, marks=pytest.mark.skipif(
    "mace" in p.stem and importlib.util.find_spec("mace") is None,
    reason="a MACE-backed model needs the mace extra")) if "mace" in p.stem else p
    for p in sorted((ROOT / "models").glob("*.pt"))]
BATIO3 = ROOT / "tests" / "data" / "batio3_23.extxyz"


def perovskite(n: int = 3, a: float = 4.0) -> Atoms:
    """A slightly distorted n×n×n BaTiO3 supercell (cubic cell a, Å)."""
    cell = Atoms("BaTiO3", cell=[a] * 3, pbc=True,
                 scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0),
                                   (0.5, 0, 0.5), (0, 0.5, 0.5)]).repeat(n)
    cell.rattle(0.05, seed=0)
    return cell


STRUCTURES = {
    "water": lambda: ase.io.read(WATER, 0),
    "batio3": perovskite,
    "ethanol": lambda: molecule("CH3CH2OH"),
}
FRAMES = {
    "water": lambda: ase.io.read(WATER, ":30"),
    "batio3": lambda: ase.io.read(BATIO3, ":"),
    "ethanol": lambda: ase.io.read(ETHANOL, ":30"),
}
"""Held-out DFT frames of each system, over which σ_E must vary (in distribution: frames far
from the training data move every member in its own direction, which is no offset)."""


def system_of(path) -> str:
    """``water_two_step`` → water, ``ethanol_mace_two_step`` → ethanol."""
    return path.stem.split("_")[0]


def structure_for(path):
    return STRUCTURES[system_of(path)]()


def test_every_system_has_a_model():
    stems = {p.stem for p in (ROOT / "models").glob("*.pt")}
    assert stems >= {"water_two_step", "batio3_two_step", "ethanol_two_step",
                     "ethanol_mace_two_step"}


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_model_card_size_and_calibration(path):
    assert path.stat().st_size < 5_000_000
    card = path.with_suffix(".md").read_text()
    assert path.name in card and path.name in (ROOT / "models" / "README.md").read_text()
    model = load_model(path)
    assert f"{float(model.alpha_energy):.3g}" in card
    assert f"{float(model.alpha_forces):.3g}" in card
    assert model.n_members >= 2


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_forces_are_minus_the_energy_gradient(path):
    atoms = structure_for(path)
    atoms.calc = ShallowEnsembleCalculator(path, dtype="float64")
    forces = atoms.get_forces()
    rows = np.argsort(-np.linalg.norm(forces, axis=1))[:2]  # the two largest forces
    probe = atoms.copy()
    probe.calc = atoms.calc
    numerical = calculate_numerical_forces(probe, eps=1e-4, iatoms=rows)
    np.testing.assert_allclose(forces[rows], numerical, atol=1e-5)
    assert atoms.calc.get_property(K.ENERGY_UNCERTAINTY, atoms) > 0
    sigma_f = atoms.calc.get_property(K.FORCES_UNCERTAINTY, atoms)
    assert np.all(np.isfinite(sigma_f)) and sigma_f.mean() > 0


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_float32_model_is_consistent_at_ase_resolution(path):
    """As shipped (float32 network, float64 energies): ASE's numerical forces at eps = 1e-3
    match the analytic ones to 1 %, and σ_E is the ddof = 1 spread of the member energies."""
    atoms = structure_for(path)
    atoms.calc = ShallowEnsembleCalculator(path)
    forces = atoms.get_forces()
    rows = np.argsort(-np.linalg.norm(forces, axis=1))[:2]
    probe = atoms.copy()
    probe.calc = atoms.calc
    numerical = calculate_numerical_forces(probe, eps=1e-3, iatoms=rows)
    error = np.linalg.norm(numerical - forces[rows], axis=1)
    assert np.all(error <= 0.01 * np.linalg.norm(forces[rows], axis=1)), error
    ensemble = atoms.calc.get_property(K.ENERGY_ENSEMBLE, atoms)
    sigma = atoms.calc.get_property(K.ENERGY_UNCERTAINTY, atoms)
    assert sigma == pytest.approx(np.std(ensemble, ddof=1), rel=1e-6)


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_energy_sigma_describes_the_structure(path):
    """σ_E is not a per-member constant: the offset share of the member-energy variance is
    below 0.2 and σ_E changes from frame to frame by more than 5 % (coefficient of variation)."""
    from shallow_ensembles.metrics import offset_share

    calc = ShallowEnsembleCalculator(path)
    ensembles, sigmas = [], []
    for atoms in FRAMES[system_of(path)]():
        atoms.calc = calc
        ensembles.append(calc.get_property(K.ENERGY_ENSEMBLE, atoms))
        sigmas.append(calc.get_property(K.ENERGY_UNCERTAINTY, atoms))
    assert offset_share(np.array(ensembles)) < 0.2
    assert np.std(sigmas) / np.mean(sigmas) > 0.05, sigmas


def test_ethanol_model_predicts_reference_forces():
    frames = ase.io.read(ETHANOL, ":10")
    references = np.array([a.get_forces() for a in frames])
    calc = ShallowEnsembleCalculator(ROOT / "models" / "ethanol_two_step.pt")
    predicted = []
    for atoms in frames:
        atoms.calc = calc
        predicted.append(atoms.get_forces())
    rmse = float(np.sqrt(np.mean(np.square(np.array(predicted) - references))))
    assert rmse < 0.3 * float(np.sqrt(np.mean(np.square(references))))  # far better than 0
