"""Reproducible train/validation/test splits saved as JSON."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError


@dataclass(frozen=True)
class Split:
    """Frame indices of each subset, and how they were drawn."""

    train: tuple[int, ...]
    validation: tuple[int, ...]
    test: tuple[int, ...]
    seed: int
    n_frames: int


def make_split(n_frames: int, n_train: int, n_validation: int, n_test: int | None = None,
               seed: int = 0) -> Split:
    """Draw disjoint subsets from a permutation seeded by ``seed``.

    ``n_test=None`` puts every remaining frame into the test set.
    """
    n_test = n_frames - n_train - n_validation if n_test is None else n_test
    if min(n_train, n_validation, n_test) < 0 or n_train + n_validation + n_test > n_frames:
        raise DataError(
            f"cannot split {n_frames} frames into {n_train} train, {n_validation} validation "
            f"and {n_test} test frames"
        )
    perm = np.random.default_rng(seed).permutation(n_frames).tolist()
    a, b = n_train, n_train + n_validation
    return Split(tuple(sorted(perm[:a])), tuple(sorted(perm[a:b])),
                 tuple(sorted(perm[b:b + n_test])), seed, n_frames)


def save_split(split: Split, path: str | Path) -> None:
    """Write ``split`` as JSON."""
    Path(path).write_text(json.dumps(asdict(split), indent=1))


def load_split(path: str | Path, n_frames: int | None = None) -> Split:
    """Read a split written by :func:`save_split`; check it fits ``n_frames`` frames."""
    try:
        data = json.loads(Path(path).read_text())
        split = Split(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    except (OSError, ValueError, TypeError) as err:
        raise DataError(f"not a split file ({err})", file=path) from err
    if n_frames is not None and split.n_frames != n_frames:
        raise DataError(f"split made for {split.n_frames} frames, the data has {n_frames}",
                        file=path)
    return split


def fingerprint(atoms) -> str:
    """Hash of numbers, positions (rounded to 1e-6 Å), cell and pbc: equal for identical frames."""
    digest = hashlib.sha256()
    for array in (atoms.numbers.astype(np.int64), np.round(atoms.positions, 6) + 0.0,
                  np.round(atoms.cell.array, 6) + 0.0, atoms.pbc.astype(np.int8)):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def shared_frames(subsets: dict[str, Sequence]) -> dict[tuple[str, str], int]:
    """Frames (as :func:`fingerprint`) found in two subsets: ``{(name_a, name_b): count}``."""
    prints = {name: {fingerprint(a) for a in frames} for name, frames in subsets.items()}
    names = list(prints)
    overlaps = {}
    for k, a in enumerate(names):
        for b in names[k + 1:]:
            count = len(prints[a] & prints[b])
            if count:
                overlaps[(a, b)] = count
    return overlaps
