"""The uncertainty monitor: an ASE observer that measures σ every step, decides and acts.

One call per step, in order: guard (NaN/inf, huge forces, close contacts) → **measure**
(:func:`~shallow_ensembles.md.measure.measure`: σ copied into ``atoms.info``/``atoms.arrays``,
the frame's level) → sinks (table, trajectory, ...) → **record** (the records, the first
candidate and failed steps, the last good and last trusted frames) → **decide and act** (each
:class:`~shallow_ensembles.md.actions.Action` decides with ``due`` and acts with ``fire``: log,
save, callback, then stop and rollback, which raise
:class:`~shallow_ensembles.errors.ThresholdExceeded`). A partial step (no force σ) leaves the
patience counters and the last trusted frame alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms, units

from ..calculator import attach_uncertainty
from ..errors import ThresholdExceeded
from ..thresholds import CANDIDATE, FAILED, LEVEL_ORDER, TRUSTED, TrustLevels
from .actions import build_actions
from .config import ActionConfig, GuardConfig, MonitorConfig
from .guard import Guard, Violation
from .measure import STALE_ARRAYS, StepRecord, measure

logger = logging.getLogger(__name__)

LAST_GOOD_FILE = "last_good.extxyz"
ROLLBACK_FILE = "rollback.extxyz"
EVENTS_FILE = "events.log"


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
        self.actions = build_actions(actions, callbacks)
        """The actions in firing order."""
        self._keep_trusted = any(a.keeps_trusted_frames for a in self.actions)
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

    def _step(self) -> int:
        return int(self.dynamics.nsteps) if self.dynamics is not None else self._calls - 1

    def _time_fs(self) -> float:
        if self.dynamics is None:
            return float("nan")
        return float(self.dynamics.get_time() / units.fs)

    # --- the observer ------------------------------------------------------------------------
    def __call__(self) -> None:
        """Guard, measure, record, decide and act for the current frame (called by the
        dynamics)."""
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
        for action in self.actions:
            if action.due(record):
                event = MonitorEvent(record.step, action.config.kind, action.config.level,
                                     record, self.atoms, self)
                self.events.append(event)
                action.fire(event)

    def measure(self, step: int) -> StepRecord:
        """σ of the current frame, copied into ``atoms.info``/``atoms.arrays``; its record."""
        target = self.target_temperature(step) if self.target_temperature else None
        return measure(self.atoms, step, self._time_fs(), self.levels, self.settings, target)

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

    # --- what actions do through the monitor -------------------------------------------------
    def exceeded(self, record: StepRecord) -> ThresholdExceeded:
        """The signal naming the quantity that put the frame at its level."""
        use_hi = record.level == FAILED
        rel = self.settings.relative_levels
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

    def stopped(self, reason: str, step: int, exc: ThresholdExceeded,
                frame_step: int | None = None) -> None:
        """Record that the run stops at ``step`` for ``reason`` (and log it)."""
        self.stop = StopInfo(reason, step, exc, frame_step)
        self.log(f"step {step}: {reason}: {exc}")

    def save_frame(self, filename: str) -> None:
        """Append the current frame with every σ to ``filename`` (member forces are computed
        now if this step had none)."""
        attach_uncertainty(self.atoms, forces=True)
        self._write_frame(filename, self.atoms.copy(), append=True)
        self.saved[filename] = self.saved.get(filename, 0) + 1

    def rollback(self) -> int | None:
        """Restore the last trusted frame into the live Atoms; its step (None: none kept)."""
        if self.last_trusted is None:
            return None
        step, frame = self.last_trusted
        atoms = self.atoms
        atoms.set_cell(frame.cell, scale_atoms=False)
        atoms.set_positions(frame.positions, apply_constraint=False)
        atoms.set_momenta(frame.get_momenta(), apply_constraint=False)
        atoms.info.update(frame.info)
        for key in STALE_ARRAYS:
            if key in atoms.arrays:
                del atoms.arrays[key]
        for key in STALE_ARRAYS:
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
        self.stopped("guard", exc.step, exc, frame_step)
        return self.stop

    # --- files -------------------------------------------------------------------------------
    def _write_frame(self, filename: str, atoms: Atoms, append: bool) -> None:
        if self.output_dir is None:
            return
        atoms.calc = None  # structures and σ only: predictions must not pass for labels
        ase.io.write(self.output_dir / filename, atoms, format="extxyz", append=append)

    def log(self, line: str) -> None:
        """A line in the log and in ``events.log``."""
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
