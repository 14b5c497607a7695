"""Data layer: readers name file/frame/key, neighbour lists match ASE, splits, baselines."""

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.neighborlist import neighbor_list as ase_neighbor_list

from shallow_ensembles import conventions as K
from shallow_ensembles.data import (
    Batch,
    fit_composition_baseline,
    load_split,
    make_split,
    read_structures,
    save_split,
)
from shallow_ensembles.data.neighbors import neighbor_list
from shallow_ensembles.errors import DataError, ElementError


def labelled(atoms, energy=-1.0, forces=None):
    atoms = atoms.copy()
    forces = np.zeros((len(atoms), 3)) if forces is None else forces
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def test_reads_shipped_data_with_labels(ethanol_frames):
    from conftest import ETHANOL
    frames = read_structures(ETHANOL)
    assert len(frames) == 60
    np.testing.assert_allclose(frames[3].info[K.REF_ENERGY],
                               ethanol_frames[3].get_potential_energy())
    np.testing.assert_allclose(frames[3].arrays[K.REF_FORCES], ethanol_frames[3].get_forces())


def test_custom_keys(tmp_path):
    atoms = molecule("H2O")
    atoms.info["dft_energy"] = -14.2
    atoms.arrays["dft_forces"] = np.ones((3, 3))
    write(tmp_path / "a.extxyz", atoms)
    frames = read_structures(tmp_path / "a.extxyz", energy_key="dft_energy",
                             forces_key="dft_forces")
    assert frames[0].info[K.REF_ENERGY] == pytest.approx(-14.2)
    with pytest.raises(DataError, match=r"a.extxyz, frame 0, key 'energy': no energy found"):
        read_structures(tmp_path / "a.extxyz")


def test_ref_keys_are_read_without_options(tmp_path):
    """REF_energy / REF_forces (this package's own files, MACE's training files) need no keys."""
    atoms = molecule("H2O")
    atoms.info["REF_energy"] = -14.2
    atoms.arrays["REF_forces"] = np.full((3, 3), 0.5)
    write(tmp_path / "a.extxyz", atoms)
    (frame,) = read_structures(tmp_path / "a.extxyz")
    assert frame.info[K.REF_ENERGY] == pytest.approx(-14.2)
    np.testing.assert_allclose(frame.arrays[K.REF_FORCES], 0.5)


@pytest.mark.parametrize("problem,match", [
    ("nan_energy", "energy is NaN"),
    ("nan_forces", "forces contain NaN"),
    ("no_forces", "no forces found"),
    ("unknown_element", "element Pt is not in this model's elements"),
])
def test_bad_frames_name_file_and_frame(tmp_path, problem, match):
    good = labelled(molecule("H2O"))
    bad = molecule("H2O")
    energy, forces = -1.0, np.zeros((3, 3))
    if problem == "nan_energy":
        energy = float("nan")
    if problem == "nan_forces":
        forces[1, 2] = float("nan")
    if problem == "unknown_element":
        bad = molecule("H2O")
        bad.numbers[0] = 78
    bad.calc = SinglePointCalculator(bad, energy=energy,
                                     **({} if problem == "no_forces" else {"forces": forces}))
    path = tmp_path / "bad.extxyz"
    write(path, [good, good, bad])
    with pytest.raises(DataError, match=match) as info:
        read_structures(path, elements=[1, 8])
    assert "bad.extxyz" in str(info.value) and "frame 2" in str(info.value)
    if problem == "unknown_element":
        assert isinstance(info.value, ElementError)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.extxyz").write_text("")
    with pytest.raises(DataError, match="empty.extxyz"):
        read_structures(tmp_path / "empty.extxyz")
    with pytest.raises(DataError, match="no such file"):
        read_structures(tmp_path / "missing.extxyz")


def test_forces_length_mismatch(tmp_path):
    atoms = molecule("H2O")
    atoms.info["energy"] = 1.0
    atoms.info["my_forces"] = np.zeros((2, 3)).tolist()
    atoms.calc = None
    frames = [atoms]
    from shallow_ensembles.data.io import label_frame
    with pytest.raises(DataError, match=r"expected forces of shape \(3, 3\), found \(2, 3\)"):
        label_frame(frames[0], file="x.extxyz", frame=0, forces_key="my_forces")


CASES = {
    "molecule": molecule("CH3CH2OH"),
    "cubic": bulk("Cu", "fcc", a=3.6, cubic=True),
    "small_cell": bulk("Si", "diamond", a=5.43),
    "skewed": Atoms("CO", positions=[[0, 0, 0], [1.1, 0.3, 0.2]],
                    cell=[[3.0, 0, 0], [1.7, 2.6, 0], [0.9, 0.5, 2.8]], pbc=True),
    "slab": Atoms("CO", positions=[[0, 0, 0], [1.1, 0.3, 0.2]],
                  cell=[[3.0, 0, 0], [0, 3.2, 0], [0, 0, 9.0]], pbc=[True, True, False]),
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("cutoff", [2.5, 4.0])
def test_neighbor_list_matches_ase(name, cutoff):
    atoms = CASES[name].copy()
    atoms.rattle(0.02, seed=1)
    i, j, shifts = neighbor_list(atoms, cutoff)
    assert i.dtype == np.int64 and shifts.dtype == np.int64
    ai, aj, aS = ase_neighbor_list("ijS", atoms, cutoff)
    ours = sorted(zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist()), strict=True))
    theirs = sorted(zip(ai.tolist(), aj.tolist(), map(tuple, aS.tolist()), strict=True))
    assert ours == theirs, name
    batch = Batch.from_atoms(atoms, cutoff)
    d = batch.edge_vectors().norm(dim=1).numpy()
    assert d.max() < cutoff and np.all(np.diff(i) >= 0)


def test_batch_concatenates_variable_sizes(ethanol_frames):
    frames = [ethanol_frames[0], bulk("Cu", "fcc", a=3.6, cubic=True)]
    batch = Batch.from_atoms(frames, 3.0)
    assert batch.positions.shape == (13, 3)
    assert batch.structure.tolist() == [0] * 9 + [1] * 4
    assert int(batch.i.min()) >= 0 and int(batch.j[batch.i >= 9].min()) >= 9


def test_split_reproducible_and_saved(tmp_path):
    a, b = make_split(100, 60, 20, seed=3), make_split(100, 60, 20, seed=3)
    assert a == b and a != make_split(100, 60, 20, seed=4)
    assert not set(a.train) & set(a.validation) and len(a.test) == 20
    save_split(a, tmp_path / "split.json")
    assert load_split(tmp_path / "split.json", 100) == a
    assert json.loads((tmp_path / "split.json").read_text())["seed"] == 3
    with pytest.raises(DataError, match="split made for 100 frames"):
        load_split(tmp_path / "split.json", 50)


def test_composition_baseline_recovers_element_energies():
    rng = np.random.default_rng(0)
    mu = np.array([-13.6, -1030.0, -2040.0])
    numbers = [rng.choice([1, 6, 8], size=rng.integers(3, 12)) for _ in range(30)]
    energies = [sum(mu[[1, 6, 8].index(z)] for z in nums) for nums in numbers]
    np.testing.assert_allclose(fit_composition_baseline(numbers, energies, [1, 6, 8]), mu,
                               rtol=1e-8)
