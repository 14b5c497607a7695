"""The MD registries: an integrator or an action registered from here needs no edit elsewhere.

The toy integrator is ASE's Velocity Verlet with a thermostat target it records (so the ramp
of ``final_temperature_K`` reaches it); the toy action counts its firings into a file. Both run
through ``run_md`` from a plain protocol mapping, validated by ``load_md_config``.
"""

import numpy as np
import pytest
from ase import units

from conftest import run_protocol, tiny_model
from shallow_ensembles.cli.md import kinds_template
from shallow_ensembles.errors import ConfigError
from shallow_ensembles.md import ACTIONS, INTEGRATORS, load_md_config
from shallow_ensembles.md.actions import Action, register_action
from shallow_ensembles.md.dynamics import Integrator, register_integrator
from test_md_model_devi import water_box

TARGETS: list[float] = []


def build_toy(atoms, config, rng):
    from ase.md.verlet import VelocityVerlet

    return VelocityVerlet(atoms, timestep=config.timestep_fs * units.fs)


class CountAction(Action):
    """The toy action: appends the step of every firing to ``count.txt`` in the run folder."""

    kind = "count"

    def fire(self, event):
        with open(event.monitor.output_dir / "count.txt", "a") as handle:
            handle.write(f"{event.step} {event.record.level}\n")


@pytest.fixture
def toys():
    saved = dict(INTEGRATORS), dict(ACTIONS)
    TARGETS.clear()
    register_integrator(Integrator("toy_verlet", build_toy, frozenset({"temperature_K"}),
                                   frozenset({"temperature_K"}),
                                   lambda dyn, t: TARGETS.append(t)))
    register_action(CountAction)
    yield
    for table, entries in zip((INTEGRATORS, ACTIONS), saved, strict=True):
        table.clear()
        table.update(entries)


@pytest.fixture(scope="module")
def water():
    return water_box()


def test_a_registered_integrator_runs_with_its_ramp(toys, water, tmp_path):
    protocol = {"dynamics": {"kind": "toy_verlet", "timestep_fs": 0.5, "temperature_K": 300,
                             "final_temperature_K": 400, "seed": 0},
                "logging": {"plot": False, "trajectory_interval": 0}}
    model = tiny_model(species=(1, 8), frames=[water])
    result = run_protocol(water.copy(), model, protocol, tmp_path, steps=4)
    assert result.stop_reason == "completed" and result.steps_run == 4
    # set before each step to the target of the step it integrates (the last is clamped)
    np.testing.assert_allclose(TARGETS, [325, 350, 375, 400, 400])


def test_integrator_options_are_checked_from_the_registry(toys):
    with pytest.raises(ConfigError, match="dynamics.friction_per_fs: not used by kind"):
        load_md_config({"dynamics": {"kind": "toy_verlet", "temperature_K": 300,
                                     "friction_per_fs": 0.01}})
    with pytest.raises(ConfigError, match="dynamics.temperature_K: required"):
        load_md_config({"dynamics": {"kind": "toy_verlet"}})
    with pytest.raises(ConfigError, match="dynamics.kind: expected one of .*toy_verlet"):
        load_md_config({"dynamics": {"kind": "toy-verlet"}})
    assert "#   toy_verlet: temperature_K" in kinds_template()


def test_a_registered_action_fires_with_patience_and_spacing(toys, water, tmp_path):
    protocol = {"dynamics": {"kind": "velocity_verlet", "initial_temperature_K": 300,
                             "seed": 0},
                "levels": {"forces_lo_eV_per_A": 1e-9},
                "actions": [{"kind": "count", "level": "candidate", "patience_steps": 2,
                             "min_spacing_steps": 2}],
                "logging": {"plot": False, "trajectory_interval": 0}}
    model = tiny_model(species=(1, 8), frames=[water])
    result = run_protocol(water.copy(), model, protocol, tmp_path, steps=6)
    assert result.stop_reason == "completed"
    lines = (tmp_path / "count.txt").read_text().split("\n")[:-1]
    # every step is a candidate: fires from the 2nd step on (patience 2), every 2nd step
    assert lines == ["1 candidate", "3 candidate", "5 candidate"]


def test_action_options_are_checked_from_the_registry(toys):
    with pytest.raises(ConfigError, match=r"actions\[1\].filename: not used by kind 'count'"):
        load_md_config({"actions": [{"kind": "log"}, {"kind": "count", "filename": "x"}]})
    with pytest.raises(ConfigError, match=r"actions\[0\].kind: expected one of .*'count'"):
        load_md_config({"actions": [{"kind": "cout"}]})
    assert "#   count: The toy action" in kinds_template()
