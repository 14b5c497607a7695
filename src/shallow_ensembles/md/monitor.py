"""The uncertainty monitor: an ASE observer that measures σ every step, classifies and acts.

Quantities (standard deviations with ddof=1 of the calibrated ensemble, see
``shallow_ensembles.conventions``):

===================================  =======  ==================================================
quantity                             unit     definition
===================================  =======  ==================================================
energy_uncertainty_per_atom          eV/atom  σ_E / N, every step (free with the forward pass)
max_forces_uncertainty               eV/Å     max_i ‖σ(F_i)‖, ‖σ(F_i)‖ = sqrt(Σ_xyz σ²) (DeePMD's
                                              max_devi_f definition, but ddof=1), every
                                              force_interval steps (needs member forces)
max_relative_forces_uncertainty      --       max_i ‖σ(F_i)‖ / (‖F̄_i‖ + ε), with the force σ
===================================  =======  ==================================================

Levels follow DP-GEN: trusted < lo ≤ candidate < hi ≤ failed; a frame's level is the worst over
its quantities (:class:`~shallow_ensembles.thresholds.TrustLevels`). On a step without member
forces the level comes from σ_E alone: such a *partial* step can prove that a level was
reached, never that it was not, so it leaves the patience counters and the last trusted frame
alone.

Order within one call: guard → measure and copy σ into ``atoms.info``/``atoms.arrays`` → sinks
(table, trajectory, ...) → remember the frame → actions (log, save, callback, then stop and
rollback, which raise :class:`~shallow_ensembles.errors.ThresholdExceeded`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
from ase import Atoms, units

from .. import conventions as K
from ..calculator import attach_uncertainty
from ..errors import ConfigError, ThresholdExceeded
from ..thresholds import CANDIDATE, FAILED, LEVEL_ORDER, TRUSTED, TrustLevels
from .config import ActionConfig, GuardConfig, MonitorConfig
from .guard import Guard, Violation

logger = logging.getLogger(__name__)

# Keys written into atoms.info by the monitor, besides attach_uncertainty's.
STEP_KEY = "md_step"  # () | MD step of the frame
TIME_KEY = "md_time_fs"  # () | fs
LEVEL_KEY = "trust_level"  # () | trusted, candidate or failed
RELATIVE_KEY = "max_relative_forces_uncertainty"  # () | dimensionless
TEMPERATURE_KEY = "temperature_K"  # () | K, instantaneous kinetic temperature

LAST_GOOD_FILE = "last_good.extxyz"
ROLLBACK_FILE = "rollback.extxyz"
EVENTS_FILE = "events.log"

_STALE_INFO = (K.MAX_FORCES_UNCERTAINTY, K.STRESS_UNCERTAINTY, K.STRESS_ENSEMBLE, RELATIVE_KEY)
_STALE_ARRAYS = (K.FORCES_UNCERTAINTY, K.FORCES_UNCERTAINTY_NORM, K.FORCES_ENSEMBLE)
_ORDER = {"log": 0, "save": 1, "callback": 2, "stop": 3, "rollback": 3}


@dataclass(frozen=True)
class StepRecord:
    """What the monitor measured at one step (σ: standard deviations, ddof=1, calibrated)."""

    step: int
    time_fs: float
    temperature_K: float
    """Instantaneous kinetic temperature, K."""
    target_temperature_K: float | None
    """Thermostat target at this step, K (None without a thermostat)."""
    energy_eV: float
    """Mean potential energy, eV."""
    total_energy_eV: float
    """Mean potential plus kinetic energy, eV."""
    energy_uncertainty_eV: float
    energy_uncertainty_per_atom_eV: float
    max_forces_uncertainty_eV_per_A: float | None
    """None on steps without member forces."""
    max_relative_forces_uncertainty: float | None
    level: str
    complete: bool
    """Whether every quantity with a level was measured at this step."""


@dataclass(frozen=True)
class MonitorEvent:
    """An action that fired; callbacks receive it."""

    step: int
    action: str
    level: str
    """Level of the action that fired (the frame's own level is ``record.level``)."""
    record: StepRecord
    atoms: Atoms = field(repr=False)
    """The live Atoms of the run (σ in its info and arrays)."""
    monitor: UncertaintyMonitor = field(repr=False)


@dataclass(frozen=True)
class StopInfo:
    """Why and where a run stopped on purpose."""

    reason: str
    """stop, rollback, callback or guard."""
    step: int
    exception: ThresholdExceeded
    frame_step: int | None = None
    """rollback: the step of the restored trusted frame; guard: the step of the last good
    frame written (None when there was none)."""


@dataclass
class _Action:
    config: ActionConfig
    function: Callable | None = None
    count: int = 0
    last_fired: int | None = None


class UncertaintyMonitor:
    """ASE observer that measures the ensemble σ every step and acts on trust levels.

    Parameters
    ----------
    atoms : the Atoms being integrated; its calculator must provide ``energy_uncertainty``,
        ``energy_ensemble``, ``forces_uncertainty`` and ``forces_ensemble`` (e.g.
        :class:`~shallow_ensembles.calculator.ShallowEnsembleCalculator`)
    levels : trust levels on σ_E/atom (eV/atom) and max σ_F (eV/Å)
    actions : what to do at each level
    settings : force interval and the relative force σ (and its levels)
    guard : stop on NaN/inf, huge forces or close contacts; None disables it
    output_dir : folder of the saved frames and events.log; None writes no files
    callbacks : functions named by ``callback`` actions
    sinks : ``sink(atoms, record)`` writers called every step before the actions
    dynamics : the ASE dynamics, for the step number and time (:meth:`attach` sets it)
    target_temperature : ``step → K`` of the thermostat target, for the records

    Examples
    --------
    >>> dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs)
    >>> monitor = UncertaintyMonitor(atoms, TrustLevels(forces_lo_eV_per_A=0.15),
    ...                              [ActionConfig(kind="stop")])
    >>> monitor.attach(dyn)
    >>> try:
    ...     dyn.run(1000)
    ... except ThresholdExceeded as stop:
    ...     print(stop.step, stop.quantity)
    """

    def __init__(self, atoms: Atoms, levels: TrustLevels | None = None,
                 actions: Iterable[ActionConfig] = (), *, settings: MonitorConfig | None = None,
                 guard: GuardConfig | None = None, output_dir: str | Path | None = None,
                 callbacks: Mapping[str, Callable] | None = None,
                 sinks: Sequence[Callable[[Atoms, StepRecord], None]] = (), dynamics=None,
                 target_temperature: Callable[[int], float | None] | None = None):
        self.atoms = atoms
        self.levels = levels if levels is not None else TrustLevels()
        self.settings = settings if settings is not None else MonitorConfig()
        self.guard = Guard(guard) if guard is not None and guard.enabled else None
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.sinks = list(sinks)
        self.dynamics = dynamics
        self.target_temperature = target_temperature
        self._relative_levels = self.settings.relative_levels
        self._needs_forces = self.levels.needs_forces or self._relative_levels is not None
        self._actions = sorted((self._resolve(i, a, callbacks or {})
                                for i, a in enumerate(actions)),
                               key=lambda a: _ORDER[a.config.kind])
        self._keep_trusted = any(a.config.kind == "rollback" for a in self._actions)
        self._calls = 0
        self._events_file = None
        self.records: list[StepRecord] = []
        """Every measured step, in order."""
        self.events: list[MonitorEvent] = []
        """Every action that fired."""
        self.first: dict[str, StepRecord | None] = {CANDIDATE: None, FAILED: None}
        """First step at or above each level (failed frames count as candidates too)."""
        self.saved: dict[str, int] = {}
        """Frames written per file name by save actions."""
        self.stop: StopInfo | None = None
        """Set when the monitor stopped the run."""
        self.last_trusted: tuple[int, Atoms] | None = None
        """(step, frame) of the last complete trusted step (kept when a rollback is set)."""
        self.last_good: tuple[int, Atoms] | None = None
        """(step, frame) of the last step checked by the guard and passed, at a level below
        ``failed``."""

    # --- wiring ------------------------------------------------------------------------------
    def attach(self, dynamics, interval: int = 1) -> UncertaintyMonitor:
        """Run before every other observer of ``dynamics`` (so frames are written with σ)."""
        self.dynamics = dynamics
        dynamics.insert_observer(self, position=0, interval=interval)
        return self

    @staticmethod
    def _resolve(index: int, config: ActionConfig, callbacks: Mapping[str, Callable]) -> _Action:
        if not isinstance(config, ActionConfig):
            raise ConfigError(f"actions[{index}]", f"expected an ActionConfig, got {config!r}")
        if config.kind != "callback":
            return _Action(config)
        function = config.callback
        if isinstance(function, str):
            if function not in callbacks:
                known = ", ".join(sorted(callbacks)) or "none were given"
                raise ConfigError(f"actions[{index}].callback",
                                  f"no callback named '{function}' (known: {known})")
            function = callbacks[function]
        if not callable(function):
            raise ConfigError(f"actions[{index}].callback", f"not callable: {function!r}")
        return _Action(config, function)

    def _step(self) -> int:
        return int(self.dynamics.nsteps) if self.dynamics is not None else self._calls - 1

    def _time_fs(self) -> float:
        if self.dynamics is None:
            return float("nan")
        return float(self.dynamics.get_time() / units.fs)

    # --- the observer ------------------------------------------------------------------------
    def __call__(self) -> None:
        """Measure, log and act for the current frame (called by the dynamics)."""
        self._calls += 1
        step = self._step()
        checked = self.guard is not None and step % self.guard.config.check_interval == 0
        if checked:
            violation = self.guard.check(self.atoms)
            if violation is not None:
                self._guard_stop(step, violation)
        record = self.measure(step)
        self.records.append(record)
        for sink in self.sinks:
            sink(self.atoms, record)
        self._remember(record, checked)
        self._act(record)

    def measure(self, step: int) -> StepRecord:
        """σ of the current frame, copied into ``atoms.info``/``atoms.arrays``; its record."""
        atoms = self.atoms
        force_step = self.settings.force_interval > 0 and step % self.settings.force_interval == 0
        for key in _STALE_INFO:
            atoms.info.pop(key, None)
        for key in _STALE_ARRAYS:
            if key in atoms.arrays:
                del atoms.arrays[key]
        attach_uncertainty(atoms, forces=force_step)
        n_atoms = max(len(atoms), 1)
        sigma_e = float(atoms.info[K.ENERGY_UNCERTAINTY])
        max_f = relative = None
        if force_step:
            norm = np.asarray(atoms.arrays[K.FORCES_UNCERTAINTY_NORM])
            max_f = float(norm.max()) if norm.size else 0.0
            eps = self.settings.relative_epsilon_eV_per_A
            if eps is not None:
                mean_norm = np.linalg.norm(atoms.get_forces(), axis=1)
                relative = float((norm / (mean_norm + eps)).max()) if norm.size else 0.0
                atoms.info[RELATIVE_KEY] = relative
        level = self.levels.classify(sigma_e / n_atoms, max_f)
        if self._relative_levels is not None and relative is not None:
            level = _worst(level, self._relative_levels.classify(None, relative))
        epot = float(atoms.get_potential_energy())
        ekin = float(atoms.get_kinetic_energy())
        time_fs = self._time_fs()
        temperature = float(atoms.get_temperature()) if len(atoms) else 0.0
        target = self.target_temperature(step) if self.target_temperature else None
        atoms.info.update({STEP_KEY: step, TIME_KEY: time_fs, LEVEL_KEY: level,
                           TEMPERATURE_KEY: temperature})
        return StepRecord(
            step=step, time_fs=time_fs, temperature_K=temperature,
            target_temperature_K=target, energy_eV=epot, total_energy_eV=epot + ekin,
            energy_uncertainty_eV=sigma_e, energy_uncertainty_per_atom_eV=sigma_e / n_atoms,
            max_forces_uncertainty_eV_per_A=max_f, max_relative_forces_uncertainty=relative,
            level=level, complete=force_step or not self._needs_forces,
        )

    # --- bookkeeping -------------------------------------------------------------------------
    def _remember(self, record: StepRecord, checked: bool) -> None:
        for level in (CANDIDATE, FAILED):
            if self.first[level] is None and LEVEL_ORDER[record.level] >= LEVEL_ORDER[level]:
                self.first[level] = record
        frame = None
        if checked and record.level != FAILED:  # a σ-failed frame is no good frame to keep
            frame = self.atoms.copy()
            self.last_good = (record.step, frame)
        if self._keep_trusted and record.complete and record.level == TRUSTED:
            self.last_trusted = (record.step, frame if frame is not None else self.atoms.copy())

    def _act(self, record: StepRecord) -> None:
        rank = LEVEL_ORDER[record.level]
        for action in self._actions:
            config = action.config
            target = LEVEL_ORDER[config.level]
            hit = rank == target or (config.include_worse and rank > target)
            # A partial step (no force σ) only proves exceedances; an exact-level action also
            # needs to know the frame is not worse, which only the failed level tells.
            known = record.complete or (
                hit and (config.include_worse or rank == LEVEL_ORDER[FAILED]))
            if not known:
                continue
            if not hit:
                action.count = 0
                continue
            action.count += 1
            if action.count < config.patience_steps:
                continue
            if (action.last_fired is not None
                    and record.step - action.last_fired < config.min_spacing_steps):
                continue
            action.last_fired = record.step
            self._fire(action, record)

    def _fire(self, action: _Action, record: StepRecord) -> None:
        config = action.config
        event = MonitorEvent(record.step, config.kind, config.level, record, self.atoms, self)
        self.events.append(event)
        if config.kind == "log":
            self._log(f"step {record.step} ({record.time_fs:.2f} fs): {record.level} frame "
                      f"({_describe(record)})")
        elif config.kind == "save":
            self._save(config.save_filename)
        elif config.kind == "callback":
            try:
                action.function(event)
            except ThresholdExceeded as exc:
                self._stopped("callback", record.step, exc)
                raise
        elif config.kind == "stop":
            exc = self._exceeded(record)
            self._stopped("stop", record.step, exc)
            raise exc
        elif config.kind == "rollback":
            exc = self._exceeded(record)
            frame_step = self._rollback()
            self._stopped("rollback", record.step, exc, frame_step)
            raise exc

    def _exceeded(self, record: StepRecord) -> ThresholdExceeded:
        """The signal naming the quantity that put the frame at its level."""
        use_hi = record.level == FAILED
        rel = self._relative_levels
        rows = [
            ("energy_uncertainty_per_atom_eV", record.energy_uncertainty_per_atom_eV,
             self.levels.energy_per_atom_hi_eV if use_hi else self.levels.energy_per_atom_lo_eV),
            ("max_forces_uncertainty_eV_per_A", record.max_forces_uncertainty_eV_per_A,
             self.levels.forces_hi_eV_per_A if use_hi else self.levels.forces_lo_eV_per_A),
            ("max_relative_forces_uncertainty", record.max_relative_forces_uncertainty,
             None if rel is None else (rel.forces_hi_eV_per_A if use_hi
                                       else rel.forces_lo_eV_per_A)),
        ]
        for name, value, bound in rows:
            if value is not None and bound is not None and value >= bound:
                return ThresholdExceeded(record.step, name, value, bound, record.level)
        return ThresholdExceeded(record.step, "level", float(LEVEL_ORDER[record.level]),
                                 float(LEVEL_ORDER[record.level]), record.level)

    def _stopped(self, reason: str, step: int, exc: ThresholdExceeded,
                 frame_step: int | None = None) -> None:
        self.stop = StopInfo(reason, step, exc, frame_step)
        self._log(f"step {step}: {reason}: {exc}")

    def _save(self, filename: str) -> None:
        # Member forces are computed now if this step had none: saved frames carry every σ.
        attach_uncertainty(self.atoms, forces=True)
        self._write_frame(filename, self.atoms.copy(), append=True)
        self.saved[filename] = self.saved.get(filename, 0) + 1

    def _rollback(self) -> int | None:
        if self.last_trusted is None:
            return None
        step, frame = self.last_trusted
        atoms = self.atoms
        atoms.set_cell(frame.cell, scale_atoms=False)
        atoms.set_positions(frame.positions, apply_constraint=False)
        atoms.set_momenta(frame.get_momenta(), apply_constraint=False)
        atoms.info.update(frame.info)
        for key in _STALE_ARRAYS:
            if key in atoms.arrays:
                del atoms.arrays[key]
        for key in _STALE_ARRAYS:
            if key in frame.arrays:
                atoms.arrays[key] = frame.arrays[key].copy()
        self._write_frame(ROLLBACK_FILE, frame.copy(), append=False)
        return step

    def _guard_stop(self, step: int, violation: Violation) -> None:
        exc = ThresholdExceeded(step, violation.quantity, violation.value, violation.bound,
                                "guard")
        self.stop_from_guard(exc)
        raise exc

    def stop_from_guard(self, exc: ThresholdExceeded) -> StopInfo:
        """Write the last good frame and record a guard stop (also used for calculator errors)."""
        frame_step = None
        if self.last_good is not None:
            frame_step, frame = self.last_good
            self._write_frame(LAST_GOOD_FILE, frame.copy(), append=False)
        self._stopped("guard", exc.step, exc, frame_step)
        return self.stop

    # --- files -------------------------------------------------------------------------------
    def _write_frame(self, filename: str, atoms: Atoms, append: bool) -> None:
        if self.output_dir is None:
            return
        atoms.calc = None  # structures and σ only: predictions must not pass for labels
        ase.io.write(self.output_dir / filename, atoms, format="extxyz", append=append)

    def _log(self, line: str) -> None:
        logger.info(line)
        if self.output_dir is None:
            return
        if self._events_file is None:
            self._events_file = open(self.output_dir / EVENTS_FILE, "w")  # noqa: SIM115
        self._events_file.write(line + "\n")
        self._events_file.flush()

    def close(self) -> None:
        """Close events.log and every sink that has a ``close``."""
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()
        if self._events_file is not None:
            self._events_file.close()
            self._events_file = None

    # --- summaries ---------------------------------------------------------------------------
    def series(self) -> dict[str, np.ndarray]:
        """The records as arrays (None → nan): step, time_fs, sigma_E_per_atom, ... (T,)."""
        def column(name):
            return np.array([np.nan if getattr(r, name) is None else getattr(r, name)
                             for r in self.records], dtype=float)

        return {
            "step": column("step"),
            "time_fs": column("time_fs"),
            "temperature_K": column("temperature_K"),
            "target_temperature_K": column("target_temperature_K"),
            "energy_uncertainty_per_atom_eV": column("energy_uncertainty_per_atom_eV"),
            "max_forces_uncertainty_eV_per_A": column("max_forces_uncertainty_eV_per_A"),
            "max_relative_forces_uncertainty": column("max_relative_forces_uncertainty"),
        }


def _worst(a: str, b: str) -> str:
    return a if LEVEL_ORDER[a] >= LEVEL_ORDER[b] else b


def _describe(record: StepRecord) -> str:
    parts = [f"σ_E/atom = {record.energy_uncertainty_per_atom_eV:.4g} eV"]
    if record.max_forces_uncertainty_eV_per_A is not None:
        parts.append(f"max σ_F = {record.max_forces_uncertainty_eV_per_A:.4g} eV/Å")
    if record.max_relative_forces_uncertainty is not None:
        parts.append(f"max relative σ_F = {record.max_relative_forces_uncertainty:.4g}")
    return ", ".join(parts)


def record_dict(record: StepRecord | None) -> dict[str, Any] | None:
    """Plain dictionary of a record (for summaries)."""
    if record is None:
        return None
    return {name: getattr(record, name) for name in StepRecord.__dataclass_fields__}
