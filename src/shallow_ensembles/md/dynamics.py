"""The integrator registry: ``dynamics.kind`` → an ASE dynamics, its options and its ramp.

An integrator is one :class:`Integrator` entry: a ``build(atoms, config, rng)`` function, the
kind-specific options of :class:`~shallow_ensembles.md.config.DynamicsConfig` it uses and those
it needs, and, when its target temperature can move during a run, the setter the temperature
ramp (``final_temperature_K``) calls after each step. ``DynamicsConfig`` validates against this
table and :func:`build_dynamics` builds from it; adding an integrator is one
:func:`register_integrator` call (``tests/test_md_registries.py`` registers a toy one).

=====================  ==============================================  ==================
kind                   ASE class                                       needs
=====================  ==============================================  ==================
velocity_verlet        VelocityVerlet (NVE)                            --
langevin               Langevin(fixcm=False) (NVT)                     T, friction
bussi                  Bussi (NVT, stochastic velocity rescaling)      T, tdamp
nose_hoover_chain      NoseHooverChainNVT                              T, tdamp
isotropic_mtk_npt      IsotropicMTKNPT                                 T, tdamp, P, pdamp
langevin_baoab         LangevinBAOAB (NVT; NPT with pressure_bar)      T, tdamp
=====================  ==============================================  ==================
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from ase import Atoms, units

from ..errors import ConfigError, DataError

KIND_OPTIONS = ("temperature_K", "friction_per_fs", "tdamp_fs", "pressure_bar", "pdamp_fs")
"""Options of ``DynamicsConfig`` that only some kinds use (``final_temperature_K`` belongs to
every kind with a ramp setter)."""


@dataclasses.dataclass(frozen=True)
class Integrator:
    """One registered dynamics kind."""

    name: str
    """The YAML name (``dynamics.kind``)."""
    build: Callable[[Atoms, Any, np.random.Generator], Any]
    """``build(atoms, config, rng) -> ASE dynamics``; ``config`` is the ``DynamicsConfig``."""
    uses: frozenset[str] = frozenset()
    """Options of :data:`KIND_OPTIONS` it reads (the others must stay null)."""
    needs: frozenset[str] = frozenset()
    """Options it cannot run without."""
    set_temperature: Callable[[Any, float], None] | None = None
    """``set_temperature(dynamics, K)``: moves the thermostat target (enables
    ``final_temperature_K``); None: no ramp."""

    @property
    def options(self) -> frozenset[str]:
        """Every kind-specific option it accepts."""
        return self.uses | ({"final_temperature_K"} if self.set_temperature else set())


INTEGRATORS: dict[str, Integrator] = {}
"""Registered dynamics kinds by name."""


def register_integrator(integrator: Integrator) -> Integrator:
    """Add ``integrator`` to :data:`INTEGRATORS` (replacing one of the same name)."""
    unknown = (integrator.uses | integrator.needs) - set(KIND_OPTIONS)
    if unknown or not integrator.needs <= integrator.uses:
        raise ValueError(f"{integrator.name}: options must be among {KIND_OPTIONS} and every "
                         f"needed option used (got {sorted(unknown)})")
    INTEGRATORS[integrator.name] = integrator
    return integrator


def integrator(name: str) -> Integrator:
    """The registered kind ``name``; a ConfigError listing the kinds otherwise."""
    if name not in INTEGRATORS:
        raise ConfigError("dynamics.kind", f"expected one of {sorted(INTEGRATORS)}, got {name!r}")
    return INTEGRATORS[name]


def build_dynamics(atoms: Atoms, config, total_steps: int,
                   rng: np.random.Generator | None = None):
    """The ASE dynamics of ``config`` on ``atoms`` (after drawing initial momenta if asked).

    Parameters
    ----------
    atoms : Atoms with a calculator
    config : the ``DynamicsConfig``
    total_steps : length of the run (the temperature ramp spans it)
    rng : random numbers for momenta and stochastic thermostats

    Returns
    -------
    (dynamics, target) with ``target(step) → K`` the thermostat target temperature (None
    without a target temperature).
    """
    rng = rng if rng is not None else np.random.default_rng()
    initial_momenta(atoms, config, rng)
    dyn = integrator(config.kind).build(atoms, config, rng)
    start, end = config.temperature_K, config.final_temperature_K
    if start is None:
        return dyn, None
    if end is None:
        return dyn, lambda step: start
    span = max(total_steps, 1)
    return dyn, lambda step: start + (end - start) * min(max(step, 0) / span, 1.0)


class TemperatureRamp:
    """Observer moving the thermostat target to ``target(step + 1)`` after each step."""

    def __init__(self, dyn, kind: str, target: Callable[[int], float]):
        self.dyn, self.target = dyn, target
        self.setter = integrator(kind).set_temperature

    def __call__(self) -> None:
        self.setter(self.dyn, self.target(self.dyn.nsteps + 1))


def initial_momenta(atoms: Atoms, config, rng: np.random.Generator) -> None:
    """Draw Maxwell-Boltzmann momenta at ``initial_temperature_K`` (or at ``temperature_K``
    when the structure has none), without centre-of-mass motion."""
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    temperature = config.initial_temperature_K
    if temperature is None and config.temperature_K is not None and not np.any(
            atoms.get_momenta()):
        temperature = config.temperature_K
    if temperature is None:
        return
    if temperature == 0:
        atoms.set_momenta(np.zeros((len(atoms), 3)))
        return
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    if len(atoms) > 1:
        Stationary(atoms, preserve_temperature=True)


def require_cell(atoms: Atoms, kind: str) -> None:
    """A DataError unless ``atoms`` is periodic in 3-D (barostats)."""
    if not atoms.pbc.all() or abs(atoms.cell.volume) < 1e-9:
        raise DataError(f"dynamics kind '{kind}' with a pressure needs a 3-D periodic cell",
                        key="cell")


# --- the built-in kinds ------------------------------------------------------------------------
def _velocity_verlet(atoms, config, rng):
    from ase.md.verlet import VelocityVerlet

    return VelocityVerlet(atoms, timestep=config.timestep_fs * units.fs)


def _langevin(atoms, config, rng):
    from ase.md.langevin import Langevin

    return Langevin(atoms, config.timestep_fs * units.fs, temperature_K=config.temperature_K,
                    friction=config.friction_per_fs / units.fs, fixcm=False, rng=rng)


def _bussi(atoms, config, rng):
    from ase.md.bussi import Bussi

    if atoms.get_kinetic_energy() <= 1e-12:
        raise ConfigError("dynamics.initial_temperature_K",
                          "bussi needs nonzero initial momenta; set a temperature > 0")
    return Bussi(atoms, config.timestep_fs * units.fs, temperature_K=config.temperature_K,
                 taut=config.tdamp_fs * units.fs, rng=rng)


def _set_bussi(dyn, temperature: float) -> None:
    dyn.temp = units.kB * temperature
    dyn.target_kinetic_energy = 0.5 * dyn.temp * dyn.ndof


def _nose_hoover_chain(atoms, config, rng):
    from ase.md.nose_hoover_chain import NoseHooverChainNVT

    return NoseHooverChainNVT(atoms, config.timestep_fs * units.fs,
                              temperature_K=config.temperature_K,
                              tdamp=config.tdamp_fs * units.fs)


def _isotropic_mtk_npt(atoms, config, rng):
    from ase.md.nose_hoover_chain import IsotropicMTKNPT

    require_cell(atoms, config.kind)
    return IsotropicMTKNPT(atoms, config.timestep_fs * units.fs,
                           temperature_K=config.temperature_K,
                           pressure_au=config.pressure_bar * units.bar,
                           tdamp=config.tdamp_fs * units.fs, pdamp=config.pdamp_fs * units.fs)


def _langevin_baoab(atoms, config, rng):
    from ase.md.langevinbaoab import LangevinBAOAB

    npt = config.pressure_bar is not None
    if npt:
        require_cell(atoms, config.kind)
    pdamp_fs = config.pdamp_fs if config.pdamp_fs is not None else 20 * config.tdamp_fs
    with warnings.catch_warnings():
        # ASE announces its barostat-mass heuristic (from P_tau) on every construction.
        warnings.filterwarnings("ignore", message="Using heuristic P_mass")
        return LangevinBAOAB(
            atoms, config.timestep_fs * units.fs, temperature_K=config.temperature_K,
            T_tau=config.tdamp_fs * units.fs,
            # ASE's sign convention: a stress is minus a pressure.
            externalstress=-config.pressure_bar * units.bar if npt else None,
            hydrostatic=npt, P_tau=pdamp_fs * units.fs if npt else None, rng=rng)


_T, _TDAMP = "temperature_K", "tdamp_fs"
for _entry in (
    Integrator("velocity_verlet", _velocity_verlet),
    Integrator("langevin", _langevin, frozenset({_T, "friction_per_fs"}),
               frozenset({_T, "friction_per_fs"}),
               lambda dyn, t: dyn.set_temperature(temperature_K=t)),
    Integrator("bussi", _bussi, frozenset({_T, _TDAMP}), frozenset({_T, _TDAMP}), _set_bussi),
    Integrator("nose_hoover_chain", _nose_hoover_chain, frozenset({_T, _TDAMP}),
               frozenset({_T, _TDAMP})),
    Integrator("isotropic_mtk_npt", _isotropic_mtk_npt,
               frozenset({_T, _TDAMP, "pressure_bar", "pdamp_fs"}),
               frozenset({_T, _TDAMP, "pressure_bar", "pdamp_fs"})),
    Integrator("langevin_baoab", _langevin_baoab,
               frozenset({_T, _TDAMP, "pressure_bar", "pdamp_fs"}), frozenset({_T, _TDAMP}),
               lambda dyn, t: dyn.set_temperature(t)),
):
    register_integrator(_entry)
