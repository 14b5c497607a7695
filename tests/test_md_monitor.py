"""The uncertainty monitor acts at the step where the prescribed σ crosses its level.

A fake ASE calculator returns member energies and forces whose spread is a known function of the
step (its own count of new geometries: the atoms drift at constant velocity under zero forces,
so every MD step is a new geometry and VelocityVerlet makes one calculate() per step).
"""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.md.verlet import VelocityVerlet

from conftest import run_protocol
from shallow_ensembles import conventions as K
from shallow_ensembles.errors import DataError, ThresholdExceeded
from shallow_ensembles.md import ActionConfig, GuardConfig, MonitorConfig, UncertaintyMonitor
from shallow_ensembles.thresholds import TrustLevels

M = 4
# Member pattern with mean 0 and standard deviation (ddof=1) exactly 1.
PATTERN = np.array([-1.5, -0.5, 0.5, 1.5]) / np.std([-1.5, -0.5, 0.5, 1.5], ddof=1)


class ScheduledCalc(Calculator):
    """σ_E/atom = energy_sigma(step) eV/atom, max_i ‖σ(F_i)‖ = force_sigma(step) eV/Å."""

    implemented_properties = ["energy", "free_energy", "forces", "energy_uncertainty",
                              "energy_ensemble", "forces_uncertainty", "forces_ensemble"]

    def __init__(self, energy_sigma=lambda s: 0.0, force_sigma=lambda s: 0.0, nan_at=None,
                 forces=None):
        super().__init__()
        self.energy_sigma, self.force_sigma, self.nan_at = energy_sigma, force_sigma, nan_at
        self.mean_forces = forces
        self.step = -1
        self.member_calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if system_changes:
            self.step += 1
            self.results = {}
        if not np.all(np.isfinite(self.atoms.positions)):
            raise DataError("positions contain NaN or inf", key="positions")
        n = len(self.atoms)
        if "energy" not in self.results:
            ensemble = -1.0 + self.energy_sigma(self.step) * n * PATTERN
            forces = np.zeros((n, 3)) if self.mean_forces is None else self.mean_forces.copy()
            if self.nan_at is not None and self.step >= self.nan_at:
                forces[0, 0] = np.nan
            self.results.update(energy=ensemble.mean(), free_energy=ensemble.mean(),
                                forces=forces, energy_ensemble=ensemble,
                                energy_uncertainty=ensemble.std(ddof=1))
        wants = {"forces_uncertainty", "forces_ensemble"} & set(properties)
        if wants and "forces_ensemble" not in self.results:
            self.member_calls += 1
            # atom 0 carries the largest spread: ‖σ(F_0)‖ = force_sigma, the others half of it
            direction = np.tile([0.6, 0.0, 0.8], (n, 1)) * 0.5
            direction[0] *= 2.0
            spread = self.force_sigma(self.step) * PATTERN[:, None, None] * direction
            ensemble = self.results["forces"][None] + spread
            self.results.update(forces_ensemble=ensemble,
                                forces_uncertainty=ensemble.std(axis=0, ddof=1))


def drifting_atoms(n=4, spacing=3.0, speed_A_per_fs=0.01):
    """``n`` H atoms far apart, all moving along x (no collisions), in a non-periodic box."""
    atoms = Atoms("H" * n, positions=[[0.0, spacing * i, 0.0] for i in range(n)])
    velocities = np.zeros((n, 3))
    velocities[:, 0] = speed_A_per_fs / units.fs
    atoms.set_velocities(velocities)
    return atoms


def ramp(start, per_step, from_step=0):
    return lambda s: 0.0 if s < from_step else start + per_step * (s - from_step)


def run_monitor(calc, levels, actions, steps=20, tmp_path=None, atoms=None, **kwargs):
    atoms = atoms if atoms is not None else drifting_atoms()
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    monitor = UncertaintyMonitor(atoms, levels, actions, output_dir=tmp_path, **kwargs)
    monitor.attach(dyn)
    stop = None
    try:
        dyn.run(steps)
    except ThresholdExceeded as exc:
        stop = exc
    monitor.close()
    return monitor, stop, atoms, dyn


FORCE_LEVELS = TrustLevels(forces_lo_eV_per_A=0.1, forces_hi_eV_per_A=0.2)


def test_measured_sigma_matches_the_prescribed_values():
    calc = ScheduledCalc(energy_sigma=lambda s: 0.001 * s, force_sigma=lambda s: 0.01 * s)
    monitor, stop, atoms, _ = run_monitor(calc, FORCE_LEVELS, [], steps=5)
    assert stop is None
    steps = [r.step for r in monitor.records]
    assert steps == [0, 1, 2, 3, 4, 5]
    for r in monitor.records:
        assert r.energy_uncertainty_per_atom_eV == pytest.approx(0.001 * r.step, abs=1e-12)
        assert r.energy_uncertainty_eV == pytest.approx(0.001 * r.step * len(atoms), abs=1e-12)
        assert r.max_forces_uncertainty_eV_per_A == pytest.approx(0.01 * r.step, abs=1e-12)
        assert r.time_fs == pytest.approx(1.0 * r.step)
    assert atoms.info[K.MAX_FORCES_UNCERTAINTY] == pytest.approx(0.05)
    assert atoms.info["md_step"] == 5


def test_stop_fires_at_the_first_crossing_and_names_the_quantity():
    # σ_F = 0.03·step: 0.09 at step 3 (trusted), 0.12 at step 4 (candidate)
    calc = ScheduledCalc(force_sigma=lambda s: 0.03 * s)
    monitor, stop, _, dyn = run_monitor(calc, FORCE_LEVELS, [ActionConfig(kind="stop")])
    assert stop is not None and stop.step == 4 and dyn.nsteps == 4
    assert stop.quantity == "max_forces_uncertainty_eV_per_A"
    assert stop.value == pytest.approx(0.12) and stop.threshold == pytest.approx(0.1)
    assert stop.level == "candidate"
    assert monitor.stop.reason == "stop"


def test_failed_level_and_high_threshold_never_fires():
    calc = ScheduledCalc(force_sigma=lambda s: 0.03 * s)
    monitor, stop, _, _ = run_monitor(calc, FORCE_LEVELS, [ActionConfig(kind="stop",
                                                                         level="failed")])
    assert stop.step == 7 and stop.level == "failed"  # 0.21 ≥ hi = 0.2
    assert stop.threshold == pytest.approx(0.2)
    quiet = TrustLevels(forces_lo_eV_per_A=10.0, energy_per_atom_lo_eV=10.0)
    monitor, stop, _, _ = run_monitor(ScheduledCalc(force_sigma=lambda s: 0.03 * s), quiet,
                                      [ActionConfig(kind="stop")], steps=15)
    assert stop is None and len(monitor.records) == 16
    assert {r.level for r in monitor.records} == {"trusted"}


def test_energy_levels_are_per_atom():
    # σ_E per atom 0.01 eV (total 0.04 eV for 4 atoms): trusted for lo = 0.02 eV/atom, although
    # the total σ is above it.
    calc = ScheduledCalc(energy_sigma=lambda s: 0.01)
    levels = TrustLevels(energy_per_atom_lo_eV=0.02)
    monitor, stop, _, _ = run_monitor(calc, levels, [ActionConfig(kind="stop")], steps=5)
    assert stop is None
    levels = TrustLevels(energy_per_atom_lo_eV=0.009)
    monitor, stop, _, _ = run_monitor(ScheduledCalc(energy_sigma=lambda s: 0.01), levels,
                                      [ActionConfig(kind="stop")], steps=5)
    assert stop.step == 0 and stop.quantity == "energy_uncertainty_per_atom_eV"


def test_patience_needs_consecutive_steps():
    # candidate at 5, 6, trusted at 7, candidate from 8 on: patience 3 fires at step 10
    pattern = {5, 6} | set(range(8, 40))
    calc = ScheduledCalc(force_sigma=lambda s: 0.15 if s in pattern else 0.05)
    _, stop, _, _ = run_monitor(calc, FORCE_LEVELS,
                                [ActionConfig(kind="stop", patience_steps=3)])
    assert stop.step == 10
    _, stop, _, _ = run_monitor(ScheduledCalc(force_sigma=lambda s: 0.15 if s in pattern
                                              else 0.05),
                                FORCE_LEVELS, [ActionConfig(kind="stop", patience_steps=1)])
    assert stop.step == 5


def test_save_respects_minimum_spacing_and_writes_sigma(tmp_path):
    calc = ScheduledCalc(force_sigma=ramp(0.11, 0.0, from_step=3),
                         energy_sigma=lambda s: 0.001)
    monitor, stop, _, _ = run_monitor(
        calc, FORCE_LEVELS, [ActionConfig(kind="save", min_spacing_steps=4)], steps=12,
        tmp_path=tmp_path)
    assert stop is None
    frames = ase.io.read(tmp_path / "candidates.extxyz", ":")
    assert [f.info["md_step"] for f in frames] == [3, 7, 11]
    assert monitor.saved == {"candidates.extxyz": 3}
    for frame in frames:
        assert frame.info["trust_level"] == "candidate"
        assert frame.info[K.MAX_FORCES_UNCERTAINTY] == pytest.approx(0.11)
        assert frame.info[K.ENERGY_UNCERTAINTY_PER_ATOM] == pytest.approx(0.001)
        assert frame.info[K.ENERGY_ENSEMBLE].shape == (M,)
        assert frame.arrays[K.FORCES_UNCERTAINTY].shape == (4, 3)
        assert frame.arrays[K.FORCES_ENSEMBLE].shape == (4, 3 * M)
        assert frame.calc is None  # predictions are not written as labels


def test_save_candidates_only_excludes_failed_frames(tmp_path):
    # candidate at steps 2..4, failed from 5 on
    calc = ScheduledCalc(force_sigma=lambda s: 0.0 if s < 2 else (0.15 if s < 5 else 0.3))
    run_monitor(calc, FORCE_LEVELS,
                [ActionConfig(kind="save", include_worse=False),
                 ActionConfig(kind="save", level="failed")], steps=7, tmp_path=tmp_path)
    candidates = ase.io.read(tmp_path / "candidates.extxyz", ":")
    failed = ase.io.read(tmp_path / "failed.extxyz", ":")
    assert [f.info["md_step"] for f in candidates] == [2, 3, 4]
    assert [f.info["md_step"] for f in failed] == [5, 6, 7]


def test_log_action_writes_events(tmp_path):
    calc = ScheduledCalc(force_sigma=lambda s: 0.15 if s >= 6 else 0.0)
    monitor, _, _, _ = run_monitor(calc, FORCE_LEVELS, [ActionConfig(kind="log")], steps=9,
                                   tmp_path=tmp_path)
    lines = (tmp_path / "events.log").read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("step 6 ")
    assert "candidate" in lines[0] and "max σ_F = 0.15" in lines[0]
    assert [e.step for e in monitor.events] == [6, 7, 8, 9]


def test_rollback_restores_the_last_trusted_frame(tmp_path):
    # trusted up to step 6, candidate 7..9, failed at 10
    calc = ScheduledCalc(force_sigma=lambda s: 0.0 if s <= 6 else (0.15 if s < 10 else 0.3))
    positions = {}

    def remember(event):
        positions[event.step] = event.atoms.positions.copy()

    start = drifting_atoms()
    trusted_positions = start.positions + 6 * 1.0 * start.get_velocities() * units.fs
    monitor, stop, atoms, _ = run_monitor(
        calc, FORCE_LEVELS,
        [ActionConfig(kind="rollback", level="failed"),
         ActionConfig(kind="callback", callback="remember")],
        tmp_path=tmp_path, atoms=start, callbacks={"remember": remember})
    assert stop.step == 10 and stop.level == "failed"
    assert monitor.stop.reason == "rollback" and monitor.stop.frame_step == 6
    np.testing.assert_allclose(atoms.positions, trusted_positions, atol=1e-12)
    assert not np.allclose(atoms.positions, positions[10])
    saved = ase.io.read(tmp_path / "rollback.extxyz")
    assert saved.info["md_step"] == 6 and saved.info["trust_level"] == "trusted"
    np.testing.assert_allclose(saved.positions, trusted_positions, atol=1e-8)


def test_callback_gets_events_and_can_stop_the_run():
    seen = []

    def callback(event):
        seen.append((event.step, event.record.level))
        if event.step == 9:
            raise ThresholdExceeded(event.step, "custom", 1.0, 0.5, "candidate")

    calc = ScheduledCalc(force_sigma=lambda s: 0.15 if s >= 6 else 0.0)
    monitor, stop, _, _ = run_monitor(
        calc, FORCE_LEVELS, [ActionConfig(kind="callback", callback=callback,
                                          min_spacing_steps=3)])
    assert seen == [(6, "candidate"), (9, "candidate")]
    assert stop.step == 9 and stop.quantity == "custom"
    assert monitor.stop.reason == "callback"


def test_unknown_callback_name_is_a_config_error():
    from shallow_ensembles.errors import ConfigError

    with pytest.raises(ConfigError, match=r"actions\[0\]\.callback"):
        UncertaintyMonitor(drifting_atoms(), FORCE_LEVELS,
                           [ActionConfig(kind="callback", callback="nope")])


def test_force_interval_computes_member_forces_every_k_steps():
    calc = ScheduledCalc(force_sigma=lambda s: 0.15 if s >= 4 else 0.0)
    monitor, stop, _, _ = run_monitor(calc, FORCE_LEVELS, [ActionConfig(kind="stop")],
                                      settings=MonitorConfig(force_interval=3))
    # steps 4 and 5 have no force σ: the first force step at the level is 6
    assert stop.step == 6
    measured = [r.step for r in monitor.records if r.max_forces_uncertainty_eV_per_A is not None]
    assert measured == [0, 3, 6] and calc.member_calls == 3
    assert [r.complete for r in monitor.records] == [True, False, False, True, False, False, True]


def test_partial_steps_act_on_energy_exceedances():
    calc = ScheduledCalc(energy_sigma=lambda s: 0.02 if s >= 4 else 0.0)
    levels = TrustLevels(energy_per_atom_lo_eV=0.01, forces_lo_eV_per_A=0.1)
    _, stop, _, _ = run_monitor(calc, levels, [ActionConfig(kind="stop")],
                                settings=MonitorConfig(force_interval=3))
    assert stop.step == 4 and stop.quantity == "energy_uncertainty_per_atom_eV"


def test_relative_force_sigma():
    forces = np.zeros((4, 3))
    forces[:, 2] = 1.0  # ‖F̄_i‖ = 1 eV/Å everywhere
    calc = ScheduledCalc(force_sigma=lambda s: 0.1 * s, forces=forces)
    settings = MonitorConfig(relative_epsilon_eV_per_A=1.0, relative_forces_lo=0.24)
    monitor, stop, _, _ = run_monitor(calc, TrustLevels(), [ActionConfig(kind="stop")],
                                      settings=settings)
    # relative σ = 0.1·step / (1 + 1): 0.2 at step 4, 0.25 ≥ 0.24 at step 5
    assert stop.step == 5 and stop.quantity == "max_relative_forces_uncertainty"
    assert monitor.records[4].max_relative_forces_uncertainty == pytest.approx(0.2)


# --- guard -------------------------------------------------------------------------------------
def test_guard_stops_on_nan_forces_and_saves_the_last_good_frame(tmp_path):
    calc = ScheduledCalc(nan_at=5)
    monitor, stop, _, _ = run_monitor(calc, FORCE_LEVELS, [], tmp_path=tmp_path,
                                      guard=GuardConfig())
    assert stop.step == 5 and stop.level == "guard" and stop.quantity == "non_finite_forces"
    assert monitor.stop.reason == "guard" and monitor.stop.frame_step == 4
    last = ase.io.read(tmp_path / "last_good.extxyz")
    assert last.info["md_step"] == 4 and np.isfinite(last.positions).all()


def test_last_good_frame_at_a_guard_stop_is_never_failed(tmp_path):
    # σ_F = 0.05·step crosses the failed level (0.2) at step 4; NaN forces at step 7
    calc = ScheduledCalc(force_sigma=lambda s: 0.05 * s, nan_at=7)
    monitor, stop, _, _ = run_monitor(calc, FORCE_LEVELS, [], tmp_path=tmp_path,
                                      guard=GuardConfig())
    assert stop.step == 7 and monitor.stop.frame_step == 3
    last = ase.io.read(tmp_path / "last_good.extxyz")
    assert last.info["md_step"] == 3 and last.info["trust_level"] == "candidate"


def test_guard_stops_on_a_close_contact():
    # two atoms approaching head on: d(n) = 3.05 − 0.1 n Å, below 0.5 Å first at n = 26
    atoms = Atoms("H2", positions=[[0, 0, 0], [3.05, 0, 0]])
    atoms.set_velocities([[0.05 / units.fs, 0, 0], [-0.05 / units.fs, 0, 0]])
    monitor, stop, _, _ = run_monitor(ScheduledCalc(), FORCE_LEVELS, [], steps=40, atoms=atoms,
                                      guard=GuardConfig(min_distance_A=0.5))
    assert stop.step == 26 and stop.quantity == "min_distance_A"
    assert stop.value == pytest.approx(0.45) and stop.threshold == 0.5
    step, frame = monitor.last_good
    assert step == 25 and frame.get_distance(0, 1) == pytest.approx(0.55)


def test_guard_bounds_the_mean_force():
    forces = np.zeros((4, 3))
    forces[2, 0] = 60.0
    calc = ScheduledCalc(forces=forces)
    _, stop, _, _ = run_monitor(calc, FORCE_LEVELS, [], guard=GuardConfig(
        max_force_eV_per_A=50.0))
    assert stop.step == 0 and stop.quantity == "max_force_eV_per_A" and stop.value == 60.0


def test_guard_catches_nan_positions_refused_by_the_calculator(tmp_path):
    # with checks every 100 steps, the NaN force of step 3 is integrated into NaN positions
    # and the calculator refuses them at step 4: the guard still stops and keeps step 0
    calc = ScheduledCalc(nan_at=3)
    atoms = drifting_atoms()
    protocol = {"dynamics": {"kind": "velocity_verlet", "timestep_fs": 1.0},
                "guard": {"check_interval": 100},
                "logging": {"plot": False, "trajectory_interval": 0}}
    result = run_protocol(atoms, calc, protocol, tmp_path, steps=10)
    assert result.stop_reason == "guard" and result.stop.step == 4
    assert result.stop.exception.quantity == "non_finite_positions"
    assert result.stop.frame_step == 0
    assert ase.io.read(tmp_path / "last_good.extxyz").info["md_step"] == 0
