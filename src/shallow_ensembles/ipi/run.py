"""``shallow-ensembles ipi run``: start i-PI and the shallow-ensemble driver(s), wait, clean up.

The user's input is never modified: a copy goes to the run folder with

- every ``<ffsocket>`` address made unique to this run (sockets nested in ``<ffcommittee>``
  bind ``/tmp/ipi_<address>`` whatever ``sockets_prefix`` says, so two runs would collide);
- ``<total_steps>`` replaced when ``steps`` is given;
- the ``<initialize><file>`` replaced by ``structure`` when given (written as ``init.extxyz``),
  or made absolute otherwise.

i-PI runs as a subprocess in the run folder (log: ``ipi.log``); each driver runs in a thread
of this process. The serving rules: one ``<ffsocket>`` gets the model as a committee client;
the ``<baseline_name>`` socket of a weighted-baseline ``<ffcommittee>`` gets ``baseline_model``
served as a plain potential (its mean, no committee extras).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import ase.io
from ase import Atoms

from shallow_ensembles.data.io import read_frames
from shallow_ensembles.errors import ConfigError, DataError, ShallowEnsembleError

from .driver import LEVEL_OPTIONS, SOCKETS_PREFIX, ShallowEnsembleDriver, serve
from .outputs import read_active_output


class IPIRunError(ShallowEnsembleError, RuntimeError):
    """i-PI failed, timed out or could not be started; the message points at its log."""


@dataclass
class SocketPlan:
    """One ``<ffsocket>`` of the prepared input and who serves it."""

    name: str
    mode: str
    address: str
    port: int | None
    baseline: bool

    def connect_kwargs(self) -> dict:
        """Keyword arguments of :func:`~shallow_ensembles.ipi.driver.connect`."""
        if self.mode == "unix":
            return {"unix": self.address, "sockets_prefix": SOCKETS_PREFIX}
        return {"address": self.address, "port": self.port}


@dataclass
class RunPlan:
    """The prepared run folder: input copy, sockets, init structure and output names."""

    run_dir: Path
    input_xml: Path
    sockets: list[SocketPlan]
    template: Path
    active_output: Path | None


@dataclass
class RunSummary:
    """What a finished run did, for the CLI summary.

    σ are standard deviations (ddof=1) of the calibrated ensemble over every structure the
    driver evaluated (each bead counts): σ_E of the total energy (eV) and the largest per-atom
    force σ max_i ‖σ(F_i)‖ (eV/Å; None without member forces).
    """

    run_dir: Path
    input_xml: Path
    steps: int | None
    """Steps i-PI reports in its final checkpoint (``RESTART``); None when absent."""
    n_atoms: int
    evaluations: int
    energy_uncertainty_mean: float | None
    energy_uncertainty_max: float | None
    max_forces_uncertainty_mean: float | None
    max_forces_uncertainty_max: float | None
    seconds_per_evaluation: float | None
    """Mean wall time between evaluations after the second (i-PI and driver together: the
    steady-state cost of one step per bead), s."""
    levels: dict[str, int] = field(default_factory=dict)
    candidates: Path | None = None
    n_candidates: int = 0
    active_output: Path | None = None
    n_active: int = 0

    def format(self) -> str:
        """A few lines of text for the terminal."""
        steps = self.steps if self.steps is not None else "?"
        lines = [f"i-PI run in {self.run_dir}: {steps} steps, {self.evaluations} structures "
                 f"evaluated ({self.n_atoms} atoms)"]
        if self.seconds_per_evaluation is not None:
            lines.append(f"{1e3 * self.seconds_per_evaluation:.4g} ms per evaluation "
                         "(steady state, i-PI and driver)")
        if self.energy_uncertainty_mean is not None:
            mean, top, n = self.energy_uncertainty_mean, self.energy_uncertainty_max, self.n_atoms
            lines.append(f"committee sigma_E: mean {mean:.4g} eV ({mean / n:.4g} eV/atom), "
                         f"max {top:.4g} eV ({top / n:.4g} eV/atom)")
        if self.max_forces_uncertainty_mean is not None:
            lines.append(f"max per-atom sigma_F: mean {self.max_forces_uncertainty_mean:.4g} "
                         f"eV/A, max {self.max_forces_uncertainty_max:.4g} eV/A")
        if self.candidates is not None:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(self.levels.items()))
            lines.append(f"driver trust levels: {counts}; {self.n_candidates} candidates in "
                         f"{self.candidates}")
        if self.active_output is not None:
            lines.append(f"i-PI active_output: {self.n_active} structures above active_thresh "
                         f"in {self.active_output}")
        return "\n".join(lines)


def run_ipi(input_xml: str | Path, model: str | Path, *, structure: str | Path | None = None,
            steps: int | None = None, output: str | Path | None = None,
            baseline_model: str | Path | None = None, driver_options: dict | None = None,
            timeout_s: float | None = None) -> RunSummary:
    """Run i-PI on ``input_xml`` with ``model`` served by the shallow-ensemble driver.

    Parameters
    ----------
    input_xml : i-PI input with ``<ffsocket>`` forcefields (see the module docstring)
    model : model file served as the committee
    structure : ASE-readable structure replacing the input's init file (first frame)
    steps : replaces ``<total_steps>``
    output : run folder (created); default ``runs/ipi-<input stem>-<date-time>``
    baseline_model : model file served (mean only) on the ``<baseline_name>`` socket
    driver_options : more :class:`ShallowEnsembleDriver` keywords (trust levels,
        ``candidates``, ``device``, ``dtype``, ...); a relative ``candidates`` path is taken
        relative to the run folder, default ``candidates.extxyz`` there when a level is set
    timeout_s : stop i-PI and raise after this many seconds

    Raises
    ------
    ConfigError, DataError, ModelFileError, ElementError : before i-PI starts
    IPIRunError : i-PI failed or timed out
    """
    run_dir = _new_run_dir(input_xml, output)
    plan = prepare_run(input_xml, run_dir, structure=structure, steps=steps)
    drivers = _make_drivers(plan, model, baseline_model, dict(driver_options or {}))
    _execute(plan, drivers, timeout_s)
    return _summarize(plan, drivers)


# --- preparing the run folder ------------------------------------------------------------------
def prepare_run(input_xml: str | Path, run_dir: Path, *, structure=None,
                steps: int | None = None) -> RunPlan:
    """Write the modified copy of ``input_xml`` (and the init structure) into ``run_dir``."""
    input_xml, run_dir = Path(input_xml), Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        tree = ET.parse(input_xml)
    except FileNotFoundError as err:
        raise ConfigError(str(input_xml), "no such i-PI input file") from err
    except ET.ParseError as err:
        raise ConfigError(str(input_xml), f"not valid XML: {err}") from err
    root = tree.getroot()
    sockets = _plan_sockets(root, input_xml)
    if steps is not None:
        _set_steps(root, steps)
    template = _set_init_file(root, input_xml, run_dir, structure)
    active = _active_output(root, run_dir)
    target = run_dir / "input.xml"
    tree.write(target, encoding="unicode")
    return RunPlan(run_dir, target, sockets, template, active)


def _new_run_dir(input_xml, output) -> Path:
    """``output``, or a new ``runs/ipi-<stem>-<date-time>[-k]`` folder (never an existing one)."""
    if output is not None:
        run_dir = Path(output).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    stem = f"ipi-{Path(input_xml).stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    for attempt in range(1000):
        run_dir = (Path("runs") / (stem if attempt == 0 else f"{stem}-{attempt}")).resolve()
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
    raise ConfigError("output", f"could not create a new run folder runs/{stem}-*")


def _plan_sockets(root: ET.Element, input_xml: Path) -> list[SocketPlan]:
    where = str(input_xml)
    committee = root.find(".//ffcommittee")
    baseline = (committee.findtext("baseline_name") or "").strip() if committee is not None else ""
    if committee is not None:
        _check_committee(committee, where)
    tag = f"se{os.getpid() % 100000}{secrets.token_hex(3)}"
    plans = []
    for index, element in enumerate(root.iter("ffsocket")):
        name = element.get("name", f"ffsocket{index}")
        mode = element.get("mode", "inet")
        if mode not in ("unix", "inet"):
            raise ConfigError(f"{where}: ffsocket '{name}'",
                              f"mode '{mode}' is not served by this driver; use unix or inet")
        address, port = f"{tag}_{index}", None
        if mode == "inet":
            address, port = "localhost", _free_port()
            _set_child(element, "port", str(port))
        _set_child(element, "address", address)
        plans.append(SocketPlan(name, mode, address, port, bool(baseline) and name == baseline))
    _check_roles(plans, baseline, where)
    return plans


def _check_committee(committee: ET.Element, where: str) -> None:
    if committee.find("ffdirect") is not None:
        raise ConfigError(f"{where}: ffcommittee", "use <ffsocket> members: an <ffdirect> member "
                          "makes every i-PI checkpoint write fail")
    if (committee.findtext("parse_json") or "false").strip().lower() not in ("true", "1"):
        raise ConfigError(f"{where}: ffcommittee", "set <parse_json>true</parse_json>: one "
                          "client returns all members (without it i-PI's uncertainty is NaN)")
    alpha = _number(committee, "alpha", 1.0, where)
    if alpha != 1.0:
        warnings.warn(f"{where}: <alpha> {alpha} rescales members that the driver has already "
                      "calibrated with the model's alpha", stacklevel=3)


def _check_roles(plans: list[SocketPlan], baseline: str, where: str) -> None:
    served = [p.name for p in plans if not p.baseline]
    if len(served) != 1:
        raise ConfigError(f"{where}: ffsocket", "expected exactly one <ffsocket> for the "
                          f"shallow ensemble (besides a baseline), found {served}")
    if baseline and not any(p.baseline for p in plans):
        raise ConfigError(f"{where}: baseline_name",
                          f"no <ffsocket name='{baseline}'> for the baseline")


def _set_steps(root: ET.Element, steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError("steps", f"expected a non-negative integer, got {steps!r}")
    _set_child(root, "total_steps", str(steps))


def _set_init_file(root: ET.Element, input_xml: Path, run_dir: Path, structure) -> Path:
    files = root.findall(".//initialize/file")
    if not files:
        raise ConfigError(f"{input_xml}: initialize",
                          "no <file> to initialize from (the driver needs the atomic numbers)")
    if structure is not None:
        template = run_dir / "init.extxyz"
        ase.io.write(template, _plain_structure(structure), format="extxyz")
        for element in files:
            element.text, element.attrib = " init.extxyz ", {"mode": "ase"}
        return template
    for element in files:
        path = Path(element.text.strip())
        if not path.is_absolute():
            path = (input_xml.parent / path).resolve()
        element.text = f" {path} "
    return Path(files[0].text.strip())


def _plain_structure(structure) -> Atoms:
    atoms = read_frames(structure, 0)[0]
    if abs(atoms.cell.volume) < 1e-12:
        raise DataError("i-PI needs a cell: the structure has none (set a box)", file=structure)
    return Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                 pbc=atoms.pbc)


def _active_output(root: ET.Element, run_dir: Path) -> Path | None:
    committee = root.find(".//ffcommittee")
    if committee is None or _number(committee, "active_thresh", 0.0, "ffcommittee") <= 0:
        return None
    output = root.find("output")
    prefix = output.get("prefix", "i-pi") if output is not None else "i-pi"
    name = (committee.findtext("active_output") or "active_output").strip()
    return run_dir / f"{prefix}.{name}"


def _number(parent: ET.Element, tag: str, default: float, where: str) -> float:
    text = (parent.findtext(tag) or "").strip()
    try:
        return float(text) if text else default
    except ValueError as err:
        raise ConfigError(f"{where}: {tag}", f"expected a number, got {text!r}") from err


def _set_child(parent: ET.Element, tag: str, text: str) -> None:
    child = parent.find(tag)
    if child is None:
        child = ET.SubElement(parent, tag)
    child.text = f" {text} "


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


# --- drivers, i-PI process and waiting -----------------------------------------------------------
def _make_drivers(plan: RunPlan, model, baseline_model, options: dict) -> list:
    """One driver per socket, built (and validated) before i-PI starts."""
    for key in ("model", "template", "committee", "energy_consistent_members"):
        if key in options:
            raise ConfigError(f"driver_options.{key}", "set by ipi run itself")
    if options.get("candidates") is not None:
        options["candidates"] = str(plan.run_dir / options["candidates"])
    if any(options.get(k) is not None for k in LEVEL_OPTIONS) and not options.get("candidates"):
        options["candidates"] = str(plan.run_dir / "candidates.extxyz")
    drivers = []
    for socket_plan in plan.sockets:
        if socket_plan.baseline:
            if baseline_model is None:
                raise ConfigError("baseline_model", f"the input has a baseline socket "
                                  f"'{socket_plan.name}': give a baseline model to serve it")
            driver = ShallowEnsembleDriver(model=str(baseline_model), template=str(plan.template),
                                           committee=False, member_forces=False)
        else:
            consistent = any(p.baseline for p in plan.sockets)  # see the driver's docstring
            driver = ShallowEnsembleDriver(model=str(model), template=str(plan.template),
                                           energy_consistent_members=consistent, **options)
        drivers.append(driver)
    return drivers


class _DriverThread(threading.Thread):
    def __init__(self, driver, connect_kwargs: dict, stop: threading.Event):
        super().__init__(daemon=True, name="shallow-ensembles-ipi-driver")
        self.driver, self.connect_kwargs, self.stop = driver, connect_kwargs, stop
        self.error: BaseException | None = None
        self.outcome: str | None = None

    def run(self) -> None:
        try:
            self.outcome = serve(self.driver, stop=self.stop, timeout_s=120.0,
                                 **self.connect_kwargs)
        except BaseException as err:  # handed to the main thread, which re-raises it
            self.error = err


def ipi_executable() -> str:
    """The ``i-pi`` script next to this Python, else the one on PATH."""
    local = Path(sys.executable).parent / "i-pi"
    found = str(local) if local.is_file() else shutil.which("i-pi")
    if found is None:
        raise IPIRunError("the i-pi executable was not found; pip install ipi")
    return found


def _execute(plan: RunPlan, drivers: list, timeout_s: float | None) -> None:
    stop = threading.Event()
    threads = [_DriverThread(d, s.connect_kwargs(), stop) for d, s in zip(drivers, plan.sockets,
                                                                          strict=True)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    log_path = plan.run_dir / "ipi.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, ipi_executable(), plan.input_xml.name],
                                   cwd=plan.run_dir, stdout=log, stderr=subprocess.STDOUT,
                                   env=env)
        try:
            for thread in threads:
                thread.start()
            _wait(process, threads, timeout_s, log_path)
        finally:
            stop.set()
            _terminate(process)
            for thread in threads:
                thread.join(timeout=10)
            _remove_sockets(plan)


def _wait(process, threads, timeout_s, log_path: Path) -> None:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while process.poll() is None:
        _raise_thread_errors(threads)
        if deadline is not None and time.monotonic() > deadline:
            raise IPIRunError(f"i-PI did not finish within {timeout_s:g} s; see {log_path}")
        time.sleep(0.05)
    if process.returncode != 0:
        raise IPIRunError(f"i-PI exited with code {process.returncode}; the end of {log_path}:\n"
                          + _tail(log_path))
    for thread in threads:
        thread.join(timeout=30)
    _raise_thread_errors(threads)


def _raise_thread_errors(threads) -> None:
    for thread in threads:
        if thread.error is not None:
            raise thread.error


def _terminate(process) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _remove_sockets(plan: RunPlan) -> None:
    for socket_plan in plan.sockets:
        if socket_plan.mode == "unix":
            Path(SOCKETS_PREFIX + socket_plan.address).unlink(missing_ok=True)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- summary -----------------------------------------------------------------------------------
def _summarize(plan: RunPlan, drivers: list) -> RunSummary:
    main = next(d for d, s in zip(drivers, plan.sockets, strict=True) if not s.baseline)
    log = main.log
    n_active = 0
    if plan.active_output is not None and plan.active_output.is_file():
        n_active = len(read_active_output(plan.active_output))
    energy = (log.energy_sum / log.evaluations, log.energy_max) if log.evaluations else (None,) * 2
    forces = ((log.force_sum / log.force_evaluations, log.force_max) if log.force_evaluations
              else (None, None))
    return RunSummary(
        run_dir=plan.run_dir, input_xml=plan.input_xml, steps=_final_step(plan.run_dir),
        n_atoms=log.n_atoms, evaluations=log.evaluations, energy_uncertainty_mean=energy[0],
        energy_uncertainty_max=energy[1], max_forces_uncertainty_mean=forces[0],
        max_forces_uncertainty_max=forces[1],
        seconds_per_evaluation=log.seconds_per_evaluation(), levels=dict(log.levels),
        candidates=Path(main.candidates) if main.candidates else None,
        n_candidates=main.n_candidates, active_output=plan.active_output, n_active=n_active)


def _final_step(run_dir: Path) -> int | None:
    restart = run_dir / "RESTART"
    if not restart.is_file():
        return None
    found = re.search(r"<step>\s*(\d+)\s*</step>", restart.read_text(errors="replace"))
    return int(found.group(1)) if found else None
