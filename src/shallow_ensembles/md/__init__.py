"""Uncertainty-aware molecular dynamics with ASE, committee reweighting and member-wise propagation.

- :class:`UncertaintyMonitor`: an ASE observer measuring σ_E/atom and max σ_F every step, with
  DP-GEN trust levels and actions (log, save, stop, rollback, callback; patience, spacing) and a
  guard against NaN/inf, huge forces and close contacts.
- :func:`run_md`: builds the ASE integrator of an :class:`MDConfig` protocol and writes the σ
  table, trajectory, member energies, ``model_devi.out`` and a σ plot.
- Registries: :data:`INTEGRATORS` (``dynamics.kind``, :func:`register_integrator`) and
  :data:`ACTIONS` (``actions[k].kind``, :func:`register_action`).
- :func:`reweight`: ⟨A⟩ ± σ over the committee by direct or cumulant reweighting (Imbalzano
  et al. 2021), with the effective sample size.
- :func:`propagate`: any quantity derived from member energies, member by member → mean ± σ.
"""

from .actions import ACTIONS, Action, register_action
from .config import (
    ActionConfig,
    DynamicsConfig,
    GuardConfig,
    LoggingConfig,
    MDConfig,
    MonitorConfig,
    load_md_config,
)
from .dynamics import INTEGRATORS, Integrator, build_dynamics, register_integrator
from .measure import StepRecord
from .monitor import MonitorEvent, StopInfo, UncertaintyMonitor
from .propagate import propagate, propagate_energies
from .reweight import ReweightResult, read_energies, reweight
from .run import MDResult, run_md

__all__ = [
    "ACTIONS",
    "INTEGRATORS",
    "Action",
    "ActionConfig",
    "DynamicsConfig",
    "GuardConfig",
    "Integrator",
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
    "register_action",
    "register_integrator",
    "reweight",
    "run_md",
]
