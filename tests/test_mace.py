"""MACE models: a file written by ``mace_run_train`` → a calibrated shallow ensemble in one
``shallow-ensembles train``; everything downstream works on it.

The oracle of the import is MACE's own ASE calculator on the same file. A real
``mace_run_train`` (2 epochs of a tiny model on 40 ethanol frames, no network) writes the file.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml

from conftest import ETHANOL, ROOT
from shallow_ensembles import ShallowEnsembleCalculator
from shallow_ensembles.cli import main
from shallow_ensembles.model import load_model
from shallow_ensembles.model.io import load_initial_model

pytest.importorskip("mace")
pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def labelled(frames):
    """Copies with the labels under REF_* keys (what mace_run_train reads)."""
    out = []
    for atoms in frames:
        copy = atoms.copy()
        copy.calc = None
        copy.info["REF_energy"] = atoms.get_potential_energy()
        copy.arrays["REF_forces"] = atoms.get_forces()
        out.append(copy)
    return out


@pytest.fixture(scope="module")
def mace_file(tmp_path_factory):
    """A MACE model file written by a real ``mace_run_train`` run (float64, tiny)."""
    folder = tmp_path_factory.mktemp("mace_run_train")
    frames = labelled(ase.io.read(ETHANOL, ":50"))
    ase.io.write(folder / "train.extxyz", frames[:40])
    ase.io.write(folder / "valid.extxyz", frames[40:])
    args = ["--name", "tiny", "--train_file", "train.extxyz", "--valid_file", "valid.extxyz",
            "--energy_key", "REF_energy", "--forces_key", "REF_forces", "--E0s", "average",
            "--r_max", "4.0", "--num_channels", "8", "--max_L", "0", "--num_interactions", "2",
            "--correlation", "2", "--num_radial_basis", "4", "--radial_MLP", "[16]",
            "--max_num_epochs", "2", "--batch_size", "10", "--device", "cpu",
            "--default_dtype", "float64", "--seed", "1", "--model", "MACE", "--save_cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([str(BIN / "mace_run_train"), *args], cwd=folder, env=env, check=True,
                   capture_output=True, timeout=300)
    return folder / "tiny.model"


def test_imported_model_equals_mace_calculator(mace_file):
    from mace.calculators import MACECalculator

    frames = ase.io.read(ETHANOL, "50:53")
    reference = MACECalculator(model_paths=str(mace_file), device="cpu", default_dtype="float64")
    model = load_initial_model(mace_file, n_members=3, dtype="float64")
    single = load_initial_model(mace_file, n_members=3, dtype="float32")
    assert single.dtype == torch.float32 and single.hyperparameters["dtype"] == "float32"
    ours = ShallowEnsembleCalculator(model, dtype="float64")
    for atoms in frames:
        expected = (reference.get_potential_energy(atoms), reference.get_forces(atoms))
        got = (ours.get_potential_energy(atoms), ours.get_forces(atoms))
        assert got[0] == pytest.approx(expected[0], abs=1e-8)
        np.testing.assert_allclose(got[1], expected[1], atol=1e-8)
        # identical heads before any uncertainty is added: no spread
        assert ours.get_property("energy_uncertainty", atoms) == pytest.approx(0, abs=1e-9)
        np.testing.assert_allclose(ShallowEnsembleCalculator(single).get_forces(atoms),
                                   expected[1], atol=1e-4)  # the float32 import


def test_importing_mace_does_not_leak_its_unsafe_torch_load_setting():
    code = ("import os; from shallow_ensembles.model.mace_backbone import import_mace; "
            "import_mace(); import torch; "
            "assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def ensemble(mace_file, tmp_path_factory):
    """``shallow-ensembles train`` with ``init_model`` = the MACE file, protocol two-step-llpr."""
    folder = tmp_path_factory.mktemp("mace_ensemble")
    frames = ase.io.read(ETHANOL, ":")
    ase.io.write(folder / "data.extxyz", frames)
    config = {
        "data": {"train_file": str(folder / "data.extxyz"), "n_train": 30,
                 "n_validation": 15, "n_test": 15},
        "model": {"n_members": 4, "dtype": "float64"},
        "protocol": "two-step-llpr",
        "stages": [{"kind": "mse"}, {"kind": "llpr", "force_rows": True},
                   {"kind": "force-nll", "epochs": 2, "learning_rate": 1e-4}],
        "training": {"batch_size": 10, "threads": 1, "progress": False},
        "init_model": str(mace_file),
        "output_dir": str(folder / "run"),
    }
    (folder / "train.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(folder / "train.yaml")]) == 0
    return folder


def test_train_turns_the_mace_file_into_a_calibrated_ensemble(ensemble):
    run = ensemble / "run"
    model = load_model(run / "model.pt")  # weights_only, no pickled module inside
    payload = torch.load(run / "model.pt", weights_only=True)
    assert payload["hyperparameters"]["backbone"]["kind"] == "mace"
    assert payload["provenance"]["stages"] == ["mse", "llpr", "force-nll"]
    with open(run / "train_log.csv") as handle:  # the MSE stage is skipped: only the fine-tune
        assert {row["kind"] for row in csv.DictReader(handle)} == {"force-nll"}
    assert float(model.alpha_forces) != 1.0 and float(model.alpha_energy) != 1.0
    atoms = ase.io.read(ensemble / "data.extxyz", "-1")
    calc = ShallowEnsembleCalculator(run / "model.pt")
    atoms.calc = calc
    keys = ("energy", "forces", "energy_uncertainty", "energy_ensemble", "forces_uncertainty",
            "forces_ensemble")
    values = {k: calc.get_property(k, atoms) for k in keys}
    assert values["energy_uncertainty"] > 0
    assert values["forces_ensemble"].shape == (4, len(atoms), 3)
    np.testing.assert_allclose(values["forces_ensemble"].mean(0), values["forces"], atol=1e-8)
    assert np.std(values["energy_ensemble"], ddof=1) == pytest.approx(
        values["energy_uncertainty"], rel=1e-8)


def test_evaluate_and_md_run_on_the_mace_ensemble(ensemble, tmp_path):
    model = ensemble / "run" / "model.pt"
    assert main(["evaluate", str(model), str(ensemble / "data.extxyz"),
                 "--output", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert np.isfinite(metrics["energy_offset_share"])
    protocol = tmp_path / "nvt.yaml"
    protocol.write_text(yaml.safe_dump({
        "dynamics": {"kind": "langevin", "timestep_fs": 0.5, "temperature_K": 300,
                     "friction_per_fs": 0.01, "seed": 0},
        "steps": 5, "levels": {"forces_lo_eV_per_A": 1e-6, "forces_hi_eV_per_A": 1e3},
        "actions": [{"kind": "save", "level": "candidate"}], "logging": {"interval": 1}}))
    code = main(["md", str(protocol), "--model", str(model), "--structure",
                 str(ensemble / "data.extxyz"), "--output", str(tmp_path / "md"),
                 "--no-progress"])
    assert code == 0
    saved = ase.io.read(tmp_path / "md" / "candidates.extxyz", ":")
    assert len(saved) >= 1  # σ_F > 1e-6 eV/Å at every step: the members differ


def test_ipi_committee_run_with_the_mace_ensemble(ensemble, tmp_path):
    from shallow_ensembles.ipi.outputs import read_committee_pot
    from shallow_ensembles.ipi.run import run_ipi

    molecule = ase.io.read(ensemble / "data.extxyz", "0")
    molecule.set_cell([12.0, 12.0, 12.0])
    molecule.center()
    molecule.pbc = True
    ase.io.write(tmp_path / "ethanol.extxyz", molecule)
    xml = (ROOT / "md_protocols" / "ipi" / "nvt_committee.xml").read_text()
    (tmp_path / "nvt.xml").write_text(xml.replace("stride='10'", "stride='1'"))
    model = ensemble / "run" / "model.pt"
    summary = run_ipi(tmp_path / "nvt.xml", model, structure=tmp_path / "ethanol.extxyz",
                      steps=3, output=tmp_path / "run", timeout_s=90)
    assert summary.steps == 3
    frames = ase.io.read(summary.run_dir / "simulation.pos_0.extxyz", ":")
    calc = ShallowEnsembleCalculator(model)
    members = [calc.get_property("energy_ensemble", atoms) for atoms in frames]
    np.testing.assert_allclose(read_committee_pot(summary.run_dir / "simulation.committee_pot_0"),
                               members, rtol=1e-6, atol=1e-6)


def test_active_learning_round_with_a_mace_backbone(tmp_path):
    from shallow_ensembles.active_learning import run_active_learning
    from test_active_learning import al_config, cu_frames

    ase.io.write(tmp_path / "start.extxyz", cu_frames(6, 0))
    ase.io.write(tmp_path / "validation.extxyz", cu_frames(4, 1))
    ase.io.write(tmp_path / "test.extxyz", cu_frames(8, 2, rattle=0.15))
    config = al_config(tmp_path, max_rounds=1)
    config["initial"]["model"] = {
        "backbone": {"kind": "mace", "cutoff_A": 3.5, "channels": 8, "max_L": 0,
                     "correlation": 2, "num_radial": 4, "radial_mlp": [8]},
        "bottleneck": 4, "n_members": 4, "dtype": "float64"}
    summary = run_active_learning(config)
    rounds = sorted((tmp_path / "run").glob("round_*"))
    assert [r.name for r in rounds] == ["round_00", "round_01"]
    fine_tuned = load_model(rounds[-1] / "model.pt")
    assert fine_tuned.hyperparameters["backbone"]["kind"] == "mace"
    assert summary is not None
