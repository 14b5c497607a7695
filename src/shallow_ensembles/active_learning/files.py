"""Frame files and small atomic writes of an active-learning run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms

from ..fileio import atomic_path
from .reference import from_reference_keys


def split_off(frames: list[Atoms], fraction: float, seed: int,
              minimum: int = 0) -> tuple[list[Atoms], list[Atoms]]:
    """(train, validation): a seeded ``fraction`` of ``frames`` (at least ``minimum``) moved to
    validation."""
    n_val = min(max(int(round(fraction * len(frames))), minimum), len(frames) - minimum)
    chosen = set(np.random.default_rng(seed).permutation(len(frames))[:n_val].tolist())
    return ([f for i, f in enumerate(frames) if i not in chosen],
            [f for i, f in enumerate(frames) if i in chosen])


def split_spec(spec: str) -> tuple[Path, str]:
    """``file@index`` → (file, ASE index string); a plain file → (file, ``":"``)."""
    path = Path(spec)
    if path.exists() or "@" not in spec:
        return path, ":"
    file, index = spec.rsplit("@", 1)
    return Path(file), index


def write_frames(path: Path, frames: list[Atoms], labelled: bool = True) -> Path:
    """Write extxyz atomically; ``labelled`` frames (``REF_*`` keys) get energy and forces as
    standard extxyz labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = [from_reference_keys(f) for f in frames] if labelled else list(frames)
    with atomic_path(path) as tmp:
        ase.io.write(tmp, out, format="extxyz")
    return path


def atomic_copy(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` through a temporary file in the target's folder."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(plain(data), indent=1))


def plain(value):
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
