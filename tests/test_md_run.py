"""run_md: the dynamics it builds, the files it writes, energy conservation, config errors."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import yaml
from ase import units

from conftest import run_protocol, tiny_model
from shallow_ensembles import conventions as K
from shallow_ensembles.config import template
from shallow_ensembles.errors import ConfigError
from shallow_ensembles.md import MDConfig, load_md_config
from shallow_ensembles.md.run import read_structure
from test_md_model_devi import water_box
from test_md_monitor import ScheduledCalc, drifting_atoms

NO_FILES = {"plot": False, "trajectory_interval": 0}


@pytest.fixture(scope="module")
def water():
    return water_box()


@pytest.fixture(scope="module")
def water_model(water):
    return tiny_model(species=(1, 8), frames=[water])


def table(path):
    """md.log as (numbers (T, 8), levels)."""
    rows = [line.split() for line in path.read_text().splitlines() if not line.startswith("#")]
    return np.array([[float(x) for x in r[:8]] for r in rows]), [r[8] for r in rows]


def nve_drift(model, frame, timestep_fs, steps, tmp_path):
    atoms = frame.copy()
    protocol = {"dynamics": {"kind": "velocity_verlet", "timestep_fs": timestep_fs,
                             "initial_temperature_K": 300, "seed": 1},
                "monitor": {"force_interval": 0}, "logging": NO_FILES}
    run_protocol(atoms, model, protocol, tmp_path, steps=steps)
    numbers, _ = table(tmp_path / "md.log")
    return np.abs(numbers[:, 4] - numbers[0, 4]).max(), np.ptp(numbers[:, 3])


def test_nve_conserves_energy_with_second_order_error(ethanol_frames, tmp_path):
    """Velocity Verlet with the real (tiny) model: total energy constant to a tolerance that
    shrinks 4× when the time step halves (jax-md test_nve_ensemble)."""
    model = tiny_model(frames=ethanol_frames[:5])
    drift, fluctuation = nve_drift(model, ethanol_frames[0], 0.5, 200, tmp_path / "a")
    half, _ = nve_drift(model, ethanol_frames[0], 0.25, 400, tmp_path / "b")
    assert fluctuation > 0.05  # the potential energy really moves (eV)
    assert drift < 2e-4 and drift < 2e-3 * fluctuation  # eV, over 100 fs
    assert 2.5 < drift / half < 6.0


@pytest.mark.parametrize("dynamics", [
    {"kind": "velocity_verlet", "initial_temperature_K": 300},
    {"kind": "langevin", "temperature_K": 300, "friction_per_fs": 0.01},
    {"kind": "bussi", "temperature_K": 300, "tdamp_fs": 50},
    {"kind": "nose_hoover_chain", "temperature_K": 300, "tdamp_fs": 50},
    {"kind": "isotropic_mtk_npt", "temperature_K": 300, "tdamp_fs": 50, "pressure_bar": 1.0,
     "pdamp_fs": 500},
    {"kind": "langevin_baoab", "temperature_K": 300, "tdamp_fs": 50, "pressure_bar": 1.0},
], ids=lambda d: d["kind"])
def test_every_dynamics_kind_runs_with_the_monitor(dynamics, water, water_model, tmp_path):
    atoms = water.copy()
    volume = atoms.get_volume()
    calc_steps = []
    protocol = {"dynamics": {**dynamics, "timestep_fs": 0.5, "seed": 0},
                "actions": [{"kind": "callback", "callback": "count", "level": "candidate"}],
                "levels": {"forces_lo_eV_per_A": 1e-9}, "logging": {"plot": False}}
    result = run_protocol(atoms, water_model, protocol, tmp_path, steps=4,
                    callbacks={"count": lambda event: calc_steps.append(event.step)})
    assert result.stop_reason == "completed" and result.steps_run == 4
    assert calc_steps == [0, 1, 2, 3, 4]
    # one model evaluation per step (integration-notes) plus the initial one
    assert atoms.calc.n_evaluations == 5
    if dynamics.get("pressure_bar") is not None:
        assert atoms.get_volume() != pytest.approx(volume, rel=1e-12)
    else:
        assert atoms.get_volume() == pytest.approx(volume, rel=1e-12)


def test_outputs_of_a_run(water, water_model, tmp_path):
    atoms = water.copy()
    protocol = {"dynamics": {"kind": "langevin", "temperature_K": 300, "friction_per_fs": 0.01,
                             "seed": 0},
                "levels": {"forces_lo_eV_per_A": 100.0},
                "logging": {"trajectory_interval": 2}}
    run_protocol(atoms, water_model, protocol, tmp_path, steps=6)
    for name in ("resolved_config.yaml", "md.log", "trajectory.extxyz", "committee_energies.dat",
                 "final.extxyz", "sigma.png", "summary.yaml"):
        assert (tmp_path / name).is_file(), name
    resolved = yaml.safe_load((tmp_path / "resolved_config.yaml").read_text())
    assert resolved["steps"] == 6 and resolved["dynamics"]["friction_per_fs"] == 0.01
    assert load_md_config(tmp_path / "resolved_config.yaml").steps == 6  # round trip
    numbers, levels = table(tmp_path / "md.log")
    assert list(numbers[:, 0]) == list(range(7)) and set(levels) == {"trusted"}
    np.testing.assert_allclose(numbers[:, 1], 0.5 * numbers[:, 0])
    frames = ase.io.read(tmp_path / "trajectory.extxyz", ":")
    assert [f.info["md_step"] for f in frames] == [0, 2, 4, 6]
    assert "forces_ensemble" not in frames[0].arrays  # logging.trajectory_member_forces
    assert frames[0].arrays["forces_uncertainty"].shape == (len(atoms), 3)
    assert "forces_ensemble" in atoms.arrays  # only left out of the file
    energies = np.loadtxt(tmp_path / "committee_energies.dat")
    assert energies.shape == (4, water_model.n_members)
    for frame, row, line in zip(frames, energies, numbers[::2], strict=True):
        np.testing.assert_allclose(frame.info[K.ENERGY_ENSEMBLE], row, atol=1e-8)
        assert frame.get_potential_energy() == pytest.approx(row.mean(), abs=1e-6)
        assert frame.info[K.ENERGY_UNCERTAINTY] == pytest.approx(row.std(ddof=1), rel=1e-6)
        assert line[6] == pytest.approx(frame.info[K.ENERGY_UNCERTAINTY_PER_ATOM], rel=1e-5)
        assert line[7] == pytest.approx(frame.info[K.MAX_FORCES_UNCERTAINTY], rel=1e-5)
    summary = yaml.safe_load((tmp_path / "summary.yaml").read_text())
    assert summary["stop_reason"] == "completed" and summary["steps_run"] == 6
    # restart from final.extxyz keeps the momenta
    restart = read_structure(tmp_path / "final.extxyz")
    np.testing.assert_allclose(restart.get_momenta(), atoms.get_momenta(), atol=1e-6)
    np.testing.assert_allclose(restart.positions, atoms.positions, atol=1e-6)


def test_heating_ramp_reports_the_temperature_of_the_first_candidate(tmp_path):
    # σ_F = 0.01·step eV/Å: first candidate (lo = 0.045) at step 5, first failed (hi = 0.075)
    # at step 8; the Langevin target rises 100 K per step from 300 K
    calc = ScheduledCalc(force_sigma=lambda s: 0.01 * s)
    protocol = {"dynamics": {"kind": "langevin", "temperature_K": 300,
                             "final_temperature_K": 1300, "friction_per_fs": 0.05, "seed": 0},
                "levels": {"forces_lo_eV_per_A": 0.045, "forces_hi_eV_per_A": 0.075},
                "actions": [{"kind": "stop", "level": "failed"}], "logging": NO_FILES}
    result = run_protocol(drifting_atoms(), calc, protocol, tmp_path, steps=10)
    assert result.stop_reason == "stop" and result.stop.step == 8
    assert result.first_candidate["step"] == 5 and result.first_failed["step"] == 8
    assert result.first_candidate["target_temperature_K"] == pytest.approx(800.0)
    assert result.first_failed["target_temperature_K"] == pytest.approx(1100.0)
    assert result.first_candidate["temperature_K"] > 0
    targets = np.loadtxt(tmp_path / "md.log", usecols=9)
    np.testing.assert_allclose(targets, 300 + 100 * np.arange(9))
    summary = yaml.safe_load((tmp_path / "summary.yaml").read_text())
    assert summary["first_candidate"]["target_temperature_K"] == pytest.approx(800.0)


def test_bussi_ramp_moves_the_target(water, water_model, tmp_path):
    atoms = water.copy()
    protocol = {"dynamics": {"kind": "bussi", "temperature_K": 300, "final_temperature_K": 600,
                             "tdamp_fs": 10, "seed": 0},
                "monitor": {"force_interval": 0}, "logging": NO_FILES}
    run_protocol(atoms, water_model, protocol, tmp_path, steps=3)
    # after step 3 the observer has set the target of step 4 = 300 + 300·4/3 (clamped to 600)
    # the Bussi target kinetic energy follows
    targets = np.loadtxt(tmp_path / "md.log", usecols=9)
    np.testing.assert_allclose(targets, [300, 400, 500, 600])


@pytest.mark.parametrize("data, path", [
    ({"dynamics": {"kind": "langevin", "temperature_K": 300}}, "dynamics.friction_per_fs"),
    ({"dynamics": {"kind": "velocity_verlet", "friction_per_fs": 0.1}},
     "dynamics.friction_per_fs"),
    ({"dynamics": {"kind": "langvin"}}, "dynamics.kind"),
    ({"dynamics": {"timestep": 1.0}}, "dynamics.timestep"),
    ({"levels": {"forces_lo_eV_per_A": 0.3, "forces_hi_eV_per_A": 0.1}}, "levels.forces"),
    ({"levels": {"forces_lo_eV_per_A": 0.3}, "monitor": {"force_interval": 0}},
     "monitor.force_interval"),
    ({"actions": [{"kind": "log"}, {"kind": "save", "patience_steps": 0}]},
     "actions[1].patience_steps"),
    ({"actions": [{"kind": "callback"}]}, "actions[0].callback"),
    ({"actions": [{"kind": "stop", "levle": "failed"}]}, "actions[0].levle"),
    ({"guard": {"min_distance_A": -1}}, "guard.min_distance_A"),
    ({"monitor": {"relative_forces_lo": 0.2}}, "monitor.relative_forces_lo"),
    ({"steps": "many"}, "steps"),
])
def test_config_errors_name_the_dotted_key(data, path):
    with pytest.raises(ConfigError) as info:
        load_md_config(data)
    assert info.value.path == path
    assert str(info.value).startswith(path + ":")


def test_unknown_key_suggests_the_close_match():
    with pytest.raises(ConfigError, match="did you mean 'temperature_K'"):
        load_md_config({"dynamics": {"kind": "langevin", "temperature_k": 300}})


def test_template_lists_every_section():
    text = template(MDConfig)
    for key in ("dynamics:", "kind: velocity_verlet", "timestep_fs: 0.5", "levels:",
                "forces_lo_eV_per_A: null", "guard:", "min_distance_A: 0.5", "actions: []"):
        assert key in text
    import yaml as _yaml

    assert load_md_config(_yaml.safe_load(text)) == MDConfig()


def test_timestep_is_in_fs(water, water_model, tmp_path):
    atoms = water.copy()
    protocol = {"dynamics": {"kind": "velocity_verlet", "timestep_fs": 0.25,
                             "initial_temperature_K": 0},
                "monitor": {"force_interval": 0}, "logging": NO_FILES}
    from shallow_ensembles.md.dynamics import build_dynamics

    dyn, target = build_dynamics(atoms, load_md_config(protocol).dynamics, 10)
    assert dyn.dt == pytest.approx(0.25 * units.fs) and target is None
    assert not atoms.get_momenta().any()


def test_python_api_with_a_callback_function(tmp_path):
    from shallow_ensembles.md import ActionConfig, DynamicsConfig
    from shallow_ensembles.thresholds import TrustLevels

    seen = []

    def on_candidate(event):
        seen.append(event.step)

    config = MDConfig(dynamics=DynamicsConfig(kind="velocity_verlet", timestep_fs=1.0),
                      levels=TrustLevels(forces_lo_eV_per_A=0.1),
                      actions=(ActionConfig(kind="callback", callback=on_candidate),))
    calc = ScheduledCalc(force_sigma=lambda s: 0.2 if s >= 3 else 0.0)
    result = run_protocol(drifting_atoms(), calc, config, tmp_path, steps=5)
    assert seen == [3, 4, 5] and result.stop_reason == "completed"
    resolved = yaml.safe_load((tmp_path / "resolved_config.yaml").read_text())
    assert resolved["actions"][0]["callback"].endswith("on_candidate")
