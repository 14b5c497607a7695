"""Every md_protocols/*.yaml validates and runs a few steps through the command line."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import yaml

from conftest import ROOT, tiny_model
from shallow_ensembles.cli import main
from shallow_ensembles.md import load_md_config
from shallow_ensembles.model import save_model
from test_md_model_devi import water_box

PROTOCOLS = sorted((ROOT / "md_protocols").glob("*.yaml"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("md_inputs")
    water = water_box()
    model = save_model(tiny_model(species=(1, 8), frames=[water]), folder / "model.pt")
    structure = folder / "water.extxyz"
    ase.io.write(structure, water)
    return model, structure


def test_the_three_protocols_are_shipped():
    assert {p.name for p in PROTOCOLS} >= {"nvt_water_300K.yaml", "heating_ramp.yaml",
                                           "npt_water.yaml"}


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.name)
def test_protocol_runs_through_the_cli(protocol, inputs, tmp_path, capsys):
    config = load_md_config(protocol)
    assert config.steps >= 1000 and config.actions
    model, structure = inputs
    out = tmp_path / "run"
    code = main(["md", str(protocol), "--model", str(model), "--structure", str(structure),
                 "--output", str(out), "--steps", "3", "--no-progress"])
    printed = capsys.readouterr().out
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert code == {"completed": 0, "guard": 4}.get(summary["stop_reason"], 3)
    assert "steps run:" in printed and "outcome:" in printed
    assert "candidates saved:" in printed
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    assert resolved["steps"] == 3
    for key, value in yaml.safe_load(protocol.read_text())["dynamics"].items():
        assert resolved["dynamics"][key] == value
    for name in ("md.log", "trajectory.extxyz", "committee_energies.dat", "model_devi.out",
                 "sigma.png", "summary.yaml", "final.extxyz"):
        assert (out / name).is_file(), name
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert summary["steps_run"] <= 3
    frames = ase.io.read(out / "trajectory.extxyz", ":")
    assert all(f.info["energy_ensemble"].shape == (4,) for f in frames)


def test_heating_ramp_summary_names_the_temperature(inputs, tmp_path, capsys):
    model, structure = inputs
    # the tiny model is far outside any trust level: the first frame is already failed
    code = main(["md", str(ROOT / "md_protocols" / "heating_ramp.yaml"), "--model", str(model),
                 "--structure", str(structure), "--output", str(tmp_path), "--steps", "20",
                 "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 3  # stopped early by a stop action: documented non-zero exit
    assert "first candidate:  step 0" in printed and "(target 300.0 K)" in printed
    # ten failed steps in a row (patience 10)
    assert "stopped by a stop action at step 9: " in printed


def test_progress_bar_and_overrides(inputs, tmp_path, capsys):
    model, structure = inputs
    code = main(["md", str(ROOT / "md_protocols" / "nvt_water_300K.yaml"), "--model", str(model),
                 "--structure", str(structure), "--output", str(tmp_path), "--steps", "2",
                 "--set", "dynamics.temperature_K=350", "--set", "logging.interval=1"])
    assert code == 0
    assert "step" in capsys.readouterr().err  # tqdm
    resolved = yaml.safe_load((tmp_path / "resolved_config.yaml").read_text())
    assert resolved["dynamics"]["temperature_K"] == 350
    targets = np.loadtxt(tmp_path / "md.log", usecols=9)
    np.testing.assert_allclose(targets, 350.0)


def test_cli_errors_exit_2_with_the_dotted_key(inputs, tmp_path, capsys):
    model, structure = inputs
    bad = tmp_path / "bad.yaml"
    bad.write_text("dynamics: {kind: langevin, temperature_K: 300, friction_per_fs: 0.01}\n"
                   "guard: {min_distance: 0.5}\n")
    code = main(["md", str(bad), "--model", str(model), "--structure", str(structure),
                 "--output", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "guard.min_distance: unknown option (did you mean 'min_distance_A'?)" in err
    assert main(["md", str(bad), "--model", str(model)]) == 2
    assert "--structure" in capsys.readouterr().err


def test_print_defaults(capsys):
    assert main(["md", "--print-defaults"]) == 0
    text = capsys.readouterr().out
    assert load_md_config(yaml.safe_load(text)) == load_md_config({})


def test_protocol_readme_lists_every_protocol():
    readme = (ROOT / "md_protocols" / "README.md").read_text()
    for protocol in PROTOCOLS:
        assert protocol.name in readme
