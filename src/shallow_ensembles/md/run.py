"""Run an uncertainty-monitored MD protocol with ASE: ``run_md``.

Outputs in ``output_dir``:

==========================  ============================================================
file                        content
==========================  ============================================================
``resolved_config.yaml``    the validated protocol, every default filled in
``md.log``                  the per-step table (:class:`~shallow_ensembles.md.logs.TableLog`)
``trajectory.extxyz``       frames every ``logging.trajectory_interval`` steps, mean energy
                            and forces, σ and ``energy_ensemble`` (M,) in ``info``
``committee_energies.dat``  member total energies of those frames, frames × M, eV
``model_devi.out``          DeePMD's model deviations (``logging.model_devi``)
``candidates.extxyz``       frames saved by ``save`` actions (no energies or forces: they
                            are predictions, not labels; σ in info/arrays)
``rollback.extxyz``         the last trusted frame restored by a ``rollback``
``last_good.extxyz``        the last frame that passed the guard, after a guard stop
``events.log``              one line per ``log`` action and per stop
``final.extxyz``            the structure and momenta at the end (after a rollback: the
                            restored frame)
``sigma.png``               σ against time with the levels
``summary.yaml``            :class:`MDResult` as YAML
==========================  ============================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
import yaml
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from ..errors import ConfigError, DataError, ThresholdExceeded
from ..thresholds import CANDIDATE, FAILED
from .config import MDConfig, replace, resolved_dict
from .dynamics import TemperatureRamp, build_dynamics
from .logs import ModelDeviLog, TableLog, TrajectoryLog
from .monitor import StopInfo, UncertaintyMonitor

FILES = {
    "config": "resolved_config.yaml", "table": "md.log", "trajectory": "trajectory.extxyz",
    "committee_energies": "committee_energies.dat", "model_devi": "model_devi.out",
    "final": "final.extxyz", "plot": "sigma.png", "summary": "summary.yaml",
}


@dataclass(frozen=True)
class MDResult:
    """How a run went; also written to ``summary.yaml``."""

    steps_run: int
    """MD steps integrated (the last step reached, even after a rollback)."""
    stop_reason: str
    """completed, stop, rollback, callback or guard."""
    message: str
    """One line saying why the run ended."""
    saved: dict[str, int]
    """Frames written per file by save actions."""
    first_candidate: dict[str, Any] | None
    """Record of the first step at or above the candidate level (step, time_fs,
    temperature_K, target_temperature_K, σ...)."""
    first_failed: dict[str, Any] | None
    """Record of the first failed step."""
    stop: StopInfo | None = field(default=None, repr=False)
    output_dir: Path | None = None
    files: dict[str, str] = field(default_factory=dict)
    """Output files that exist, by role."""

    @property
    def candidates_saved(self) -> int:
        """Frames saved by every save action together."""
        return sum(self.saved.values())

    def to_dict(self) -> dict[str, Any]:
        """YAML-safe summary."""
        return {
            "steps_run": self.steps_run, "stop_reason": self.stop_reason,
            "message": self.message, "saved": dict(self.saved),
            "candidates_saved": self.candidates_saved,
            "first_candidate": _plain(self.first_candidate),
            "first_failed": _plain(self.first_failed),
            "stop_step": None if self.stop is None else self.stop.step,
            "restored_step": None if self.stop is None else self.stop.frame_step,
            "files": dict(self.files),
        }


def run_md(atoms: Atoms, calculator: BaseCalculator, config: MDConfig, output_dir: str | Path,
           steps: int | None = None, *, callbacks: Mapping[str, Callable] | None = None,
           progress: bool = False) -> MDResult:
    """Integrate ``atoms`` with the protocol's dynamics under an :class:`UncertaintyMonitor`.

    ``atoms`` is modified in place (positions, momenta, cell, info) and gets the calculator.

    Parameters
    ----------
    atoms : the starting structure (its momenta are kept unless the protocol draws new ones)
    calculator : an ASE calculator with ensemble results (e.g.
        :class:`~shallow_ensembles.calculator.ShallowEnsembleCalculator`)
    config : the protocol (:func:`~shallow_ensembles.md.config.load_md_config` reads files and
        mappings)
    output_dir : folder of the outputs (created); see the module docstring
    steps : number of steps, overriding ``config.steps``
    callbacks : functions named by ``callback`` actions
    progress : show a tqdm progress bar on stderr

    Returns
    -------
    MDResult

    Raises
    ------
    ConfigError for an invalid protocol (naming the dotted key); DataError for a structure the
    model cannot evaluate.
    """
    if not isinstance(config, MDConfig):
        raise TypeError(f"expected an MDConfig (load_md_config reads files and mappings), got "
                        f"{type(config).__name__}")
    if steps is not None:
        if steps < 0:
            raise ConfigError("steps", f"expected >= 0, got {steps}")
        config = replace(config, steps=int(steps))
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / FILES["config"]).write_text(
        yaml.safe_dump(resolved_dict(config), sort_keys=False, allow_unicode=True))
    atoms.calc = calculator
    rng = np.random.default_rng(config.dynamics.seed)
    dyn, target = build_dynamics(atoms, config.dynamics, config.steps, rng)

    log = config.logging
    sinks: list = [TableLog(output / FILES["table"], log.interval,
                            relative=config.monitor.relative_epsilon_eV_per_A is not None,
                            target_temperature=target is not None)]
    if log.trajectory_interval:
        sinks.append(TrajectoryLog(output / FILES["trajectory"],
                                   output / FILES["committee_energies"], log.trajectory_interval,
                                   member_forces=log.trajectory_member_forces))
    if log.model_devi:
        sinks.append(ModelDeviLog(output / FILES["model_devi"], log.interval))
    monitor = UncertaintyMonitor(atoms, config.levels, config.actions, settings=config.monitor,
                                 guard=config.guard, output_dir=output, callbacks=callbacks,
                                 sinks=sinks, target_temperature=target)
    monitor.attach(dyn)
    if config.dynamics.final_temperature_K is not None:
        dyn.attach(TemperatureRamp(dyn, config.dynamics.kind, target))
    _integrate(dyn, monitor, config.steps, progress)

    final = atoms.copy()
    ase.io.write(output / FILES["final"], final, format="extxyz")
    if log.plot and monitor.records:
        from ..plots.md import plot_uncertainty

        series = monitor.series()
        plot_uncertainty(series["time_fs"], series["energy_uncertainty_per_atom_eV"],
                         series["max_forces_uncertainty_eV_per_A"], output / FILES["plot"],
                         config.levels, series["max_relative_forces_uncertainty"],
                         config.monitor.relative_levels,
                         title=f"{config.dynamics.kind}, {len(atoms)} atoms")
    result = _result(dyn, monitor, output)
    (output / FILES["summary"]).write_text(
        yaml.safe_dump(result.to_dict(), sort_keys=False, allow_unicode=True))
    return result


def _integrate(dyn, monitor: UncertaintyMonitor, steps: int, progress: bool) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, disable=not progress, unit="step", dynamic_ncols=True)
    try:
        for _ in dyn.irun(steps):
            bar.update(dyn.nsteps - bar.n)
            if monitor.records:
                bar.set_postfix_str(monitor.records[-1].level, refresh=False)
    except ThresholdExceeded:
        if monitor.stop is None:  # raised by an observer that is not ours
            raise
    except DataError:
        # The calculator refuses NaN positions inside dyn.step(), before any observer runs.
        if monitor.guard is None or np.isfinite(dyn.atoms.positions).all():
            raise
        bad = float((~np.isfinite(dyn.atoms.positions)).sum())
        monitor.stop_from_guard(
            ThresholdExceeded(dyn.nsteps + 1, "non_finite_positions", bad, 1.0, "guard"))
    finally:
        bar.update(dyn.nsteps - bar.n)
        bar.close()
        monitor.close()


def _result(dyn, monitor: UncertaintyMonitor, output: Path) -> MDResult:
    stop = monitor.stop
    if stop is None:
        reason, message = "completed", f"completed {dyn.nsteps} steps"
    else:
        reason = stop.reason
        who = {"stop": "a stop action", "rollback": "a rollback action",
               "callback": "a callback", "guard": "the guard"}.get(reason, reason)
        message = f"stopped by {who} at {stop.exception}"
        if stop.reason == "rollback":
            message += (f"; restored the trusted frame of step {stop.frame_step}"
                        if stop.frame_step is not None else "; no trusted frame to restore")
        if stop.reason == "guard" and stop.frame_step is not None:
            message += f"; last good frame (step {stop.frame_step}) in last_good.extxyz"
    files = {role: name for role, name in FILES.items() if (output / name).exists()}
    for name in list(monitor.saved) + ["rollback.extxyz", "last_good.extxyz", "events.log"]:
        if (output / name).exists():
            files[Path(name).stem] = name
    return MDResult(
        steps_run=int(dyn.nsteps), stop_reason=reason, message=message,
        saved=dict(monitor.saved), first_candidate=_as_dict(monitor.first[CANDIDATE]),
        first_failed=_as_dict(monitor.first[FAILED]), stop=stop, output_dir=output,
        files=files,
    )


def read_structure(path: str | Path, index: int | str = -1) -> Atoms:
    """The starting structure of a run: one frame of an ASE-readable file (default: the last).

    Positions, cell, pbc and momenta are kept (so ``final.extxyz`` restarts a run); the file's
    energies, forces and labels are dropped.

    Raises
    ------
    DataError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", file=path)
    try:
        atoms = ase.io.read(path, index=index)
    except Exception as err:  # noqa: BLE001 - ASE raises many types for unreadable files
        raise DataError(f"ASE could not read it ({type(err).__name__}: {err})", file=path) from err
    if not isinstance(atoms, Atoms) or len(atoms) == 0:
        raise DataError("no structure with atoms in it", file=path)
    if not np.all(np.isfinite(atoms.positions)):
        raise DataError("positions contain NaN or inf", file=path, key="positions")
    start = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                  pbc=atoms.pbc, momenta=atoms.get_momenta() if atoms.has("momenta") else None)
    return start


def _as_dict(record) -> dict[str, Any] | None:
    return None if record is None else record.as_dict()


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value
