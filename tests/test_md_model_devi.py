"""model_devi.out follows DeePMD: its header, and population (ddof=0) deviations."""

from __future__ import annotations

import itertools

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from conftest import run_protocol, tiny_model
from shallow_ensembles.md.logs import MODEL_DEVI_HEADER, ddof0_factor, model_devi_row

# The header line of LAMMPS' pair deepmd and of deepmd.infer.model_devi.write_model_devi_out.
DEEPMD_HEADER = ("#       step         max_devi_v         min_devi_v         avg_devi_v"
                 "         max_devi_f         min_devi_f         avg_devi_f             devi_e")


def water_box(n_side=2, spacing=3.1, seed=0):
    rng = np.random.default_rng(seed)
    atoms = Atoms(cell=[n_side * spacing] * 3, pbc=True)
    for index in itertools.product(range(n_side), repeat=3):
        water = molecule("H2O")
        water.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COM")
        water.translate((np.array(index) + 0.5) * spacing - water.get_center_of_mass())
        atoms += water
    return atoms


def deepmd_reference(energies, forces, virials, n_atoms):
    """DeePMD's calc_model_devi_{v,f,e} (numpy's default ddof=0) for one frame."""
    fs_devi = np.linalg.norm(np.std(forces, axis=0), axis=-1)
    vs_devi = np.std(virials / n_atoms, axis=0)
    return np.array([vs_devi.max(), vs_devi.min(), np.linalg.norm(vs_devi) / 3,
                     fs_devi.max(), fs_devi.min(), fs_devi.mean(),
                     np.std(energies / n_atoms)])


def voigt_to_full(stress):
    xx, yy, zz, yz, xz, xy = np.moveaxis(stress, -1, 0)
    return np.stack([xx, xy, xz, xy, yy, yz, xz, yz, zz], axis=-1)


def test_header_is_deepmds():
    assert MODEL_DEVI_HEADER == DEEPMD_HEADER


@pytest.mark.parametrize("n_members", [2, 5])
def test_row_matches_deepmd_definitions(n_members):
    rng = np.random.default_rng(n_members)
    n_atoms, volume = 7, 123.0
    energies = rng.normal(size=n_members) * 3
    forces = rng.normal(size=(n_members, n_atoms, 3))
    stress = rng.normal(size=(n_members, 6)) * 1e-3
    row = model_devi_row(42, energies, forces, stress, volume)
    virials = -volume * voigt_to_full(stress)
    expected = deepmd_reference(energies, forces, virials, n_atoms)
    assert row[0] == 42
    np.testing.assert_allclose(row[1:], expected, rtol=1e-12)
    # the conversion from this project's ddof=1 σ
    sigma1 = forces.std(axis=0, ddof=1)
    assert row[4] == pytest.approx(np.linalg.norm(sigma1, axis=1).max()
                                   * np.sqrt((n_members - 1) / n_members))
    assert ddof0_factor(n_members) == pytest.approx(np.sqrt((n_members - 1) / n_members))


def test_non_periodic_rows_have_zero_virial_deviations():
    rng = np.random.default_rng(0)
    row = model_devi_row(0, rng.normal(size=4), rng.normal(size=(4, 3, 3)))
    assert np.all(row[1:4] == 0)


def test_file_written_by_a_run_matches_the_trajectory(tmp_path):
    atoms = water_box()
    model = tiny_model(species=(1, 8), frames=[atoms])
    protocol = {"dynamics": {"kind": "langevin", "temperature_K": 300, "friction_per_fs": 0.02,
                             "seed": 3},
                "logging": {"model_devi": True, "trajectory_interval": 1, "plot": False,
                            "trajectory_member_forces": True}}
    run_protocol(atoms, model, protocol, tmp_path, steps=3)
    lines = (tmp_path / "model_devi.out").read_text().splitlines()
    assert lines[0] == DEEPMD_HEADER
    assert len(lines[1]) == 12 + 7 * 19  # DeePMD's "%12d" + 7 × "%19.6e"
    table = np.loadtxt(tmp_path / "model_devi.out")
    frames = ase.io.read(tmp_path / "trajectory.extxyz", ":")
    assert table.shape == (4, 8) and list(table[:, 0]) == [0, 1, 2, 3]
    for row, frame in zip(table, frames, strict=True):
        n = len(frame)
        energies = frame.info["energy_ensemble"]
        m = energies.size
        forces = frame.arrays["forces_ensemble"].reshape(n, m, 3).transpose(1, 0, 2)
        virials = -frame.get_volume() * voigt_to_full(frame.info["stress_ensemble"])
        expected = deepmd_reference(energies, forces, virials, n)
        np.testing.assert_allclose(row[1:], expected, rtol=2e-6, atol=1e-12)
        assert np.all(row[1:] > 0)
