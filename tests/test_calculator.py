"""ASE calculator contract: shapes, units, finite differences, caching, calibration, errors."""

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.io import read, write

from conftest import tiny_model
from shallow_ensembles import ShallowEnsembleCalculator, attach_uncertainty
from shallow_ensembles import conventions as K
from shallow_ensembles.errors import ElementError
from test_model import water_cell


@pytest.fixture()
def calc(ethanol_frames):
    return ShallowEnsembleCalculator(tiny_model(frames=ethanol_frames[:3]))


def test_properties_shapes_and_numpy_oracle(calc, ethanol_frames):
    atoms = ethanol_frames[0].copy()
    atoms.calc = calc
    n, m = len(atoms), calc.model.n_members
    ens = calc.get_property(K.ENERGY_ENSEMBLE, atoms)
    assert ens.shape == (m,)
    assert atoms.get_potential_energy() == pytest.approx(ens.mean(), rel=1e-12)
    assert calc.get_property(K.ENERGY_UNCERTAINTY, atoms) == pytest.approx(ens.std(ddof=1))
    forces_ens = calc.get_property(K.FORCES_ENSEMBLE, atoms)
    assert forces_ens.shape == (m, n, 3)
    np.testing.assert_allclose(calc.get_property(K.FORCES_UNCERTAINTY, atoms),
                               forces_ens.std(0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), forces_ens.mean(0), atol=1e-10)
    assert calc.get_property(K.ENERGIES, atoms).sum() == pytest.approx(ens.mean())
    assert K.STRESS not in calc.results  # molecule: no stress
    with pytest.raises(Exception):  # noqa: B017 - ASE's own "not present" error
        atoms.get_stress()


def test_forces_and_stress_equal_finite_differences():
    model = tiny_model(species=(1, 8), frames=[water_cell()])
    atoms = water_cell(5)
    atoms.calc = ShallowEnsembleCalculator(model)
    forces = atoms.get_forces()
    numerical = calculate_numerical_forces(atoms, eps=1e-5)
    np.testing.assert_allclose(forces, numerical, atol=1e-6)
    assert not np.array_equal(forces, numerical)  # the FD path really ran
    stress = atoms.get_stress()
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=1e-6), atol=1e-7)
    assert atoms.calc.get_property(K.STRESS_ENSEMBLE, atoms).shape == (model.n_members, 6)


def test_one_model_evaluation_per_position_change(calc, ethanol_frames):
    atoms = ethanol_frames[0].copy()
    atoms.calc = calc
    atoms.get_potential_energy()
    atoms.get_forces()
    calc.get_property(K.ENERGY_UNCERTAINTY, atoms)
    atoms.get_potential_energies()
    assert calc.n_evaluations == 1 and calc.n_member_evaluations == 0  # cheap by default
    calc.get_property(K.FORCES_UNCERTAINTY, atoms)
    calc.get_property(K.FORCES_ENSEMBLE, atoms)
    assert calc.n_evaluations == 1 and calc.n_member_evaluations == 1
    atoms.positions[0, 0] += 0.01
    atoms.get_forces()
    assert calc.n_evaluations == 2 and calc.n_member_evaluations == 1
    atoms.set_momenta(np.ones((len(atoms), 3)))
    atoms.get_forces()
    assert calc.n_evaluations == 2


def test_always_member_forces(ethanol_frames):
    calc = ShallowEnsembleCalculator(tiny_model(frames=ethanol_frames[:3]),
                                     always_member_forces=True)
    atoms = ethanol_frames[1].copy()
    atoms.calc = calc
    atoms.get_potential_energy()
    assert K.FORCES_ENSEMBLE in calc.results and calc.n_member_evaluations == 1


def test_calibration_rescales_members_about_the_mean(ethanol_frames):
    model = tiny_model(frames=ethanol_frames[:3])
    atoms = ethanol_frames[2].copy()
    atoms.calc = ShallowEnsembleCalculator(model)
    raw_ens = atoms.calc.get_property(K.ENERGY_ENSEMBLE, atoms).copy()
    raw_f = atoms.calc.get_property(K.FORCES_ENSEMBLE, atoms).copy()
    model.alpha_energy.fill_(2.5)
    model.alpha_forces.fill_(0.5)
    atoms.calc = ShallowEnsembleCalculator(model)
    ens = atoms.calc.get_property(K.ENERGY_ENSEMBLE, atoms)
    np.testing.assert_allclose(ens, raw_ens.mean() + 2.5 * (raw_ens - raw_ens.mean()))
    assert atoms.calc.get_property(K.ENERGY_UNCERTAINTY, atoms) == pytest.approx(
        2.5 * raw_ens.std(ddof=1))
    np.testing.assert_allclose(atoms.calc.get_property(K.FORCES_UNCERTAINTY, atoms),
                               0.5 * raw_f.std(0, ddof=1), rtol=1e-9)
    assert atoms.get_potential_energy() == pytest.approx(raw_ens.mean())


def test_unknown_element_names_element_and_species(calc):
    atoms = molecule("CH3Cl")
    atoms.calc = calc
    message = r"element Cl is not in this model's elements \[H, C, O\]"
    with pytest.raises(ElementError, match=message):
        atoms.get_potential_energy()


def test_attach_uncertainty_survives_extxyz(tmp_path, calc, ethanol_frames):
    atoms = ethanol_frames[0].copy()
    atoms.calc = calc
    attach_uncertainty(atoms)
    write(tmp_path / "out.extxyz", atoms)
    back = read(tmp_path / "out.extxyz")
    assert back.info[K.ENERGY_UNCERTAINTY] == pytest.approx(calc.results[K.ENERGY_UNCERTAINTY])
    np.testing.assert_allclose(back.arrays[K.FORCES_UNCERTAINTY],
                               calc.results[K.FORCES_UNCERTAINTY], rtol=1e-6)
    ens = back.arrays[K.FORCES_ENSEMBLE].reshape(len(atoms), -1, 3).transpose(1, 0, 2)
    np.testing.assert_allclose(ens, calc.results[K.FORCES_ENSEMBLE], rtol=1e-5, atol=1e-6)
    norm = np.sqrt((calc.results[K.FORCES_UNCERTAINTY] ** 2).sum(1))
    assert back.info[K.MAX_FORCES_UNCERTAINTY] == pytest.approx(norm.max(), rel=1e-6)
