"""Committee reweighting of MD averages (Imbalzano et al., J. Chem. Phys. 154, 074102 (2021)).

A trajectory sampled on the mean potential V̄ = (1/M) Σ_m V_m, with every member energy V_m logged
per frame, gives the average of an observable A under each member by reweighting, and the spread
of those averages is the uncertainty of ⟨A⟩ (docs/method.md, "Reweighting"):

- direct: ⟨A⟩_m = Σ_t w_tm A_t / Σ_t w_tm, with w_tm = exp(−β h_tm), h_tm = V_m(t) − V̄(t);
- cumulant (second-order cumulant expansion): ⟨A⟩_m ≈ ⟨A⟩ − β (⟨A h_m⟩ − ⟨A⟩⟨h_m⟩).

The estimate is the mean over members of ⟨A⟩_m and its uncertainty their standard deviation
(ddof=1, like every σ of this project; i-PI's ``i-pi-committee-reweight`` prints ddof=0). The
weights degenerate as systems grow: the Kish effective sample size ESS_m = (Σ_t w_tm)² / Σ_t w_tm²
is reported for each member and a :class:`ReweightWarning` is issued when the smallest falls
below ``min_ess_fraction`` of the frames.

Symbols: T frames, M members, β = 1 / (k_B · temperature_K).

Inputs read here: this package's ``committee_energies.dat`` (frames × M, eV), its
``trajectory.extxyz`` (``energy_ensemble`` in each frame's info, eV), and i-PI ``committee_pot``
extras files (Hartree, converted to eV).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from ase import Atoms, units

from .. import conventions as K
from ..data.ipi_outputs import read_committee_pot
from ..errors import DataError

Method = Literal["direct", "cumulant"]
AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660
"""Mass density: 1 amu/Å³ in g/cm³."""


class ReweightWarning(UserWarning):
    """The reweighting is unreliable (too few effective samples)."""


@dataclass(frozen=True)
class ReweightResult:
    """⟨A⟩ ± σ over a committee; observable shape ``(...)`` is the per-frame shape of A."""

    mean: np.ndarray
    """Mean over members of ⟨A⟩_m, shape (...), unit of A."""
    std: np.ndarray
    """Standard deviation over members of ⟨A⟩_m (ddof=1), shape (...), unit of A."""
    member_averages: np.ndarray
    """⟨A⟩_m, shape (M, ...)."""
    unweighted: np.ndarray
    """Plain trajectory average ⟨A⟩ on V̄, shape (...)."""
    ess: np.ndarray
    """Kish effective sample size of each member's direct weights, shape (M,), in frames."""
    n_frames: int
    method: str
    temperature_K: float

    @property
    def min_ess(self) -> float:
        """Smallest effective sample size over members, frames."""
        return float(self.ess.min()) if self.ess.size else 0.0


def reweight(energies: np.ndarray, observable, temperature_K: float,
             method: Method = "direct", *, frames: Sequence[Atoms] | None = None,
             min_ess_fraction: float = 0.1) -> ReweightResult:
    """⟨A⟩ ± σ of an observable over the committee, by direct or cumulant reweighting.

    Parameters
    ----------
    energies : shape (T, M), eV; member potential energies V_m per frame (sampled on V̄)
    observable : shape (T,) or (T, ...) array of A per frame, or a callable ``A(atoms)``
        evaluated on ``frames``
    temperature_K : temperature of the sampling, K
    method : ``"direct"`` (exponential weights) or ``"cumulant"`` (second-order expansion)
    frames : the T structures, for a callable observable
    min_ess_fraction : warn when the smallest ESS is below this fraction of T

    Returns
    -------
    ReweightResult

    Raises
    ------
    DataError for mismatched shapes or non-finite energies.
    """
    energies = np.asarray(energies, dtype=float)
    if energies.ndim != 2 or energies.shape[0] < 1 or energies.shape[1] < 1:
        raise DataError(f"expected member energies of shape (frames, M), got {energies.shape}",
                        key="energies")
    if not np.all(np.isfinite(energies)):
        raise DataError("member energies contain NaN or inf", key="energies")
    if temperature_K <= 0:
        raise DataError(f"temperature_K must be > 0, got {temperature_K}", key="temperature_K")
    if method not in ("direct", "cumulant"):
        raise DataError(f"method must be 'direct' or 'cumulant', got {method!r}", key="method")
    values = evaluate_observable(observable, frames)
    n_frames, n_members = energies.shape
    if values.shape[0] != n_frames:
        raise DataError(f"the observable has {values.shape[0]} frames, the energies {n_frames}",
                        key="observable")
    beta = 1.0 / (units.kB * temperature_K)
    h = energies - energies.mean(axis=1, keepdims=True)  # (T, M), eV
    weights = _direct_weights(beta, h)
    ess = 1.0 / (weights**2).sum(axis=0)
    flat = values.reshape(n_frames, -1)  # (T, P)
    average = flat.mean(axis=0)
    if method == "direct":
        members = weights.T @ flat  # (M, P)
    else:
        covariance = (h - h.mean(axis=0)).T @ (flat - average) / n_frames  # (M, P)
        members = average[None, :] - beta * covariance
    shape = values.shape[1:]
    std = (members.std(axis=0, ddof=K.DDOF) if n_members > K.DDOF
           else np.zeros(members.shape[1]))
    result = ReweightResult(
        mean=members.mean(axis=0).reshape(shape), std=std.reshape(shape),
        member_averages=members.reshape((n_members, *shape)),
        unweighted=average.reshape(shape), ess=ess, n_frames=n_frames, method=method,
        temperature_K=float(temperature_K),
    )
    if result.min_ess < min_ess_fraction * n_frames:
        warnings.warn(
            f"reweighting ({method}): smallest effective sample size {result.min_ess:.1f} of "
            f"{n_frames} frames (< {min_ess_fraction:g} of them); the member weights are "
            "degenerate and ⟨A⟩_m unreliable" + (
                "; prefer the cumulant approximation or a longer run" if method == "direct"
                else "; the cumulant expansion is also far from its range of validity"),
            ReweightWarning, stacklevel=2)
    return result


def _direct_weights(beta: float, h: np.ndarray) -> np.ndarray:
    """Normalised weights exp(−β h) over frames, (T, M); shifted by the max for stability."""
    log_w = -beta * h
    log_w -= log_w.max(axis=0, keepdims=True)
    w = np.exp(log_w)
    return w / w.sum(axis=0, keepdims=True)


def evaluate_observable(observable, frames: Sequence[Atoms] | None = None) -> np.ndarray:
    """Observable values per frame as a float array (T, ...): an array, or a callable on frames."""
    if callable(observable):
        if frames is None:
            raise DataError("a callable observable needs the frames", key="frames")
        values = np.asarray([np.asarray(observable(atoms), dtype=float) for atoms in frames])
    else:
        values = np.asarray(observable, dtype=float)
    if values.ndim == 0:
        raise DataError("the observable needs one value per frame", key="observable")
    return values


# --- observables -------------------------------------------------------------------------------
def mean_energy(energies: np.ndarray) -> np.ndarray:
    """V̄ per frame, shape (T,), eV, from member energies (T, M)."""
    return np.asarray(energies, dtype=float).mean(axis=1)


def density(atoms: Atoms) -> float:
    """Mass density of a periodic frame, g/cm³."""
    volume = atoms.get_volume()
    if volume <= 0:
        raise DataError("density needs a cell with a volume", key="cell")
    return float(atoms.get_masses().sum() / volume * AMU_PER_A3_TO_G_PER_CM3)


def rdf(frames: Sequence[Atoms], rmax_A: float, nbins: int,
        elements: tuple[int | str, int | str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Radial distribution function of each frame (ASE's ``ase.geometry.rdf.get_rdf``).

    Parameters
    ----------
    frames : T periodic structures; the cell must enclose a sphere of radius ``rmax_A``
    rmax_A : largest distance, Å
    nbins : number of bins
    elements : two elements for a partial RDF (LAMMPS normalisation), None for the total

    Returns
    -------
    (r, g): bin centres, shape (nbins,), Å; g(r) per frame, shape (T, nbins), dimensionless —
    an observable for :func:`reweight`.
    """
    from ase.geometry.rdf import get_rdf

    edges = np.linspace(0.0, rmax_A, nbins + 1)
    g = np.array([get_rdf(atoms, rmax_A, nbins, elements=elements, no_dists=True)
                  for atoms in frames])
    return 0.5 * (edges[1:] + edges[:-1]), g


# --- readers -------------------------------------------------------------------------------
def read_energies(path: str | Path, unit: Literal["auto", "eV", "Ha"] = "auto",
                  ) -> tuple[np.ndarray, list[Atoms] | None]:
    """Member energies per frame from an MD output, in eV.

    Parameters
    ----------
    path : ``trajectory.extxyz`` (or any ASE-readable file with ``energy_ensemble`` in each
        frame's info), ``committee_energies.dat`` (frames × M, eV), or an i-PI ``committee_pot``
        extras file (Hartree)
    unit : energy unit of a text file; ``auto``: Hartree for i-PI extras (``#EXTRAS`` headers),
        eV otherwise

    Returns
    -------
    (energies, frames): shape (T, M), eV; the structures when the file holds them, else None.

    Raises
    ------
    DataError naming the file and frame.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", file=path)
    if path.suffix.lower() in (".xyz", ".extxyz", ".traj"):
        import ase.io

        try:
            frames = ase.io.read(path, ":")
        except Exception as err:  # noqa: BLE001 - ASE raises many types
            raise DataError(f"ASE could not read it ({type(err).__name__}: {err})",
                            file=path) from err
        rows = []
        for i, atoms in enumerate(frames):
            if K.ENERGY_ENSEMBLE not in atoms.info:
                raise DataError(f"no '{K.ENERGY_ENSEMBLE}' in the frame's info (was it written "
                                "by shallow-ensembles md?)", file=path, frame=i,
                                key=K.ENERGY_ENSEMBLE)
            rows.append(np.atleast_1d(np.asarray(atoms.info[K.ENERGY_ENSEMBLE], dtype=float)))
        return _stack(rows, path), frames
    text = path.read_text()
    if "#EXTRAS" in text.upper().replace(" ", ""):
        energies = read_committee_pot(path)  # converted from Hartree
        return (energies / units.Hartree if unit == "eV" else energies), None
    energies = _plain_table(text, path)
    return (energies * units.Hartree if unit == "Ha" else energies), None


def _plain_table(text: str, path: Path) -> np.ndarray:
    rows = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            try:
                rows.append(np.asarray([float(x) for x in line.replace(",", " ").split()]))
            except ValueError as err:
                raise DataError(f"not a table of numbers: {line[:60]!r}", file=path,
                                frame=len(rows)) from err
    if not rows:
        raise DataError("no committee energies found", file=path)
    return _stack(rows, path)


def _stack(rows: list[np.ndarray], source) -> np.ndarray:
    n_members = rows[0].size
    for i, row in enumerate(rows):
        if row.size != n_members:
            raise DataError(f"{row.size} member energies, frame 0 has {n_members}",
                            file=source, frame=i)
    return np.vstack(rows)


def observable_from_property(name: str, energies: np.ndarray,
                             frames: Sequence[Atoms] | None) -> tuple[np.ndarray, str]:
    """Per-frame values of a named property: ``energy`` (V̄, eV), ``energy_per_atom`` (eV/atom),
    ``density`` (g/cm³), ``volume`` (Å³); returns (values (T,), unit)."""
    if name == "energy":
        return mean_energy(energies), "eV"
    if frames is None:
        raise DataError(f"property '{name}' needs the structures: pass a trajectory "
                        "(trajectory.extxyz) as the energies file", key=name)
    if name == "energy_per_atom":
        return mean_energy(energies) / np.array([len(a) for a in frames]), "eV/atom"
    if name == "density":
        return np.array([density(a) for a in frames]), "g/cm³"
    if name == "volume":
        return np.array([a.get_volume() for a in frames]), "Å³"
    raise DataError(f"unknown property '{name}' (known: energy, energy_per_atom, density, volume)",
                    key=name)


PROPERTIES: tuple[str, ...] = ("energy", "energy_per_atom", "density", "volume")
