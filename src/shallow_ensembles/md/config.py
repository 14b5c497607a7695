"""Schemas of an MD protocol: dynamics, trust levels, monitor, actions, guard and logging.

One frozen dataclass per section, defaults and attribute docstrings together (the same
declaration validates YAML through :func:`shallow_ensembles.config.from_dict`, prints the
template with ``shallow-ensembles md --print-defaults`` and documents the options). Numbers with a
unit carry it in their name. A protocol file looks like::

    dynamics: {kind: langevin, timestep_fs: 0.5, temperature_K: 300, friction_per_fs: 0.01}
    steps: 20000
    levels: {forces_lo_eV_per_A: 0.15, forces_hi_eV_per_A: 0.35}
    actions:
      - {kind: save, level: candidate, min_spacing_steps: 20, include_worse: false}
      - {kind: rollback, level: failed, patience_steps: 3}
    guard: {max_force_eV_per_A: 50, min_distance_A: 0.5}
    logging: {trajectory_interval: 10, model_devi: true}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import load_config, to_dict
from ..errors import ConfigError
from ..thresholds import CANDIDATE, FAILED, ActionLevel, TrustLevels
from .actions import action_class
from .dynamics import KIND_OPTIONS, integrator


@dataclass(frozen=True)
class DynamicsConfig:
    """The ASE integrator, selected by ``kind`` (the table of :mod:`.dynamics`); options a kind
    does not use must stay null."""

    kind: str = "velocity_verlet"
    """Integrator: velocity_verlet, langevin, bussi, nose_hoover_chain, isotropic_mtk_npt,
    langevin_baoab (``md/dynamics.py``)."""
    timestep_fs: float = 0.5
    """Integration time step, fs."""
    temperature_K: float | None = None
    """Thermostat target temperature, K (start of the ramp when final_temperature_K is set)."""
    final_temperature_K: float | None = None
    """Target temperature at the last step, K: a linear ramp from temperature_K over the run
    (langevin, bussi, langevin_baoab)."""
    initial_temperature_K: float | None = None
    """Draw Maxwell-Boltzmann momenta at this temperature, K; null: at temperature_K when the
    structure has no momenta, else keep the structure's momenta."""
    friction_per_fs: float | None = None
    """Langevin friction coefficient, 1/fs (langevin)."""
    tdamp_fs: float | None = None
    """Thermostat time constant, fs (bussi taut, Nose-Hoover/MTK tdamp, BAOAB T_tau)."""
    pressure_bar: float | None = None
    """External pressure, bar (isotropic_mtk_npt; langevin_baoab switches to hydrostatic NPT)."""
    pdamp_fs: float | None = None
    """Barostat time constant, fs (isotropic_mtk_npt pdamp, BAOAB P_tau; BAOAB default
    20 tdamp_fs)."""
    seed: int | None = None
    """Seed of the random numbers (initial momenta, Langevin and Bussi noise); null: random."""

    def __post_init__(self):
        if self.timestep_fs <= 0:
            raise ConfigError("dynamics.timestep_fs", f"expected > 0, got {self.timestep_fs}")
        entry = integrator(self.kind)
        for name in (*KIND_OPTIONS, "final_temperature_K"):
            value = getattr(self, name)
            if value is not None and name not in entry.options:
                raise ConfigError(f"dynamics.{name}",
                                  f"not used by kind '{self.kind}'; remove it or set null")
        for name in sorted(entry.needs):
            if getattr(self, name) is None:
                raise ConfigError(f"dynamics.{name}", f"required for kind '{self.kind}'")
        for name in ("temperature_K", "final_temperature_K", "initial_temperature_K"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"dynamics.{name}", f"expected >= 0, got {value}")
        for name in ("friction_per_fs", "tdamp_fs", "pdamp_fs"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"dynamics.{name}", f"expected > 0, got {value}")

    @property
    def thermostatted(self) -> bool:
        """Whether the integrator has a target temperature."""
        return "temperature_K" in integrator(self.kind).uses


@dataclass(frozen=True)
class MonitorConfig:
    """What the uncertainty monitor measures every step (levels live in ``levels``)."""

    force_interval: int = 1
    """Compute member forces (the force σ) every k steps; 0 never. σ_E costs nothing and is
    measured every step."""
    relative_epsilon_eV_per_A: float | None = None
    """ε of the relative force σ, max_i ‖σ(F_i)‖ / (‖F̄_i‖ + ε), eV/Å; null: not computed."""
    relative_forces_lo: float | None = None
    """Relative force σ (dimensionless) at and above which a frame is a candidate."""
    relative_forces_hi: float | None = None
    """Relative force σ (dimensionless) at and above which a frame has failed."""

    def __post_init__(self):
        if self.force_interval < 0:
            raise ConfigError("monitor.force_interval",
                              f"expected >= 0, got {self.force_interval}")
        eps = self.relative_epsilon_eV_per_A
        if eps is not None and eps <= 0:
            raise ConfigError("monitor.relative_epsilon_eV_per_A", f"expected > 0, got {eps}")
        for name in ("relative_forces_lo", "relative_forces_hi"):
            if getattr(self, name) is not None and eps is None:
                raise ConfigError(f"monitor.{name}", "needs monitor.relative_epsilon_eV_per_A")
        lo, hi = self.relative_forces_lo, self.relative_forces_hi
        if lo is not None and hi is not None and hi < lo:
            raise ConfigError("monitor.relative_forces_hi",
                              f"hi ({hi}) must not be below lo ({lo})")

    @property
    def relative_levels(self) -> TrustLevels | None:
        """The relative force levels as a :class:`TrustLevels` on its force slot."""
        if self.relative_forces_lo is None and self.relative_forces_hi is None:
            return None
        return TrustLevels(forces_lo_eV_per_A=self.relative_forces_lo,
                           forces_hi_eV_per_A=self.relative_forces_hi)


DEFAULT_SAVE_FILES = {CANDIDATE: "candidates.extxyz", FAILED: "failed.extxyz"}


@dataclass(frozen=True)
class ActionConfig:
    """One action taken when frames reach a trust level.

    The action sees frames whose level is ``level`` or worse (only ``level`` itself with
    ``include_worse: false``), counts consecutive such steps, and fires once the count reaches
    ``patience_steps``, then at most once every ``min_spacing_steps``.
    """

    kind: str = "log"
    """log (a line in events.log), save (append the frame with its σ to an extxyz file), stop,
    rollback (restore the last trusted frame, then stop) or callback (a Python function): the
    classes of ``md/actions.py``."""
    level: ActionLevel = CANDIDATE
    """Trust level that triggers the action."""
    patience_steps: int = 1
    """Consecutive monitored steps at the level before acting (1: at once)."""
    min_spacing_steps: int = 0
    """Fewest steps between two firings of this action (save: minimum spacing of frames)."""
    include_worse: bool = True
    """Also act on worse frames (failed for a candidate action); false keeps DP-GEN's candidate
    window lo ≤ σ < hi, e.g. for saving candidates."""
    filename: str | None = None
    """save: file in the output folder; null: candidates.extxyz or failed.extxyz."""
    callback: str | Callable | None = None
    """callback: name of a function passed to run_md(callbacks={name: fn}), or the function;
    it gets a MonitorEvent and may raise ThresholdExceeded to stop the run."""

    def __post_init__(self):
        # Paths use "actions[]": the loader fills in the index of the failing action.
        kind = action_class(self.kind)
        if self.patience_steps < 1:
            raise ConfigError("actions[].patience_steps",
                              f"expected >= 1, got {self.patience_steps}")
        if self.min_spacing_steps < 0:
            raise ConfigError("actions[].min_spacing_steps",
                              f"expected >= 0, got {self.min_spacing_steps}")
        for name in ("filename", "callback"):
            value = getattr(self, name)
            if value is None and name in kind.required:
                raise ConfigError(f"actions[].{name}", f"required for kind '{self.kind}'")
            if value is not None and name not in kind.options:
                raise ConfigError(f"actions[].{name}", f"not used by kind '{self.kind}'")

    @property
    def save_filename(self) -> str:
        """File name of a save action."""
        return self.filename or DEFAULT_SAVE_FILES[self.level]


@dataclass(frozen=True)
class GuardConfig:
    """Stops a run that has gone unphysical, and writes the last good frame (last_good.extxyz)."""

    enabled: bool = True
    """Check every check_interval steps for NaN/inf energies, forces, σ and positions."""
    max_force_eV_per_A: float | None = 50.0
    """Largest allowed mean force on an atom, ‖F̄_i‖, eV/Å; null: no bound."""
    min_distance_A: float | None = 0.5
    """Smallest allowed interatomic distance, Å; null: no bound."""
    check_interval: int = 1
    """Check every k steps."""

    def __post_init__(self):
        if self.check_interval < 1:
            raise ConfigError("guard.check_interval", f"expected >= 1, got {self.check_interval}")
        for name in ("max_force_eV_per_A", "min_distance_A"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"guard.{name}", f"expected > 0 or null, got {value}")


@dataclass(frozen=True)
class LoggingConfig:
    """What a run writes next to resolved_config.yaml."""

    interval: int = 1
    """Write a line of the step table (md.log) every k steps."""
    trajectory_interval: int = 10
    """Append a frame to trajectory.extxyz (σ and energy_ensemble in its info) and a row to
    committee_energies.dat every k steps; 0: neither."""
    trajectory_member_forces: bool = False
    """Also keep the member forces (forces_ensemble, N × 3M per frame) in trajectory.extxyz;
    σ_F per atom is always kept. Saved candidate frames always carry them."""
    model_devi: bool = False
    """Write DeePMD's model_devi.out (ddof=0 deviations) on steps with member forces."""
    plot: bool = True
    """Draw σ against time with the levels into sigma.png at the end of the run."""

    def __post_init__(self):
        if self.interval < 1:
            raise ConfigError("logging.interval", f"expected >= 1, got {self.interval}")
        if self.trajectory_interval < 0:
            raise ConfigError("logging.trajectory_interval",
                              f"expected >= 0, got {self.trajectory_interval}")


@dataclass(frozen=True)
class MDConfig:
    """An uncertainty-aware MD protocol (``shallow-ensembles md PROTOCOL.yaml``)."""

    dynamics: DynamicsConfig = DynamicsConfig()
    """The integrator and its thermostat or barostat."""
    steps: int = 1000
    """Number of MD steps (the command line's --steps overrides it)."""
    levels: TrustLevels = TrustLevels()
    """Trust levels: trusted < lo ≤ candidate < hi ≤ failed, on σ_E/atom and max σ_F."""
    monitor: MonitorConfig = MonitorConfig()
    """What is measured and how often."""
    actions: tuple[ActionConfig, ...] = ()
    """Actions, each {kind: log|save|stop|rollback|callback, level: candidate|failed,
    patience_steps: 1, min_spacing_steps: 0, include_worse: true, filename: null, callback: null},
    e.g. [{kind: save, include_worse: false}, {kind: stop, level: failed}]."""
    guard: GuardConfig = GuardConfig()
    """Stops on NaN/inf, huge forces and close contacts."""
    logging: LoggingConfig = LoggingConfig()
    """Output files and intervals."""

    def __post_init__(self):
        if self.steps < 0:
            raise ConfigError("steps", f"expected >= 0, got {self.steps}")
        needs_forces = self.levels.needs_forces or self.monitor.relative_levels is not None
        if needs_forces and self.monitor.force_interval == 0:
            raise ConfigError("monitor.force_interval",
                              "force levels are set but member forces are never computed; "
                              "set force_interval >= 1")
        for i, action in enumerate(self.actions):
            if not isinstance(action, ActionConfig):
                raise ConfigError(f"actions[{i}]", f"expected an action, got {action!r}")


def load_md_config(source: MDConfig | dict | str | Path,
                   overrides: Sequence[str] = ()) -> MDConfig:
    """Validate an MD protocol given as a config, a mapping or a YAML file, with ``--set``
    overrides (:func:`~shallow_ensembles.config.load_config`).

    Raises
    ------
    ConfigError naming the dotted key (``dynamics.friction_per_fs``, ``actions[1].kind``).
    """
    return load_config(MDConfig, source, overrides)


def resolved_dict(config: MDConfig) -> dict[str, Any]:
    """YAML-safe dictionary of ``config`` (callback functions are written by name)."""
    data = to_dict(config)
    for action, raw in zip(config.actions, data["actions"], strict=True):
        if callable(action.callback):
            raw["callback"] = getattr(action.callback, "__qualname__", repr(action.callback))
    return data


def replace(config: MDConfig, **changes) -> MDConfig:
    """A copy of ``config`` with top-level fields changed (validated again)."""
    return dataclasses.replace(config, **changes)
