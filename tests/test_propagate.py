"""Member-wise propagation equals the same computation done with numpy over the members."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_model
from shallow_ensembles import ShallowEnsembleCalculator
from shallow_ensembles.errors import DataError
from shallow_ensembles.md import propagate, propagate_energies


@pytest.fixture()
def calc(ethanol_frames):
    return ShallowEnsembleCalculator(tiny_model(frames=ethanol_frames[:5], n_members=6))


def ensembles(calc, frames):
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        out.append(np.array(atoms.calc.get_property("energy_ensemble", atoms)))
    return np.array(out)  # (S, M)


def test_energy_difference_equals_numpy(calc, ethanol_frames):
    a, b = ethanol_frames[0], ethanol_frames[1]
    own = a.calc, b.calc
    mean, std, values = propagate(lambda ea, eb: ea - eb, a, b, calculator=calc)
    e = ensembles(calc, [a, b])
    expected = e[0] - e[1]
    np.testing.assert_allclose(values, expected, rtol=1e-12)
    assert mean == pytest.approx(expected.mean(), rel=1e-12)
    assert std == pytest.approx(expected.std(ddof=1), rel=1e-12)
    # the members share one backbone: errors are correlated and cancel in the difference
    assert std < np.hypot(e[0].std(ddof=1), e[1].std(ddof=1))
    assert (a.calc, b.calc) == own  # the structures keep their own calculators


def test_barrier_takes_the_max_per_member(calc, ethanol_frames):
    images = ethanol_frames[:4]
    result = propagate(lambda *e: max(e) - e[0], *images, calculator=calc)
    e = ensembles(calc, images)
    expected = e.max(axis=0) - e[0]
    np.testing.assert_allclose(result.values, expected, rtol=1e-12)
    assert result.mean == pytest.approx(expected.mean())
    assert result.std == pytest.approx(expected.std(ddof=1))
    # a non-linear quantity: the mean of the members differs from f of the mean energies
    assert result.mean != pytest.approx(e.mean(axis=1).max() - e.mean(axis=1)[0], abs=1e-9)


def test_vacancy_formation_energy_with_own_calculators(calc, ethanol_frames):
    bulk = ethanol_frames[0].copy()
    vacancy = bulk.copy()
    del vacancy[-1]
    bulk.calc, vacancy.calc = calc, ShallowEnsembleCalculator(calc.model)
    n = len(bulk)
    result = propagate(lambda ev, eb: ev - (n - 1) / n * eb, vacancy, bulk)
    e_vac = ensembles(calc, [vacancy])[0]
    e_bulk = ensembles(calc, [bulk])[0]
    expected = e_vac - (n - 1) / n * e_bulk
    np.testing.assert_allclose(result.values, expected, rtol=1e-12)
    assert result.std == pytest.approx(expected.std(ddof=1))


def test_arrays_and_vector_quantities():
    ea, eb = np.array([1.0, 2.0, 4.0]), np.array([0.5, 0.5, 1.0])
    result = propagate_energies(lambda a, b: [a - b, a / b], ea, eb)
    expected = np.stack([ea - eb, ea / eb], axis=1)
    np.testing.assert_allclose(result.values, expected)
    np.testing.assert_allclose(result.mean, expected.mean(axis=0))
    np.testing.assert_allclose(result.std, expected.std(axis=0, ddof=1))
    mixed = propagate(lambda a, b: a + b, ea, [1.0, 1.0, 1.0])
    assert mixed.mean == pytest.approx((ea + 1).mean())


def test_mismatched_members_and_missing_calculator(ethanol_frames):
    with pytest.raises(DataError, match="shape"):
        propagate_energies(lambda a, b: a - b, [1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(DataError, match="no calculator"):
        propagate(lambda a: a, ethanol_frames[0].copy())
    with pytest.warns(UserWarning, match="the model has 1 member"):
        one = ShallowEnsembleCalculator(tiny_model(frames=ethanol_frames[:5], n_members=1))
    result = propagate(lambda a: a, ethanol_frames[0], calculator=one)
    assert result.std == 0.0 and result.values.shape == (1,)
