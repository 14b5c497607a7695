"""i-PI driver serving a shallow ensemble as one client of ``<ffcommittee>``.

Three ways to run it (the atomic numbers come from a template structure, e.g. i-PI's init file):

- ``shallow-ensembles ipi-driver --model M --structure S (--unix NAME | --address H --port P)``
- i-PI's own launcher: ``i-pi-py_driver -u -a NAME -m custom -P <this file>
  -o model=M,template=S[,forces_lo_eV_per_A=0.2,candidates=cand.extxyz]``
  (``python -c "import shallow_ensembles.ipi.driver as d; print(d.__file__)"`` prints the path)
- in Python: ``serve(ShallowEnsembleDriver(model=M, template=S), unix="NAME")``

Contract (i-PI's python-driver interface, :meth:`ShallowEnsembleDriver.compute_structure`),
atomic units on both sides, the calibrated ensemble of
:class:`~shallow_ensembles.ShallowEnsembleCalculator` in between:

====================  =========  ========  ===================================================
item                  shape      unit      meaning
====================  =========  ========  ===================================================
``cell`` (in)         (3, 3)     bohr      i-PI's h matrix, cell vectors as **columns**
``pos`` (in)          (N, 3)     bohr      positions, ordered as the template's atoms
energy (out)          ()         Ha        calibrated mean energy Ē
forces (out)          (N, 3)     Ha/bohr   −∂Ē/∂R
virial (out)          (3, 3)     Ha        −V·σ of the mean (zero for a non-periodic template)
extras (out)          JSON str             keys below, for ``<parse_json>true</parse_json>``
====================  =========  ========  ===================================================

Extras keys (i-PI's ``<ffcommittee>`` layout; i-PI does not convert extras, so atomic units):
``committee_pot`` (M,) Ha; ``committee_force`` (M, 3N) Ha/bohr; ``committee_virial`` (M, 9) Ha,
member virials −V·σ_m; ``forces_uncertainty_norm`` (N,) Ha/bohr, per-atom
‖σ(F_i)‖ = sqrt(Σ_xyz σ²) (standard deviation, ddof=1, calibrated). i-PI re-exports the last one as
``committee_forces_uncertainty_norm``. Members are already calibrated (rescaled about the mean by
the model's α): keep i-PI's ``<alpha>`` at 1. By default member forces and virials are the
calibrated force ensemble (α_F); with ``energy_consistent_members`` they are instead the exact
derivatives of the sent (α_E-calibrated) member energies, F̄ + α_E (F_m − F̄), which i-PI's
weighted baseline needs: its force term −2 Ē s_b² cov(E_m, F_m) / (s_b² + σ²)² is the gradient
of the mixing weight only then (the two agree when α_F = α_E).

Candidates: with trust levels set (``energy_per_atom_lo_eV``, ``forces_lo_eV_per_A`` and the
``_hi_`` ones, :class:`~shallow_ensembles.thresholds.TrustLevels` semantics), every evaluation
whose level is not ``trusted`` is appended to ``candidates`` (extxyz, Å and eV, σ in
``atoms.info``/``atoms.arrays`` as written by :func:`~shallow_ensembles.attach_uncertainty`, plus
``trust_level`` and ``ipi_evaluation``). The driver never stops i-PI: ``failed`` frames are
written and labelled.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.units import Bohr, Hartree
from ipi.pes.dummy import Dummy_driver

from shallow_ensembles import conventions as K
from shallow_ensembles.calculator import ShallowEnsembleCalculator, attach_uncertainty
from shallow_ensembles.data.io import check_elements, read_frames
from shallow_ensembles.errors import ConfigError, DataError
from shallow_ensembles.thresholds import TRUSTED, TrustLevels

__DRIVER_NAME__ = "shallow_ensembles"
__DRIVER_CLASS__ = "ShallowEnsembleDriver"

LEVEL_OPTIONS = ("energy_per_atom_lo_eV", "energy_per_atom_hi_eV",
                 "forces_lo_eV_per_A", "forces_hi_eV_per_A")
OPTIONS = ("model", "template", "device", "dtype", "committee", "member_forces",
           "energy_consistent_members",
           *LEVEL_OPTIONS, "candidates", "verbose")
"""Every keyword the driver accepts (``-o key=value`` on i-PI's launcher)."""

SOCKETS_PREFIX = "/tmp/ipi_"
"""Where i-PI binds UNIX sockets (its default; ``<ffcommittee>`` members always use it)."""


@dataclass
class EvaluationLog:
    """Running statistics of what the driver evaluated, in constant memory (long runs).

    σ are standard deviations (ddof=1) of the calibrated ensemble: σ_E of the total energy in
    eV, and the largest per-atom force σ max_i ‖σ(F_i)‖ in eV/Å (only with member forces).
    """

    n_atoms: int = 0
    evaluations: int = 0
    energy_sum: float = 0.0
    energy_max: float = 0.0
    force_evaluations: int = 0
    force_sum: float = 0.0
    force_max: float = 0.0
    levels: dict[str, int] = field(default_factory=dict)
    """Evaluations per trust level."""
    steady_start_s: float | None = None
    """``time.monotonic()`` after the second evaluation (start-up and first step excluded)."""
    last_s: float | None = None

    def add(self, sigma_energy: float, sigma_forces: float | None, level: str) -> None:
        """Account for one evaluation (σ_E eV, max per-atom σ_F eV/Å or None, trust level)."""
        self.evaluations += 1
        self.energy_sum += sigma_energy
        self.energy_max = max(self.energy_max, sigma_energy)
        if sigma_forces is not None:
            self.force_evaluations += 1
            self.force_sum += sigma_forces
            self.force_max = max(self.force_max, sigma_forces)
        self.levels[level] = self.levels.get(level, 0) + 1

    def finished(self) -> None:
        """Time stamp the end of an evaluation (after the reply was built)."""
        self.last_s = time.monotonic()
        if self.evaluations == 2:
            self.steady_start_s = self.last_s

    def seconds_per_evaluation(self) -> float | None:
        """Mean wall time between evaluations after the second one, s (None if too few)."""
        if self.steady_start_s is None or self.evaluations < 4:
            return None
        return (self.last_s - self.steady_start_s) / (self.evaluations - 2)


class ShallowEnsembleDriver(Dummy_driver):
    """A shallow-ensemble model as an i-PI python driver (module docstring: contract, extras).

    Parameters
    ----------
    model : str or Path, model file written by :func:`~shallow_ensembles.save_model`
    template : str or Path, ASE-readable structure (first frame) giving the atomic numbers, in
        i-PI's atom order, and the periodicity; typically i-PI's init file
    device, dtype : passed to :class:`~shallow_ensembles.ShallowEnsembleCalculator`
    committee : send the ``committee_*`` extras; ``False`` serves the mean only (e.g. as the
        baseline of a weighted-baseline ``<ffcommittee>``)
    member_forces : compute and send member forces and virials (needed by force trust levels and
        by i-PI's weighted baseline); without them i-PI uses the mean forces for every member
    energy_consistent_members : send member forces and virials that are the derivatives of the
        sent member energies (module docstring); for weighted-baseline runs
    energy_per_atom_lo_eV, energy_per_atom_hi_eV : σ_E / N levels, eV/atom
    forces_lo_eV_per_A, forces_hi_eV_per_A : max per-atom force σ levels, eV/Å
    candidates : extxyz file receiving non-trusted frames; default ``candidates.extxyz`` when a
        level is set
    verbose : print one line per evaluation to stderr

    Raises
    ------
    ModelFileError : missing or unreadable model file
    ElementError : the template holds an element the model does not know
    DataError : unreadable template
    ConfigError : a missing or unknown option, or a value of the wrong type
    """

    def __init__(self, model=None, template=None, *args, device="cpu", dtype=None,
                 committee=True, member_forces=True, energy_consistent_members=False,
                 energy_per_atom_lo_eV=None, energy_per_atom_hi_eV=None,
                 forces_lo_eV_per_A=None, forces_hi_eV_per_A=None, candidates=None,
                 verbose=False, **kwargs):
        self.model_file, self.template_file = model, template
        self.device, self.dtype = device, dtype
        self.committee, self.member_forces = committee, member_forces
        self.energy_consistent_members = energy_consistent_members
        self.level_values = dict(zip(LEVEL_OPTIONS, (
            energy_per_atom_lo_eV, energy_per_atom_hi_eV, forces_lo_eV_per_A, forces_hi_eV_per_A),
            strict=True))
        self.candidates = candidates
        self.log = EvaluationLog()
        self.n_candidates = 0
        self._unknown = (args, kwargs)
        super().__init__(verbose)

    # --- validation at the boundary (called by Dummy_driver.__init__) -------------------------
    def check_parameters(self) -> None:
        """Validate the options, load the model and the template; fail before any socket."""
        _reject_unknown(*self._unknown)
        if self.model_file is None:
            raise ConfigError("model", "the i-PI driver needs a model file (model=FILE)")
        if self.template_file is None:
            raise ConfigError("template", "the driver needs the atomic numbers in i-PI's order: "
                              "pass template=FILE (-o) or --structure FILE, e.g. i-PI's init file")
        for name in ("committee", "member_forces", "energy_consistent_members", "verbose"):
            _check_type(name, getattr(self, name, False), bool, "true or false")
        for name, value in self.level_values.items():
            _check_number(name, value)
        if self.dtype not in (None, "float32", "float64"):
            raise ConfigError("dtype", f"expected float32 or float64, got {self.dtype!r}")
        template = read_frames(self.template_file, 0)[0]
        self.numbers = template.numbers.copy()
        self.pbc = template.pbc.copy()
        self.log.n_atoms = len(self.numbers)
        self.levels = TrustLevels(**self.level_values)
        wants_members = self.member_forces and self.committee
        if self.levels.needs_forces and not wants_members:
            raise ConfigError("forces_lo_eV_per_A", "force trust levels need member forces "
                              "(member_forces=true, committee=true)")
        if self.candidates is None and _any_level(self.levels):
            self.candidates = "candidates.extxyz"
        self.calculator = ShallowEnsembleCalculator(
            Path(self.model_file), device=self.device, always_member_forces=wants_members,
            dtype=self.dtype)
        check_elements(self.numbers, self.calculator.model.species, file=self.template_file)

    # --- the i-PI contract ---------------------------------------------------------------------
    def compute_structure(self, cell: np.ndarray, pos: np.ndarray):
        """Energy (Ha), forces (N, 3) Ha/bohr, virial (3, 3) Ha and extras JSON for one structure.

        Parameters
        ----------
        cell : np.ndarray, shape (3, 3), bohr; i-PI's h matrix, cell vectors as columns
        pos : np.ndarray, shape (N, 3), bohr
        """
        atoms = self.to_ase(cell, pos)
        atoms.calc = self.calculator
        atoms.get_potential_energy()
        self._record(atoms)
        out = self.to_ipi(atoms, self.calculator.results)
        self.log.finished()
        return out

    def to_ase(self, cell: np.ndarray, pos: np.ndarray) -> Atoms:
        """i-PI → ASE: bohr → Å, cell vectors from columns to rows; numbers from the template.

        Parameters
        ----------
        cell : np.ndarray, shape (3, 3), bohr, cell vectors as columns (i-PI's h)
        pos : np.ndarray, shape (N, 3) or (3N,), bohr

        Returns
        -------
        Atoms with positions (N, 3) Å and cell (3, 3) Å, cell vectors as rows
        """
        pos = np.asarray(pos, dtype=float).reshape(-1, 3)
        if len(pos) != len(self.numbers):
            raise DataError(f"i-PI sent {len(pos)} atoms but the template has "
                            f"{len(self.numbers)}", file=self.template_file)
        return Atoms(numbers=self.numbers, positions=pos * Bohr,
                     cell=np.asarray(cell, dtype=float).T * Bohr, pbc=self.pbc)

    def to_ipi(self, atoms: Atoms, results: dict) -> tuple[float, np.ndarray, np.ndarray, str]:
        """ASE → i-PI: eV, eV/Å, eV/Å³ results to Ha, Ha/bohr and virials in Ha, plus extras.

        Parameters
        ----------
        atoms : the structure the results belong to (its volume gives the virial)
        results : :class:`~shallow_ensembles.ShallowEnsembleCalculator` results, eV/Å units

        Returns
        -------
        energy : float, Ha
        forces : np.ndarray, shape (N, 3), Ha/bohr
        virial : np.ndarray, shape (3, 3), Ha; −V·σ
        extras : str, JSON with the ``committee_*`` keys of the module docstring (or "")
        """
        force_unit = Bohr / Hartree
        virial = _virial(atoms, results.get(K.STRESS)) / Hartree
        out = (float(results[K.ENERGY]) / Hartree, results[K.FORCES] * force_unit, virial)
        if not self.committee:
            return (*out, "")
        extras = {"committee_pot": (results[K.ENERGY_ENSEMBLE] / Hartree).tolist()}
        if K.FORCES_ENSEMBLE in results:
            members, stress = self._member_derivatives(results)
            extras["committee_force"] = (members * force_unit).reshape(len(members), -1)
            extras["committee_virial"] = np.array([(_virial(atoms, s) / Hartree).ravel()
                                                   for s in stress])
            norm = K.forces_uncertainty_norm(results[K.FORCES_UNCERTAINTY])
            extras[K.FORCES_UNCERTAINTY_NORM] = norm * force_unit
        return (*out, _to_json(extras))

    def _member_derivatives(self, results: dict) -> tuple[np.ndarray, list]:
        """Member forces (M, N, 3) eV/Å and stresses (M × (6,) or None) to send to i-PI."""
        forces = results[K.FORCES_ENSEMBLE]
        stress = results.get(K.STRESS_ENSEMBLE)
        if self.energy_consistent_members:  # F̄ + α_E (F_raw − F̄), from the model's raw members
            calc = self.calculator
            out = calc.model.calibrate_outputs(calc.raw_member_outputs, self.numbers,
                                               forces_like_energy=True)
            forces = out["forces_ensemble"].detach().cpu().double().numpy()
            if stress is not None:
                stress = out["stress_ensemble"].detach().cpu().double().numpy()[:, 0]
        return forces, list(stress) if stress is not None else [None] * len(forces)

    # --- uncertainty bookkeeping and candidates ----------------------------------------------
    def _record(self, atoms: Atoms) -> None:
        results = self.calculator.results
        sigma_energy = float(results[K.ENERGY_UNCERTAINTY])
        sigma_forces = None
        if K.FORCES_UNCERTAINTY in results:
            sigma_forces = float(K.forces_uncertainty_norm(results[K.FORCES_UNCERTAINTY]).max())
        level = self.levels.classify(sigma_energy / len(atoms), sigma_forces)
        if level != TRUSTED:
            self._write_candidate(atoms, level)
        if self.verbose:
            print(f"ipi-driver: evaluation {self.n_evaluations}: sigma_E = {sigma_energy:.6g} eV,"
                  f" max sigma_F = {sigma_forces} eV/A, {level}", file=sys.stderr)
        self.log.add(sigma_energy, sigma_forces, level)

    @property
    def n_evaluations(self) -> int:
        """Structures evaluated so far."""
        return self.log.evaluations

    @property
    def n_atoms(self) -> int:
        """Atoms of the template: the count every structure from i-PI must have."""
        return len(self.numbers)

    def _write_candidate(self, atoms: Atoms, level: str) -> None:
        attach_uncertainty(atoms, forces=K.FORCES_UNCERTAINTY in self.calculator.results)
        frame = atoms.copy()  # no calculator: predictions must not look like reference labels
        frame.info["trust_level"] = level
        frame.info["ipi_evaluation"] = self.n_evaluations
        ase.io.write(self.candidates, frame, format="extxyz", append=True)
        self.n_candidates += 1


def _to_json(extras: dict) -> str:
    """JSON text of ``extras``; arrays with 10 significant digits (half the cost of json.dumps).

    Energies (lists) keep full precision: i-PI's mean energy is recomputed from them. Forces
    and virials at 1e-10 relative are far below any integration error.
    """
    parts = []
    for key, value in extras.items():
        if isinstance(value, np.ndarray) and np.isfinite(value).all():
            rows = np.atleast_2d(value).tolist()
            text = ",".join("[" + ",".join(map("%.10g".__mod__, row)) + "]" for row in rows)
            text = text if value.ndim == 2 else text[1:-1]
            parts.append(f"{json.dumps(key)}:[{text}]")
        else:  # lists, and non-finite arrays (json writes NaN, which i-PI's json.loads reads)
            value = value.tolist() if isinstance(value, np.ndarray) else value
            parts.append(f"{json.dumps(key)}:{json.dumps(value)}")
    return "{" + ",".join(parts) + "}"


def _virial(atoms: Atoms, stress) -> np.ndarray:
    """Virial −V·σ, (3, 3) eV, from a Voigt stress (6,) eV/Å³; zeros without a stress."""
    if stress is None:
        return np.zeros((3, 3))
    xx, yy, zz, yz, xz, xy = stress
    tensor = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    return -atoms.get_volume() * tensor


def _any_level(levels: TrustLevels) -> bool:
    return any(getattr(levels, name) is not None for name in LEVEL_OPTIONS)


def _check_type(name, value, types, expected) -> None:
    if not isinstance(value, types):
        raise ConfigError(name, f"expected {expected}, got {value!r}")


def _check_number(name, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(name, f"expected a number, got {value!r}")


def _reject_unknown(args, kwargs) -> None:
    import difflib

    if args:
        raise ConfigError("options", f"unexpected positional values {list(args)}; give "
                          "key=value pairs (model=FILE,template=FILE,...)")
    for key in kwargs:
        close = difflib.get_close_matches(key, OPTIONS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; known: {', '.join(OPTIONS)}"
        raise ConfigError(key, f"unknown i-PI driver option{hint}")


# --- a minimal i-PI socket client (the protocol of i-PI's python driver, one structure a time) ---
HDRLEN = 12


def _message(text: str) -> bytes:
    return text.upper().ljust(HDRLEN).encode()


STATUS, INIT, POSDATA, GETFORCE, EXIT = (
    _message(m) for m in ("status", "init", "posdata", "getforce", "exit"))
READY, NEEDINIT, HAVEDATA, FORCEREADY = (
    _message(m) for m in ("ready", "needinit", "havedata", "forceready"))


class ServerGone(ConnectionError):
    """The i-PI server closed the connection without sending EXIT."""


def connect(*, unix: str | None = None, address: str = "localhost", port: int | None = None,
            sockets_prefix: str = SOCKETS_PREFIX, timeout_s: float = 60.0,
            stop: threading.Event | None = None) -> socket.socket:
    """Connect to an i-PI server, retrying while it starts up.

    Parameters
    ----------
    unix : UNIX socket name (i-PI's ``<address>``); the file is ``sockets_prefix + unix``
    address, port : INET host and port, used when ``unix`` is None
    timeout_s : give up after this many seconds
    stop : an event that ends the retries early

    Raises
    ------
    ConnectionError : no server answered within ``timeout_s``
    """
    target = sockets_prefix + unix if unix is not None else (address, int(port))
    family = socket.AF_UNIX if unix is not None else socket.AF_INET
    deadline = time.monotonic() + timeout_s
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.connect(target)
        except (FileNotFoundError, ConnectionRefusedError) as err:
            sock.close()
            if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                raise ConnectionError(f"no i-PI server at {target} after {timeout_s:g} s; "
                                      "start i-pi first") from err
            time.sleep(0.05)
            continue
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


class ServerTimeout(ConnectionError):
    """The i-PI server sent nothing for longer than the driver's ``server_timeout_s``."""


def serve(driver: Dummy_driver, server_timeout_s: float | None = None, **connect_kwargs) -> str:
    """Answer i-PI's requests with ``driver`` until i-PI sends EXIT or goes away.

    Parameters
    ----------
    driver : any i-PI python driver (callable ``(cell, pos) -> (E, F, vir, extras)``); with an
        ``n_atoms`` attribute (ours), a server sending another number of atoms is refused
        before anything is computed or answered
    server_timeout_s : give up when the connected server sends nothing for this long, s
        (None: wait forever, i-PI's behaviour; a hung server then blocks the driver)
    **connect_kwargs : see :func:`connect`

    Returns
    -------
    str : ``"exit"`` (i-PI ended the run) or ``"disconnected"`` (the server vanished)

    Raises
    ------
    ServerTimeout : nothing arrived for ``server_timeout_s`` seconds
    DataError : the server sent a structure with another number of atoms than the driver's
    """
    sock = connect(**connect_kwargs)
    sock.settimeout(server_timeout_s)
    try:
        _serve_loop(sock, driver)
    except TimeoutError as err:
        raise ServerTimeout(f"the i-PI server sent nothing for {server_timeout_s:g} s (hung or "
                            "stopped?); raise the server timeout or check i-PI") from err
    except (ServerGone, ConnectionResetError, BrokenPipeError):
        return "disconnected"
    except Exception:  # a refused or failed structure: leave i-PI able to serve others
        _close_gracefully(sock)
        raise
    finally:
        sock.close()
    return "exit"


def _close_gracefully(sock: socket.socket, drain_s: float = 5.0) -> None:
    """End the connection with a plain end-of-file that i-PI handles as a disconnection.

    Closing a socket with unread data (i-PI's GETFORCE after POSDATA) sends a TCP/UNIX reset;
    i-PI 3.3's polling thread dies on the ConnectionResetError and the server then serves no
    client. Shutting down the sending side and reading until i-PI closes avoids the reset.
    """
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(drain_s)
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and sock.recv(4096):
            pass


def _refuse_atom_count(driver, n_atoms: int) -> None:
    """Raise before computing or answering when ``n_atoms`` is not the driver's count.

    :func:`serve` then closes the connection cleanly, so that i-PI drops this client and
    hands the structure to the next one.
    """
    expected = getattr(driver, "n_atoms", None)
    if expected is None or n_atoms == expected:
        return
    raise DataError(f"the i-PI server sent {n_atoms} atoms but the template has {expected}; "
                    "give the driver the structure i-PI runs (its init file)",
                    file=getattr(driver, "template_file", None))


def _serve_loop(sock: socket.socket, driver) -> None:
    initialized, result = False, None
    while True:
        header = _recv(sock, HDRLEN)
        if header == STATUS:
            state = HAVEDATA if result is not None else READY if initialized else NEEDINIT
            sock.sendall(state)
        elif header == INIT:
            _recv_array(sock, np.int32, 1)
            _recv(sock, int(_recv_array(sock, np.int32, 1)[0]))
            initialized = True
        elif header == POSDATA:
            cell = _recv_array(sock, np.float64, 9).reshape(3, 3)
            _recv_array(sock, np.float64, 9)  # inverse cell, unused
            n_atoms = int(_recv_array(sock, np.int32, 1)[0])
            pos = _recv_array(sock, np.float64, 3 * n_atoms).reshape(n_atoms, 3)
            _refuse_atom_count(driver, n_atoms)
            result = driver(cell, pos)
        elif header == GETFORCE:
            sock.sendall(FORCEREADY + _pack(result))
            result = None
        elif header == EXIT:
            return
        else:
            raise ServerGone(f"unexpected message {header!r} from i-PI")


def _pack(result) -> bytes:
    energy, forces, virial, extras = result
    forces = np.ascontiguousarray(forces, dtype=np.float64)
    payload = extras.encode() if isinstance(extras, str) else b""
    return b"".join((np.float64(energy).tobytes(), np.int32(forces.size // 3).tobytes(),
                     forces.tobytes(), np.ascontiguousarray(virial, dtype=np.float64).tobytes(),
                     np.int32(len(payload)).tobytes(), payload))


def _recv(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        chunk = sock.recv_into(view[got:], size - got)
        if chunk == 0:
            raise ServerGone("i-PI closed the connection")
        got += chunk
    return bytes(buffer)


def _recv_array(sock: socket.socket, dtype, count: int) -> np.ndarray:
    return np.frombuffer(_recv(sock, np.dtype(dtype).itemsize * count), dtype=dtype)
