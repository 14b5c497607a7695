"""Committee reweighting against closed forms, against i-PI's own tool, and its readers."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import sys
import types
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import units

from conftest import run_protocol, tiny_model
from shallow_ensembles.cli import main
from shallow_ensembles.errors import DataError
from shallow_ensembles.md import read_energies, reweight
from shallow_ensembles.md.reweight import (
    ReweightWarning,
    density,
    rdf,
    read_committee_pot,
)
from test_md_model_devi import water_box

TEMPERATURE = 300.0
BETA = 1.0 / (units.kB * TEMPERATURE)
K_MEAN = 2.0  # eV/Å²
DELTAS = np.array([-0.06, -0.02, 0.02, 0.06])  # k_m = k (1 + δ_m), mean k_m = k


@pytest.fixture(scope="module")
def harmonic():
    """Samples of V̄ = ½ k x², members V_m = ½ k_m x² (eV), observable x² (Å²)."""
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, np.sqrt(1.0 / (BETA * K_MEAN)), size=200_000)
    k_members = K_MEAN * (1 + DELTAS)
    energies = 0.5 * k_members[None, :] * x[:, None] ** 2
    return energies, x**2, k_members


def test_direct_reweighting_matches_the_member_averages(harmonic):
    energies, x2, k_members = harmonic
    result = reweight(energies, x2, TEMPERATURE, "direct")
    exact = 1.0 / (BETA * k_members)  # ⟨x²⟩ under V_m
    np.testing.assert_allclose(result.member_averages, exact, rtol=1e-2)
    # the member differences share the sampling noise: they are much more precise
    np.testing.assert_allclose(np.diff(result.member_averages), np.diff(exact), rtol=2e-2)
    assert result.std == pytest.approx(exact.std(ddof=1), rel=3e-2)
    assert result.mean == pytest.approx(exact.mean(), rel=1e-2)
    assert result.unweighted == pytest.approx(1.0 / (BETA * K_MEAN), rel=1e-2)
    assert result.min_ess > 0.9 * len(x2)


def test_cumulant_matches_the_first_order_expansion(harmonic):
    energies, x2, k_members = harmonic
    result = reweight(energies, x2, TEMPERATURE, "cumulant")
    # ⟨x²⟩ − β cov(x², ½ (k_m − k) x²) = (1 − δ_m) / (βk): 1/(βk_m) to first order in δ
    first_order = (1 - DELTAS) / (BETA * K_MEAN)
    np.testing.assert_allclose(result.member_averages, first_order, rtol=1e-2)
    np.testing.assert_allclose(result.member_averages - result.unweighted,
                               -DELTAS / (BETA * K_MEAN), rtol=3e-2)
    exact = 1.0 / (BETA * k_members)
    np.testing.assert_allclose(result.member_averages, exact, rtol=1e-2)


def test_identical_members_return_the_plain_average():
    rng = np.random.default_rng(1)
    one = rng.normal(size=(500, 1))
    energies = np.repeat(one, 5, axis=1)
    observable = rng.normal(size=(500, 3))
    for method in ("direct", "cumulant"):
        result = reweight(energies, observable, TEMPERATURE, method)
        np.testing.assert_allclose(result.mean, observable.mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(result.std, 0.0, atol=1e-12)
        np.testing.assert_allclose(result.ess, 500.0)
        assert result.member_averages.shape == (5, 3)


def test_two_member_hand_calculation():
    # two frames, two members: h = ±0.5·(V_1 − V_0)
    energies = np.array([[0.0, 0.02], [0.0, 0.0]])  # eV
    observable = np.array([1.0, 3.0])
    result = reweight(energies, observable, TEMPERATURE, "direct")
    w0 = np.exp(-BETA * np.array([-0.01, 0.0]))
    w1 = np.exp(-BETA * np.array([0.01, 0.0]))
    np.testing.assert_allclose(result.member_averages,
                               [w0 @ observable / w0.sum(), w1 @ observable / w1.sum()])
    np.testing.assert_allclose(result.ess, [w0.sum() ** 2 / (w0**2).sum(),
                                            w1.sum() ** 2 / (w1**2).sum()])


def test_low_effective_sample_size_warns():
    rng = np.random.default_rng(2)
    energies = rng.normal(size=(400, 4)) * 0.5  # eV: σ_h ≫ k_B T, weights degenerate
    with pytest.warns(ReweightWarning, match="effective sample size"):
        result = reweight(energies, rng.normal(size=400), TEMPERATURE, "direct")
    assert result.min_ess < 40
    with pytest.warns(ReweightWarning, match="cumulant"):
        reweight(energies, rng.normal(size=400), TEMPERATURE, "cumulant")


def test_shape_errors():
    with pytest.raises(DataError, match="observable has 3 frames"):
        reweight(np.zeros((4, 2)), np.zeros(3), TEMPERATURE)
    with pytest.raises(DataError, match="NaN"):
        reweight(np.full((4, 2), np.nan), np.zeros(4), TEMPERATURE)


def _ipi_reweight_script():
    path = Path(sys.prefix) / "bin" / "i-pi-committee-reweight"
    if not path.is_file():
        pytest.skip("i-PI's committee reweighting script is not installed")
    loader = importlib.machinery.SourceFileLoader("ipi_committee_reweight", str(path))
    module = types.ModuleType(loader.name)
    loader.exec_module(module)
    return module


def test_agrees_with_ipi_committee_reweight(harmonic):
    """i-PI's direct_reweight and CEA as an independent implementation."""
    script = _ipi_reweight_script()
    energies, x2, _ = harmonic
    energies, x2 = energies[:20000], x2[:20000]
    kt = units.kB * TEMPERATURE
    direct, _ = script.direct_reweight(energies, x2, kt)
    cea, _ = script.CEA(energies, x2, kt)
    ours_direct = reweight(energies, x2, TEMPERATURE, "direct").member_averages
    ours_cea = reweight(energies, x2, TEMPERATURE, "cumulant").member_averages
    np.testing.assert_allclose(ours_direct, np.asarray(direct, dtype=float)[0], rtol=1e-10)
    np.testing.assert_allclose(ours_cea, np.asarray(cea, dtype=float)[0], rtol=1e-10)


# --- observables over frames ---------------------------------------------------------------------
def test_callable_observables_and_helpers():
    frames = [water_box(seed=s) for s in range(3)]
    energies = np.zeros((3, 2))
    result = reweight(energies, density, TEMPERATURE, frames=frames)
    masses = frames[0].get_masses().sum() * 1.66053906660e-24  # g
    assert result.mean == pytest.approx(masses / (frames[0].get_volume() * 1e-24))
    from ase.geometry.rdf import get_rdf

    r, g = rdf(frames, 3.0, 30)
    assert r.shape == (30,) and g.shape == (3, 30)
    np.testing.assert_allclose(g.mean(axis=0), get_rdf(frames, 3.0, 30, no_dists=True))
    result = reweight(energies, g, TEMPERATURE, "cumulant")
    assert result.mean.shape == (30,)
    with pytest.raises(DataError, match="needs the frames"):
        reweight(energies, density, TEMPERATURE)


# --- readers -------------------------------------------------------------------------------------
def ipi_extras_text(energies_ha):
    """committee_pot extras as i-PI 3.3 writes them, through i-PI's own writer."""
    outputs = pytest.importorskip("ipi.engine.outputs")
    writer = outputs.TrajectoryOutput.__new__(outputs.TrajectoryOutput)
    writer.extra_type = "committee_pot"
    stream = io.StringIO()
    for step, row in enumerate(energies_ha):
        writer.system = types.SimpleNamespace(simul=types.SimpleNamespace(step=step))
        writer.write_traj({"committee_pot": [list(row)]}, "extras", stream, flush=False)
    return stream.getvalue()


def test_reads_ipi_committee_pot_in_hartree(tmp_path):
    rng = np.random.default_rng(3)
    energies_ha = -17.0 + 1e-3 * rng.normal(size=(5, 4))
    text = ipi_extras_text(energies_ha)
    assert text.lstrip().startswith("#EXTRAS(committee_pot)# Step:")
    path = tmp_path / "simulation.committee_pot_0"
    path.write_text(text)
    np.testing.assert_allclose(read_committee_pot(path), energies_ha * units.Hartree, rtol=1e-7)
    energies, frames = read_energies(path)
    np.testing.assert_allclose(energies, energies_ha * units.Hartree, rtol=1e-7)
    assert frames is None
    energies, _ = read_energies(path, unit="eV")
    np.testing.assert_allclose(energies, energies_ha, rtol=1e-7)


def test_committee_pot_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.committee_pot_0"
    bad.write_text(" #EXTRAS(committee_pot)# Step: 1\n-1.0 -1.1\n"
                   " #EXTRAS(committee_pot)# Step: 2\n-2.0 -2.1 -2.2\n")
    with pytest.raises(DataError, match="bad.committee_pot_0"):
        read_committee_pot(bad)
    table = tmp_path / "energies.dat"
    table.write_text("1 2\n3 4 5\n")
    with pytest.raises(DataError, match="frame 1"):
        read_energies(table)


def test_reads_our_run_and_the_cli_prints_the_average(tmp_path, capsys):
    atoms = water_box()
    model = tiny_model(species=(1, 8), frames=[atoms])
    protocol = {"dynamics": {"kind": "langevin", "temperature_K": 300, "friction_per_fs": 0.02,
                             "seed": 0},
                "monitor": {"force_interval": 0},
                "logging": {"trajectory_interval": 1, "plot": False}}
    run_protocol(atoms, model, protocol, tmp_path, steps=5)
    from_dat, none = read_energies(tmp_path / "committee_energies.dat")
    from_traj, frames = read_energies(tmp_path / "trajectory.extxyz")
    assert none is None and len(frames) == 6 and from_dat.shape == (6, 4)
    np.testing.assert_allclose(from_dat, from_traj, atol=1e-8)
    expected = reweight(from_dat, from_dat.mean(axis=1), TEMPERATURE, "direct")

    code = main(["reweight", str(tmp_path / "committee_energies.dat"),
                 "--temperature-K", "300", "--method", "direct"])
    assert code == 0
    out = capsys.readouterr().out
    assert f"<A> = {float(expected.mean):.8g} ± {float(expected.std):.3g} eV" in out
    assert "ESS min" in out

    np.save(tmp_path / "obs.npy", np.arange(6.0))
    code = main(["reweight", str(tmp_path / "trajectory.extxyz"), "--temperature-K", "300",
                 "--observable", str(tmp_path / "obs.npy"), "--method", "both", "--skip", "1",
                 "--min-ess-fraction", "0"])
    out = capsys.readouterr().out
    assert code == 0 and "direct" in out and "cumulant" in out and "5 frames" in out
    code = main(["reweight", str(tmp_path / "trajectory.extxyz"), "--temperature-K", "300",
                 "--property", "density", "--min-ess-fraction", "0"])
    assert code == 0 and "g/cm³" in capsys.readouterr().out
    code = main(["reweight", str(tmp_path / "committee_energies.dat"), "--temperature-K", "300",
                 "--property", "density"])
    assert code == 2 and "needs the structures" in capsys.readouterr().err


def test_missing_energy_ensemble_names_the_frame(tmp_path):
    path = tmp_path / "plain.extxyz"
    ase.io.write(path, [water_box(), water_box(seed=1)])
    with pytest.raises(DataError, match="frame 0.*energy_ensemble"):
        read_energies(path)
