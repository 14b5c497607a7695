"""Every bad input of issue 11, in one table: each gets a clear error or a warning, never a NaN,
a crash or silence.

Each row runs the real entry point (config loader, reader, calculator, model loader, CLI,
i-PI socket loop) on a deliberately bad input and checks the exception class (or warning, or
exit code) and the text a user reads. Where the input is legal (a numeric string, a relative
path next to the config) the row checks the value that comes out instead.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import zipfile

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase import Atoms
from ase.build import molecule

from conftest import ETHANOL, tiny_model
from shallow_ensembles import ShallowEnsembleCalculator, load_model, save_model
from shallow_ensembles.cli import main
from shallow_ensembles.config import from_dict, to_dict
from shallow_ensembles.data import read_structures
from shallow_ensembles.errors import ConfigError, DataError, ModelFileError
from shallow_ensembles.fileio import atomic_path
from shallow_ensembles.training.config import TrainConfig, load_train_config

SMALL = {"n_members": 2, "hidden": [8], "bottleneck": 3, "n_radial": 3, "n_channels": 2,
         "cutoff_A": 3.0, "dtype": "float64"}


def train_dict(tmp_path, **changes) -> dict:
    base = {"data": {"train_file": str(ETHANOL), "n_train": 28, "n_validation": 12,
                     "n_test": 20},
            "model": dict(SMALL), "protocol": "mse", "stages": [{"kind": "mse", "epochs": 1}],
            "training": {"progress": False, "threads": 1}, "output_dir": str(tmp_path / "run")}
    for dotted, value in changes.items():
        node = base
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return base


def frames_file(tmp_path, scale=1.0, duplicate=False, name="data.extxyz"):
    """Six labelled ethanol frames with forces (and energies) times ``scale``."""
    frames = read_structures(ETHANOL)[:6]
    out = []
    for k, atoms in enumerate(frames):
        copy = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        copy.info["energy"] = atoms.info["REF_energy"] * scale
        copy.arrays["forces"] = atoms.arrays["REF_forces"] * scale
        out.append(out[0].copy() if duplicate and k > 0 else copy)
    for a in out:
        a.info.setdefault("energy", out[0].info["energy"])
    path = tmp_path / name
    ase.io.write(path, out, format="extxyz")
    return path


# --- the rows: each action raises, warns or returns what the row checks ----------------------
def n_members_one(tmp_path):
    from_dict(TrainConfig, train_dict(tmp_path, **{"model.n_members": 1}))


def one_member_calculator(tmp_path):
    ShallowEnsembleCalculator(tiny_model(n_members=1))


def one_member_calibration(tmp_path):
    from shallow_ensembles.calibration import calibrate
    from shallow_ensembles.data import graphs_from_atoms

    model = tiny_model(n_members=1)
    calibrate(model, graphs_from_atoms(read_structures(ETHANOL)[:2], model.cutoff))


def forces_in_kcal(tmp_path):
    read_structures(frames_file(tmp_path, scale=23.06))


def forces_in_hartree(tmp_path):
    read_structures(frames_file(tmp_path, scale=1 / 51.42))


def _started_run(tmp_path, **changes):
    """A run folder as left by a run of the base config; then --resume with ``changes``."""
    from shallow_ensembles.training import train

    config = from_dict(TrainConfig, train_dict(tmp_path))
    run = tmp_path / "run"
    run.mkdir()
    (run / "resolved_config.yaml").write_text(yaml.safe_dump(to_dict(config)))
    (run / "split.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    try:
        train(from_dict(TrainConfig, train_dict(tmp_path, **changes)), resume=True)
    finally:  # nothing touched, whatever happened
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def resume_changed_split(tmp_path):
    _started_run(tmp_path, **{"data.n_train": 30})


def resume_changed_architecture(tmp_path):
    _started_run(tmp_path, **{"model.hidden": [16]})


def corrupt_checkpoint_on_resume(tmp_path):
    from shallow_ensembles.training import train

    config = from_dict(TrainConfig, train_dict(tmp_path))
    run = tmp_path / "run"
    run.mkdir()
    (run / "resolved_config.yaml").write_text(yaml.safe_dump(to_dict(config)))
    torch.save({"stage": print}, run / "checkpoint.pt")  # not plain data: torch refuses it
    train(config, resume=True)


def flipped_model_bytes(tmp_path):
    path = save_model(tiny_model(), tmp_path / "m.pt")
    data = bytearray(path.read_bytes())
    info = max((i for i in zipfile.ZipFile(path).infolist() if "/data/" in i.filename),
               key=lambda i: i.file_size)
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # local header
    for k in range(64):
        data[start + 8 + k] ^= 0xFF
    path.write_bytes(bytes(data))
    load_model(path)


def coincident_atoms(tmp_path):
    atoms = Atoms("H2O", positions=[[0, 0, 0], [0, 0, 0], [0.9, 0.0, 0.3]])
    atoms.calc = ShallowEnsembleCalculator(tiny_model())
    atoms.get_potential_energy()


def coincident_atoms_in_a_file(tmp_path):
    path = tmp_path / "bad.extxyz"
    atoms = molecule("H2O")
    atoms.positions[1] = atoms.positions[0]
    atoms.info["energy"], atoms.arrays["forces"] = -10.0, np.zeros((3, 3))
    ase.io.write(path, [molecule("H2O"), atoms][1:], format="extxyz")
    read_structures(path)


def _pbc_zero_cell(pbc):
    atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], pbc=pbc)
    atoms.calc = ShallowEnsembleCalculator(tiny_model())
    atoms.get_potential_energy()


def pbc_two_axes_zero_cell(tmp_path):
    _pbc_zero_cell([True, True, False])


def pbc_one_axis_zero_cell(tmp_path):
    _pbc_zero_cell([True, False, False])


def _config_file(tmp_path, text):
    path = tmp_path / "cfg" / "train.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def yaml_number_as_string(tmp_path):
    # YAML 1.1 reads 1e-3 (no dot) as the string "1e-3": accepted as the number
    text = yaml.safe_dump(train_dict(tmp_path)) + "\n"
    text = text.replace("training:\n", "training:\n  learning_rate: 1e-3\n")
    config = load_train_config(_config_file(tmp_path, text))
    return config.training.learning_rate


def yaml_word_as_number(tmp_path):
    load_train_config(_config_file(
        tmp_path, yaml.safe_dump(train_dict(tmp_path, **{"training.learning_rate": "fast"}))))


def batch_size_zero(tmp_path):
    from_dict(TrainConfig, train_dict(tmp_path, **{"training.batch_size": 0}))


def negative_learning_rate(tmp_path):
    from_dict(TrainConfig, train_dict(tmp_path, **{"training.learning_rate": -1e-3}))


def negative_stage_learning_rate(tmp_path):
    from_dict(TrainConfig, train_dict(
        tmp_path, stages=[{"kind": "mse", "epochs": 1, "learning_rate": -0.1}]))


def identical_frames_across_sets(tmp_path):
    from shallow_ensembles.training import load_datasets

    config = from_dict(TrainConfig, train_dict(tmp_path, **{
        "data.train_file": str(frames_file(tmp_path, duplicate=True)), "data.n_train": 3,
        "data.n_validation": 2, "data.n_test": 1}))
    load_datasets(config.data)


def relative_data_path(tmp_path):
    # the data file next to the config, run from another folder: found
    config_path = _config_file(tmp_path, "")
    frames_file(config_path.parent, name="next_to_config.extxyz")
    config_path.write_text(yaml.safe_dump(
        train_dict(tmp_path, **{"data.train_file": "next_to_config.extxyz"})))
    return load_train_config(config_path).data.train_file


def missing_relative_data_path(tmp_path):
    load_train_config(_config_file(tmp_path, yaml.safe_dump(
        train_dict(tmp_path, **{"data.train_file": "nowhere.extxyz"}))))


def text_file_as_model(tmp_path):
    (tmp_path / "model.pt").write_text("E = -1.0\n")
    load_model(tmp_path / "model.pt")


def pickled_code_as_model(tmp_path):
    torch.save({"format": print}, tmp_path / "evil.pt")
    load_model(tmp_path / "evil.pt")


def empty_atoms(tmp_path):
    atoms = Atoms()
    atoms.calc = ShallowEnsembleCalculator(tiny_model())
    atoms.get_potential_energy()


def _md(tmp_path, protocol):
    from test_md_model_devi import water_box

    water = water_box()
    model = save_model(tiny_model(species=(1, 8), frames=[water]), tmp_path / "model.pt")
    ase.io.write(tmp_path / "water.extxyz", water)
    (tmp_path / "protocol.yaml").write_text(yaml.safe_dump(
        {"dynamics": {"kind": "velocity_verlet", "timestep_fs": 0.5}, "steps": 3,
         "logging": {"plot": False, "trajectory_interval": 0}, **protocol}))
    return main(["md", str(tmp_path / "protocol.yaml"), "--model", str(model), "--structure",
                 str(tmp_path / "water.extxyz"), "--output", str(tmp_path / "out"),
                 "--no-progress"])


def md_stopped_by_action(tmp_path):
    return _md(tmp_path, {"levels": {"energy_per_atom_lo_eV": 1e-12},
                          "actions": [{"kind": "stop", "level": "candidate"}]})


def md_stopped_by_rollback(tmp_path):
    return _md(tmp_path, {"levels": {"energy_per_atom_lo_eV": 1e-12,
                                     "energy_per_atom_hi_eV": 2e-12},
                          "actions": [{"kind": "rollback", "level": "failed"}]})


def md_stopped_by_guard(tmp_path):
    return _md(tmp_path, {"guard": {"max_force_eV_per_A": 1e-9}})


def md_completed(tmp_path):
    return _md(tmp_path, {})


class FakeServer:
    """An i-PI-like UNIX socket server that says ``script`` (a list of byte strings)."""

    def __init__(self, tmp_path, script, hold_s=5.0):
        # a short folder: UNIX socket paths are limited to ~100 characters
        self.prefix = os.path.join(tempfile.mkdtemp(prefix="se_ipi_"), "s_")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.prefix + "sock")
        self.server.listen(1)
        self.received = b""
        self.closed_by_client = False
        self.thread = threading.Thread(target=self._run, args=(script, hold_s), daemon=True)
        self.thread.start()

    def _run(self, script, hold_s):
        conn, _ = self.server.accept()
        conn.settimeout(hold_s)
        try:
            for message in script:
                conn.sendall(message)
                if message.startswith(b"STATUS"):
                    self.received += conn.recv(12)
            deadline = time.monotonic() + hold_s
            while time.monotonic() < deadline:
                chunk = conn.recv(64)
                if not chunk:
                    self.closed_by_client = True
                    break
                self.received += chunk
        except (BrokenPipeError, ConnectionResetError):
            self.closed_by_client = True
        except (TimeoutError, OSError):
            pass
        finally:
            conn.close()
            self.server.close()
            os.unlink(self.prefix + "sock")
            os.rmdir(os.path.dirname(self.prefix))


class CountingDriver:
    """Stands for a driver whose template has three atoms; counts the structures it computes."""

    n_atoms = 3
    template_file = "template.extxyz"

    def __init__(self):
        self.calls = 0

    def __call__(self, cell, pos):
        self.calls += 1
        return 0.0, np.zeros_like(pos), np.zeros((3, 3)), ""


def _posdata(n_atoms):
    return (b"POSDATA     " + np.eye(3).tobytes() + np.eye(3).tobytes()
            + np.int32(n_atoms).tobytes() + np.zeros(3 * n_atoms).tobytes())


def ipi_server_hangs(tmp_path):
    from shallow_ensembles.ipi.driver import serve

    server = FakeServer(tmp_path, [], hold_s=3.0)
    serve(CountingDriver(), unix="sock", sockets_prefix=server.prefix, server_timeout_s=0.3)


def ipi_wrong_atom_count(tmp_path):
    from shallow_ensembles.ipi.driver import serve

    init = b"INIT        " + np.int32(0).tobytes() + np.int32(1).tobytes() + b"x"
    server = FakeServer(tmp_path, [b"STATUS      ", init, b"STATUS      ", _posdata(2)],
                        hold_s=3.0)
    driver = CountingDriver()
    try:
        serve(driver, unix="sock", sockets_prefix=server.prefix, timeout_s=5)
    finally:
        server.thread.join(5)
        # refused before computing or answering: nothing after NEEDINIT, READY; clean close
        assert driver.calls == 0 and server.closed_by_client
        assert server.received == b"NEEDINIT    READY       "


def uncaught_error(tmp_path, monkeypatch, capsys):
    import shallow_ensembles.training as training

    def boom(config, resume=False):
        raise RuntimeError("something\nunexpected")

    monkeypatch.setattr(training, "train", boom)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(train_dict(tmp_path)))
    code = main(["train", str(path)])
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    with pytest.raises(RuntimeError):
        main(["--debug", "train", str(path)])
    return code, err


def stale_temporaries(tmp_path):
    target = tmp_path / "model.pt"
    dead = tmp_path / ".model.pt.999999999.abcd.tmp"  # no such process
    old = tmp_path / ".model.pt.abcd1234.tmp"  # the former naming, from a killed run
    alive = tmp_path / f".model.pt.{os.getppid()}.efgh.tmp"  # a live writer's
    other = tmp_path / ".checkpoint.pt.999999999.abcd.tmp"  # another target's: not ours
    for path in (dead, old, alive, other):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    save_model(tiny_model(), target)
    return sorted(p.name for p in tmp_path.iterdir())


def fsync_before_rename(tmp_path, monkeypatch):
    import shallow_ensembles.fileio as fileio

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(fileio.os, "replace",
                        lambda a, b: (events.append("replace"), real_replace(a, b)))
    with atomic_path(tmp_path / "x.txt") as tmp, open(tmp, "w") as handle:
        handle.write("data")
    assert (tmp_path / "x.txt").read_text() == "data"
    return events


ERROR, WARNING, VALUE = "error", "warning", "value"
CASES = [
    # (id, kind, class, expected text or value, action)
    ("n_members_1", WARNING, UserWarning,
     "model.n_members: 1 gives no uncertainty (σ = 0 for every structure", n_members_one),
    ("n_members_1_calculator", WARNING, UserWarning,
     "the model has 1 member: every uncertainty is 0 (no level or threshold can ever fire)",
     one_member_calculator),
    ("n_members_1_calibration", ERROR, ConfigError,
     "model.n_members: calibration needs a spread, but the model has 1 member (σ = 0)",
     one_member_calibration),
    ("forces_in_kcal_per_mol", WARNING, UserWarning,
     "are they in kcal/mol/Å (23× eV/Å)? Labels must be in eV and eV/Å", forces_in_kcal),
    ("forces_in_hartree_per_bohr", WARNING, UserWarning,
     "are they in Hartree/bohr (1/51 of eV/Å)?", forces_in_hartree),
    ("resume_changed_n_train", ERROR, ConfigError,
     "data.n_train: changed from 28 to 30 since the run in", resume_changed_split),
    ("resume_changed_architecture", ERROR, ConfigError,
     "model.backbone.hidden: changed from (8,) to (16,)", resume_changed_architecture),
    ("corrupt_checkpoint_on_resume", ERROR, ModelFileError,
     "checkpoint.pt: cannot be read as a checkpoint (UnpicklingError: Unsupported global: "
     "GLOBAL print is not allowed); delete it to train from the start",
     corrupt_checkpoint_on_resume),
    ("flipped_model_bytes", ERROR, ModelFileError,
     "the tensors do not match the file's checksum", flipped_model_bytes),
    ("coincident_atoms", ERROR, DataError,
     "key 'positions': atoms 0 and 1 are 0 Å apart (coincident atoms", coincident_atoms),
    ("coincident_atoms_in_a_file", ERROR, DataError,
     "bad.extxyz, frame 0, key 'positions': atoms 0 and 1 are 0 Å apart",
     coincident_atoms_in_a_file),
    ("pbc_TTF_zero_cell", ERROR, DataError,
     "key 'cell': pbc=[True, True, False] but the cell vectors of the periodic axes (ab) are "
     "zero", pbc_two_axes_zero_cell),
    ("pbc_TFF_zero_cell", ERROR, DataError,
     "pbc=[True, False, False] but the cell vectors of the periodic axes (a) are zero",
     pbc_one_axis_zero_cell),
    ("yaml_1e-3_string", VALUE, None, 0.001, yaml_number_as_string),
    ("yaml_word_for_number", ERROR, ConfigError,
     "training.learning_rate: expected a number, got the string 'fast'", yaml_word_as_number),
    ("batch_size_0", ERROR, ConfigError, "training.batch_size: expected a value > 0, got 0",
     batch_size_zero),
    ("negative_learning_rate", ERROR, ConfigError,
     "training.learning_rate: expected a value > 0, got -0.001", negative_learning_rate),
    ("negative_stage_learning_rate", ERROR, ConfigError,
     "stages[0].learning_rate: expected a value > 0 or null, got -0.1",
     negative_stage_learning_rate),
    ("identical_frames_across_sets", WARNING, UserWarning,
     "identical frame(s) are in both the train and the validation set",
     identical_frames_across_sets),
    ("relative_data_path_next_to_config", VALUE, None, "next_to_config.extxyz",
     relative_data_path),
    ("missing_relative_data_path", ERROR, ConfigError,
     "data.train_file: no such file 'nowhere.extxyz': relative paths are read from the config "
     "file's folder", missing_relative_data_path),
    ("text_file_as_model", ERROR, ModelFileError,
     "not a torch file (it starts with b'E = '", text_file_as_model),
    ("pickled_code_as_model", ERROR, ModelFileError,
     "holds Python objects other than tensors and plain data (Unsupported global: GLOBAL "
     "print is not allowed); refusing to load it", pickled_code_as_model),
    ("empty_atoms", ERROR, DataError, "the structure has no atoms (Atoms() is empty)",
     empty_atoms),
    ("md_stop_action_exit_3", VALUE, None, 3, md_stopped_by_action),
    ("md_rollback_exit_3", VALUE, None, 3, md_stopped_by_rollback),
    ("md_guard_exit_4", VALUE, None, 4, md_stopped_by_guard),
    ("md_completed_exit_0", VALUE, None, 0, md_completed),
    ("ipi_server_hangs", ERROR, ConnectionError,
     "the i-PI server sent nothing for 0.3 s (hung or stopped?)", ipi_server_hangs),
    ("ipi_wrong_atom_count", ERROR, DataError,
     "template.extxyz: the i-PI server sent 2 atoms but the template has 3; give the driver "
     "the structure i-PI runs", ipi_wrong_atom_count),
    ("uncaught_error_one_line", VALUE, None,
     (1, "error: RuntimeError: something unexpected (run with --debug for the traceback)\n"),
     uncaught_error),
    ("stale_temporaries", VALUE, None,
     sorted([".checkpoint.pt.999999999.abcd.tmp", f".model.pt.{os.getppid()}.efgh.tmp",
             "model.pt"]), stale_temporaries),
    ("fsync_before_rename", VALUE, None, ["fsync", "replace", "fsync"], fsync_before_rename),
]


@pytest.mark.parametrize(("kind", "cls", "expected", "action"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input(kind, cls, expected, action, tmp_path, monkeypatch, capsys):
    fixtures = {"tmp_path": tmp_path, "monkeypatch": monkeypatch, "capsys": capsys}
    names = action.__code__.co_varnames[:action.__code__.co_argcount]
    run = lambda: action(**{name: fixtures[name] for name in names})  # noqa: E731
    if kind == ERROR:
        with pytest.raises(cls) as info:
            run()
        message = str(info.value)
        assert expected in message, message
        assert "weights_only=False" not in message and "likely succeed" not in message
    elif kind == WARNING:
        with pytest.warns(cls) as records:
            run()
        messages = [str(r.message) for r in records]
        assert any(expected in m for m in messages), messages
    else:
        value = run()
        assert value == expected or (isinstance(expected, str) and str(value).endswith(
            os.sep + expected) and os.path.isabs(value)), value
