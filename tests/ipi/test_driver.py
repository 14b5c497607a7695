"""The i-PI driver's contract in atomic units, checked without a server (ipi/driver.py).

Oracles: i-PI's own structure reader and its ASE driver's unit conversion (``ipi.pes._ase``), the
ASE calculator, and finite differences of the energy the driver returns.
"""

import json
import subprocess
import sys

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.units import Bohr, Hartree

from conftest import BAD_INPUTS, bad_input, tiny_model
from shallow_ensembles import ShallowEnsembleCalculator, save_model
from shallow_ensembles.cli import main
from shallow_ensembles.errors import ConfigError, ElementError, ModelFileError
from shallow_ensembles.ipi.driver import ShallowEnsembleDriver

TRICLINIC = np.array([[6.3, 0.0, 0.0], [1.1, 6.0, 0.0], [-0.7, 0.9, 6.2]])  # Å, rows


def water_box(cell=TRICLINIC, seed=0) -> Atoms:
    """Eight randomly oriented H2O on a 2×2×2 grid of ``cell`` (Å)."""
    rng = np.random.default_rng(seed)
    atoms = Atoms(cell=cell, pbc=True)
    for corner in np.ndindex(2, 2, 2):
        water = molecule("H2O")
        water.rotate(rng.uniform(0, 360), rng.normal(size=3))
        water.translate((np.array(corner) + 0.5) / 2 @ np.asarray(cell))
        atoms += water
    return atoms


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ipi_driver")
    model = tiny_model(species=(1, 8))
    save_model(model, folder / "model.pt")
    atoms = water_box()
    ase.io.write(folder / "water.extxyz", atoms)
    return {"model": folder / "model.pt", "water": folder / "water.extxyz", "atoms": atoms,
            "n_members": model.n_members, "folder": folder}


@pytest.fixture(scope="module")
def driver(files):
    return ShallowEnsembleDriver(model=str(files["model"]), template=str(files["water"]))


def ipi_view(atoms):
    """(h, pos) as i-PI sends them: h with cell vectors as columns, bohr."""
    return atoms.cell.array.T / Bohr, atoms.positions / Bohr


def test_ase_to_ipi_to_ase_is_the_identity_for_a_triclinic_cell(driver, files):
    from ipi.utils.io import read_file

    with open(files["water"]) as handle:  # i-PI's own reader: the oracle for (h, pos)
        frame = read_file("ase", handle, dimension="length")
    h, pos = np.array(frame["cell"].h), np.array(frame["atoms"].q).reshape(-1, 3)
    np.testing.assert_allclose(h, ipi_view(files["atoms"])[0], rtol=1e-7)
    back = driver.to_ase(h, pos)
    atoms = files["atoms"]
    np.testing.assert_allclose(back.cell.array, atoms.cell.array, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(back.positions, atoms.positions, rtol=1e-7, atol=1e-12)
    assert (back.numbers == atoms.numbers).all() and back.pbc.all()


def test_results_in_atomic_units_match_ipi_ase_driver_and_finite_differences(driver, files):
    from ipi.pes._ase import ASEDriver

    atoms = files["atoms"].copy()
    atoms.calc = ShallowEnsembleCalculator(files["model"])
    energy, forces, virial, _ = driver.compute_structure(*ipi_view(atoms))
    reference = ASEDriver.__new__(ASEDriver)  # i-PI's eV/Å → atomic-unit conversion
    reference.capabilities = ["energy", "forces", "stress"]
    props = {k: atoms.calc.get_property(k, atoms) for k in ("energy", "forces", "stress")}
    ref_energy, ref_forces, ref_virial, _ = reference.post_process(props, atoms)
    np.testing.assert_allclose(energy, ref_energy, rtol=1e-6)
    np.testing.assert_allclose(forces, ref_forces, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(virial.ravel(), ref_virial, rtol=1e-6, atol=1e-12)

    h, pos = ipi_view(atoms)
    step = 1e-4  # bohr
    for atom, axis in [(0, 0), (5, 1), (17, 2)]:
        shifted = [pos.copy(), pos.copy()]
        shifted[0][atom, axis] += step
        shifted[1][atom, axis] -= step
        up, down = (driver.compute_structure(h, p)[0] for p in shifted)
        assert -(up - down) / (2 * step) == pytest.approx(forces[atom, axis], rel=1e-5, abs=1e-9)


def test_committee_extras_have_m_lists_equal_to_the_ase_ensemble(driver, files):
    atoms = files["atoms"].copy()
    calc = ShallowEnsembleCalculator(files["model"], always_member_forces=True)
    atoms.calc = calc
    energy, forces, virial, extras = driver.compute_structure(*ipi_view(atoms))
    data = json.loads(extras)
    m, n = files["n_members"], len(atoms)
    assert set(data) == {"committee_pot", "committee_force", "committee_virial",
                         "forces_uncertainty_norm"}
    # i-PI re-exports extra keys as committee_<key>: none may clash with its own outputs
    reserved = {"committee_pot", "committee_uncertainty", "committee_force", "committee_virial"}
    assert not {f"committee_{k}" for k in data} & reserved and "raw" not in data
    assert len(data["committee_pot"]) == m
    assert [len(row) for row in data["committee_force"]] == [3 * n] * m
    assert [len(row) for row in data["committee_virial"]] == [9] * m
    assert len(data["forces_uncertainty_norm"]) == n

    ens = calc.get_property("energy_ensemble", atoms)
    np.testing.assert_allclose(np.array(data["committee_pot"]) * Hartree, ens, rtol=1e-12)
    members = np.array(data["committee_force"]).reshape(m, n, 3) * Hartree / Bohr
    np.testing.assert_allclose(members, calc.get_property("forces_ensemble", atoms), atol=1e-10)
    stress = calc.get_property("stress_ensemble", atoms)  # (M, 6) Voigt xx yy zz yz xz xy
    member_virials = np.array(data["committee_virial"]).reshape(m, 3, 3) * Hartree
    voigt = member_virials[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    np.testing.assert_allclose(voigt, -atoms.get_volume() * stress, atol=1e-10)
    sigma = calc.get_property("forces_uncertainty", atoms)
    np.testing.assert_allclose(np.array(data["forces_uncertainty_norm"]) * Hartree / Bohr,
                               np.linalg.norm(sigma, axis=1), rtol=1e-9)  # 10 digits sent
    # i-PI recomputes the mean from the members: it must equal the main channel
    assert np.mean(data["committee_pot"]) == pytest.approx(energy, rel=1e-12)
    np.testing.assert_allclose(np.mean(data["committee_force"], axis=0), forces.ravel(),
                               atol=1e-12)
    np.testing.assert_allclose(np.mean(data["committee_virial"], axis=0), virial.ravel(),
                               atol=1e-12)


def test_energy_consistent_members_are_derivatives_of_member_energies(files, tmp_path):
    """With α_E ≠ α_F, the weighted-baseline members must still satisfy F_m = −∂E_m/∂R."""
    model = tiny_model(species=(1, 8))
    model.alpha_energy.fill_(2.0)
    model.alpha_forces.fill_(0.5)
    model.alpha_forces_species.copy_(torch.tensor([1.5, 0.8]))
    save_model(model, tmp_path / "calibrated.pt")
    driver = ShallowEnsembleDriver(model=str(tmp_path / "calibrated.pt"),
                                   template=str(files["water"]), energy_consistent_members=True)
    h, pos = ipi_view(files["atoms"])
    data = json.loads(driver.compute_structure(h, pos)[3])
    members = np.array(data["committee_force"]).reshape(len(data["committee_pot"]), -1, 3)
    step = 1e-4  # bohr, then strain
    for atom, axis in [(0, 0), (7, 2)]:
        up, down = pos.copy(), pos.copy()
        up[atom, axis] += step
        down[atom, axis] -= step
        derivative = (np.array(json.loads(driver.compute_structure(h, up)[3])["committee_pot"])
                      - json.loads(driver.compute_structure(h, down)[3])["committee_pot"])
        np.testing.assert_allclose(-derivative / (2 * step), members[:, atom, axis], rtol=1e-5,
                                   atol=1e-9)
    strained = []
    for eps in (step, -step):
        deform = np.eye(3) + eps * np.diag([1.0, 0.0, 0.0])
        strained.append(json.loads(driver.compute_structure(deform @ h, pos @ deform.T)[3]))
    plus, minus = (np.array(x["committee_pot"]) for x in strained)
    virial_xx = -(plus - minus) / (2 * step)
    np.testing.assert_allclose(virial_xx, np.array(data["committee_virial"])[:, 0], rtol=1e-5)
    default = ShallowEnsembleDriver(model=str(tmp_path / "calibrated.pt"),
                                    template=str(files["water"]))
    calibrated = np.array(json.loads(default.compute_structure(h, pos)[3])["committee_force"])
    assert not np.allclose(calibrated, members.reshape(len(members), -1))  # α_F ≠ α_E here


def test_candidates_written_above_levels_only(files, tmp_path):
    atoms = files["atoms"]
    calc = ShallowEnsembleCalculator(files["model"], always_member_forces=True)
    probe = atoms.copy()
    probe.calc = calc
    sigma_e = calc.get_property("energy_uncertainty", probe) / len(atoms)
    sigma_f = np.linalg.norm(calc.get_property("forces_uncertainty", probe), axis=1).max()
    for name, factor, expected in [("below", 0.5, 1), ("above", 2.0, 0)]:
        path = tmp_path / f"{name}.extxyz"
        driver = ShallowEnsembleDriver(
            model=str(files["model"]), template=str(files["water"]), candidates=str(path),
            energy_per_atom_lo_eV=factor * sigma_e, forces_lo_eV_per_A=factor * sigma_f)
        driver.compute_structure(*ipi_view(atoms))
        assert driver.n_candidates == expected
        assert path.exists() == bool(expected)
    frame = ase.io.read(tmp_path / "below.extxyz")
    assert frame.info["trust_level"] == "candidate"
    assert frame.info["energy_uncertainty_per_atom"] == pytest.approx(sigma_e, rel=1e-9)
    assert frame.info["max_forces_uncertainty"] == pytest.approx(sigma_f, rel=1e-9)
    np.testing.assert_allclose(frame.positions, atoms.positions, atol=1e-6)


def test_loads_through_ipi_custom_driver_mechanism(files):
    from ipi.pes import load_pes
    from ipi.pes.dummy import Dummy_driver
    from ipi.utils.io.inputs import read_args_kwargs

    import shallow_ensembles.ipi.driver as module

    try:
        cls = load_pes("custom", module.__file__)
    finally:
        sys.modules.pop("driver", None)  # load_pes registers the file under its stem
    assert issubclass(cls, Dummy_driver)
    args, kwargs = read_args_kwargs(
        f"model={files['model']},template={files['water']},forces_lo_eV_per_A=1e9,"
        f"candidates={files['folder'] / 'never.extxyz'}")
    driver = cls(*args, **kwargs)
    energy, forces, virial, extras = driver(*ipi_view(files["atoms"]))
    assert forces.shape == (len(files["atoms"]), 3) and virial.shape == (3, 3)
    assert len(json.loads(extras)["committee_pot"]) == files["n_members"]


def test_clear_errors(files, tmp_path):
    with pytest.raises(ModelFileError, match="missing.pt"):
        ShallowEnsembleDriver(model=str(tmp_path / "missing.pt"), template=str(files["water"]))
    platinum = files["atoms"].copy()
    platinum.numbers[0] = 78
    ase.io.write(tmp_path / "pt.extxyz", platinum)
    with pytest.raises(ElementError, match="element Pt"):
        ShallowEnsembleDriver(model=str(files["model"]), template=str(tmp_path / "pt.extxyz"))
    with pytest.raises(ConfigError, match="did you mean 'forces_lo_eV_per_A'"):
        ShallowEnsembleDriver(model=str(files["model"]), template=str(files["water"]),
                              forces_lo_eV_per_a=0.1)
    with pytest.raises(ConfigError, match="template"):
        ShallowEnsembleDriver(model=str(files["model"]))
    with pytest.raises(ConfigError, match="member forces"):
        ShallowEnsembleDriver(model=str(files["model"]), template=str(files["water"]),
                              member_forces=False, forces_lo_eV_per_A=0.1)


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_cli_errors_exit_2_without_traceback(files, tmp_path, capsys, case):
    model, structure = bad_input(case, files["model"], files["water"], tmp_path)
    code = main(["ipi-driver", "--model", str(model), "--structure", str(structure),
                 "--unix", "never-started"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ")
    assert BAD_INPUTS[case] in err


def test_importing_the_package_leaves_ipi_unimported():
    code = ("import sys, shallow_ensembles, shallow_ensembles.ipi, shallow_ensembles.ipi.outputs;"
            "import shallow_ensembles.cli.ipi;"
            "assert 'ipi' not in sys.modules, 'ipi imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
