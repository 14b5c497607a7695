"""Uncertainty-aware molecular dynamics with ASE, committee reweighting and member-wise propagation.

- :class:`UncertaintyMonitor`: an ASE observer measuring σ_E/atom and max σ_F every step, with
  DP-GEN trust levels and actions (log, save, stop, rollback, callback; patience, spacing) and a
  guard against NaN/inf, huge forces and close contacts.
- :func:`run_md`: builds any supported ASE integrator from an :class:`MDConfig` protocol and
  writes the σ table, trajectory, member energies, ``model_devi.out`` and a σ plot.
- :func:`reweight`: ⟨A⟩ ± σ over the committee by direct or cumulant reweighting (Imbalzano
  et al. 2021), with the effective sample size.
- :func:`propagate`: any quantity derived from member energies, member by member → mean ± σ.
"""

from .config import (
    ActionConfig,
    DynamicsConfig,
    GuardConfig,
    LoggingConfig,
    MDConfig,
    MonitorConfig,
    load_md_config,
)
from .monitor import MonitorEvent, StepRecord, StopInfo, UncertaintyMonitor
from .propagate import propagate, propagate_energies
from .reweight import ReweightResult, read_energies, reweight
from .run import MDResult, build_dynamics, run_md

__all__ = [
    "ActionConfig",
    "DynamicsConfig",
    "GuardConfig",
    "LoggingConfig",
    "MDConfig",
    "MDResult",
    "MonitorConfig",
    "MonitorEvent",
    "ReweightResult",
    "StepRecord",
    "StopInfo",
    "UncertaintyMonitor",
    "build_dynamics",
    "load_md_config",
    "propagate",
    "propagate_energies",
    "read_energies",
    "reweight",
    "run_md",
]
