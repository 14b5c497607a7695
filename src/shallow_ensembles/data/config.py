"""The ``data`` section of a training config: files, split and label keys."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

from ..errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is split."""

    train_file: str = ""
    """ASE-readable file with the training frames (and the validation/test frames if no
    separate files are given)."""
    validation_file: str | None = None
    """Separate validation file; null splits ``train_file``."""
    test_file: str | None = None
    """Separate test file; null splits ``train_file`` (the remainder)."""
    n_train: int | None = None
    """Frames for training when splitting; null: 80 % of the frames."""
    n_validation: int | None = None
    """Frames for validation when splitting; null: 10 % of the frames (at least 1)."""
    n_test: int | None = None
    """Frames for testing when splitting; null: the rest."""
    split_seed: int = 0
    """Seed of the random split (saved to ``split.json`` in the run folder)."""
    split_file: str | None = None
    """Reuse a saved split (JSON written by a previous run)."""
    energy_key: str | None = None
    """Energy label key; null: the calculator results, then ``info['energy']``."""
    forces_key: str | None = None
    """Forces label key; null: the calculator results, then ``arrays['forces']``."""
    stress_key: str | None = None
    """Stress label key (eV/Å³); null: the calculator results if present."""


DATA_PATH_KEYS = ("train_file", "validation_file", "test_file", "split_file")
"""Fields of :class:`DataConfig` holding file paths (read relative to the config's folder)."""


def resolve_data_paths(data: dict, base: Path) -> dict:
    """``data`` (a YAML ``data:`` mapping) with relative file paths read from ``base``.

    A relative path is taken from the config file's folder ``base``; if the file is not
    there but exists relative to the current folder (configs written before this rule), that
    one is used with a warning. ASE's ``@index`` suffix is kept. A file found in neither place
    is a :class:`ConfigError` that names both places.
    """
    data = dict(data)
    for key in DATA_PATH_KEYS:
        value = data.get(key)
        if not isinstance(value, str) or not value or Path(value).is_absolute():
            continue
        name, at, index = value.partition("@")
        if (base / name).exists():
            data[key] = os.path.normpath(base / name) + at + index
        elif Path(name).exists():
            warnings.warn(f"data.{key}: {name} is not in the config's folder {base}; using "
                          f"{Path(name).resolve()} from the current folder (write the path "
                          "relative to the config file)", UserWarning, stacklevel=2)
        else:
            raise ConfigError(f"data.{key}", f"no such file {name!r}: relative paths are read "
                              f"from the config file's folder {base} (also tried the current "
                              f"folder {Path.cwd()}); fix the path or make it absolute")
    return data
