"""Model files: one ``.pt`` with weights, hyperparameters, species, calibration and provenance.

Layout (a plain dict, loadable with ``torch.load(weights_only=True)``)::

    format: "shallow-ensembles-model"    format_version: 2
    hyperparameters: ModelConfig dict    species: [Z, ...]    cutoff_A: float
    units: {"energy": "eV", "length": "Å", "forces": "eV/Å", "stress": "eV/Å³"}
    calibration: {"alpha_energy": float, "alpha_forces": float}
    provenance: {"package_version", "torch_version", "data_sha256", "protocol", ...}
    state_dict: {...}
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import torch

from ..config import ModelConfig, from_dict
from ..errors import ConfigError, ModelFileError
from ..fileio import atomic_path
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
    if not path.is_file():
        raise ModelFileError(path, "no such model file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            OSError, AttributeError) as err:
        raise ModelFileError(
            path, f"cannot be read as a model file (truncated or corrupt?): {err}") from err
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
    try:
        config = from_dict(ModelConfig, payload["hyperparameters"], "hyperparameters")
        model = ShallowEnsemble.from_config(config, payload["species"])
        model.load_state_dict(payload["state_dict"])
    except (KeyError, ConfigError, RuntimeError) as err:
        raise ModelFileError(path, f"inconsistent model file: {err}") from err
    model.provenance = dict(payload.get("provenance", {}))
    model.eval()
    return model.to(device)
