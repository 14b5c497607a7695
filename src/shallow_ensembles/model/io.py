"""Model files: one ``.pt`` with weights, hyperparameters, species, calibration and provenance.

Layout (a plain dict, loadable with ``torch.load(weights_only=True)``)::

    format: "shallow-ensembles-model"    format_version: 2
    hyperparameters: ModelConfig dict    species: [Z, ...]    cutoff_A: float
    units: {"energy": "eV", "length": "Å", "forces": "eV/Å", "stress": "eV/Å³"}
    calibration: {"alpha_energy": float, "alpha_forces": float}
    provenance: {"package_version", "torch_version", "data_sha256", "protocol", ...}
    state_dict: {...}
    tensor_sha256: hex SHA-256 of the architecture, species and every tensor (name, dtype, shape,
                   bytes); verified on load, so flipped bytes are an error, not a wrong energy
                   (files written before it was added load without the check)
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import torch

from ..config import from_dict
from ..errors import ConfigError, ModelFileError
from ..fileio import atomic_path
from .config import ModelConfig
from .ensemble import ShallowEnsemble

FORMAT = "shallow-ensembles-model"
FORMAT_VERSION = 2
"""2: heads without per-member biases, a shared per-species shift and a feature centre (1: heads
with per-member biases, whose members carried a constant offset per composition; retrain)."""
UNITS = {"energy": "eV", "length": "Å", "forces": "eV/Å", "stress": "eV/Å³"}


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (data provenance)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(model: ShallowEnsemble, path: str | Path, provenance: dict | None = None) -> Path:
    """Write ``model`` atomically (temporary file in the same folder, then rename)."""
    from .. import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = getattr(model, "provenance", {}) or {}
    prov = {**old, **(provenance or {}),
            "package_version": str(__version__), "torch_version": str(torch.__version__)}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hyperparameters": model.hyperparameters,
        "species": list(model.species),
        "cutoff_A": model.cutoff,
        "units": UNITS,
        "calibration": {"alpha_energy": float(model.alpha_energy),
                        "alpha_forces": float(model.alpha_forces),
                        "alpha_forces_per_element": {
                            int(z): float(a) for z, a in
                            zip(model.species, model.alpha_forces_species.tolist(), strict=True)}},
        "provenance": prov,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    payload["tensor_sha256"] = tensor_checksum(payload)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    model.provenance = prov
    return path


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ShallowEnsemble:
    """Read a model file written by :func:`save_model` (``weights_only=True``).

    Raises
    ------
    ModelFileError for a missing, truncated, corrupt or foreign file.
    """
    path = Path(path)
    payload = _read_payload(path)
    try:
        config = from_dict(ModelConfig, payload["hyperparameters"], "hyperparameters")
        model = ShallowEnsemble.from_config(config, payload["species"])
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ConfigError, RuntimeError) as err:
        raise ModelFileError(path, f"inconsistent model file: {err}") from err
    model.provenance = dict(payload.get("provenance", {}))
    model.eval()
    return model.to(device)


def load_initial_model(path: str | Path, n_members: int, dtype: str = "float32"
                       ) -> ShallowEnsemble:
    """The starting model of ``init_model``: a model file of this package, or a MACE model file
    (``mace_run_train``'s ``NAME.model``), imported with ``n_members`` identical heads.

    Only here is a foreign file unpickled, and only when its pickle names a ``mace.modules``
    class (checked without unpickling); a model file of this package loads ``weights_only``.
    """
    from .mace_backbone import import_mace_model, is_mace_file

    if Path(path).is_file() and is_mace_file(path):
        return import_mace_model(path, n_members, dtype)
    return load_model(path)


def tensor_checksum(payload: dict) -> str:
    """Hex SHA-256 of ``hyperparameters``, ``species`` and the ``state_dict`` tensors."""
    digest = hashlib.sha256(json.dumps([payload["hyperparameters"], list(payload["species"])],
                                       sort_keys=True, default=str).encode())
    for name, tensor in sorted(payload["state_dict"].items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()


def _read_payload(path: Path) -> dict:
    """The checked dictionary of a model file (format, version, checksum); ModelFileError."""
    if not path.is_file():
        raise ModelFileError(path, "no such model file")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch's zip format, legacy pickle
        raise ModelFileError(path, f"not a torch file (it starts with {head!r}, a model file "
                             "is a zip archive); pass the model.pt written by "
                             "'shallow-ensembles train' or save_model")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message suggests weights_only=False, which would run arbitrary code
        raise ModelFileError(path, "holds Python objects other than tensors and plain data "
                             f"({load_error_summary(err)}); refusing to load it: a model file "
                             "written by save_model never does") from None
    except Exception as err:  # noqa: BLE001 - torch raises KeyError, RuntimeError, ... for junk
        summary = f"{type(err).__name__}: {load_error_summary(err)}"
        raise ModelFileError(path, "cannot be read as a model file (truncated, corrupt or not "
                             f"a torch file: {summary})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(path, "not a shallow-ensembles model file (no 'format' "
                             f"'{FORMAT}'); refusing to load it")
    version = payload.get("format_version")
    if version == 1:
        raise ModelFileError(path, "format_version 1 (heads with per-member biases, whose "
                             "energy σ was mostly a constant offset per composition) is no longer "
                             "read; retrain it with this version (the data and config suffice)")
    if version != FORMAT_VERSION:
        raise ModelFileError(path, f"format_version {version} is not supported "
                             f"(this package reads {FORMAT_VERSION}); upgrade shallow-ensembles")
    expected = payload.get("tensor_sha256")
    try:
        actual = tensor_checksum(payload) if expected is not None else None
    except (KeyError, TypeError, AttributeError, RuntimeError) as err:
        raise ModelFileError(path, f"inconsistent model file: {err}") from err
    if expected is not None and actual != expected:
        raise ModelFileError(path, "the tensors do not match the file's checksum (the file was "
                             "corrupted or edited after it was saved); use an intact copy or "
                             "retrain")
    return payload


def load_error_summary(err: BaseException) -> str:
    """The gist of a ``torch.load`` error, without torch's advice to use weights_only=False.

    For torch's weights-only refusal that is the ``Unsupported global: GLOBAL x`` part.
    """
    text = str(err).strip() or repr(err)
    for line in text.splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].split(" was not an allowed")[0] \
                .strip() + " is not allowed"
    first = text.splitlines()[0]
    return "unpickling refused" if "weights_only" in first.lower() else first
