"""Choosing a diverse batch of candidates: farthest-point sampling on last-layer features, or
the highest σ with de-duplication.

Per-structure features are the mean (or sum) over atoms of the model's last-layer features
g_i (the vectors the heads act on), so distances measure how differently the model sees two
structures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms

from .. import conventions as K
from ..data.batch import Batch
from ..model import ShallowEnsemble
from .config import SelectionConfig


@torch.no_grad()
def structure_features(model: ShallowEnsemble, frames: Sequence[Atoms], reduce: str = "mean",
                       batch_size: int = 32) -> np.ndarray:
    """Per-structure last-layer features, shape (S, d), float64 (units of the features).

    Parameters
    ----------
    model : the model whose ``last_layer_features`` (N, d) are reduced
    frames : S structures with elements of the model
    reduce : ``"mean"`` or ``"sum"`` over each structure's atoms
    batch_size : structures per forward pass
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    parts = []
    for start in range(0, len(frames), batch_size):
        batch = Batch.from_atoms(list(frames[start:start + batch_size]), model.cutoff,
                                 dtype=model.dtype).to(next(model.parameters()).device)
        g = model.last_layer_features(batch)
        sums = g.new_zeros(batch.n_structures, g.shape[1]).index_add(0, batch.structure, g)
        if reduce == "mean":
            sums = sums / batch.n_atoms[:, None].to(g.dtype)
        parts.append(sums.double().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, model.n_last))


def farthest_point_sampling(features: np.ndarray, n: int,
                            reference: np.ndarray | None = None) -> list[int]:
    """Greedy farthest-point sampling.

    Each pick maximises the Euclidean distance to the nearest of the ``reference`` points and
    the points picked so far (ties: the lowest index). Without reference points the first pick
    is the point farthest from the mean. Points at zero distance (duplicates) are never picked,
    so fewer than ``n`` indices come back when the pool has fewer distinct points.

    Parameters
    ----------
    features : shape (S, d), the pool
    n : points to pick
    reference : shape (R, d), points already known (e.g. the training set), or None

    Returns
    -------
    list of distinct indices into ``features``, in the order picked
    """
    features = np.asarray(features, dtype=float)
    if len(features) == 0 or n < 1:
        return []
    tolerance = 1e-12 * max(float(np.abs(features).max()), 1e-300)
    distance = None
    if reference is not None and len(reference):
        distance = _min_distance(features, np.asarray(reference, dtype=float))
    picked: list[int] = []
    while len(picked) < n:
        if distance is None:  # no reference: start from the point farthest from the mean
            best = int(np.argmax(_min_distance(features, features.mean(0, keepdims=True))))
            distance = np.full(len(features), np.inf)
        else:
            best = int(np.argmax(distance))
            if distance[best] <= tolerance:
                break
        picked.append(best)
        distance = np.minimum(distance, np.linalg.norm(features - features[best], axis=1))
    return picked


def highest_sigma(sigma: np.ndarray, features: np.ndarray, n: int,
                  min_distance: float = 0.0) -> list[int]:
    """The ``n`` largest σ, skipping frames within ``min_distance`` of one already picked.

    Parameters
    ----------
    sigma : shape (S,), the ranking uncertainty (any unit)
    features : shape (S, d), per-structure features for the de-duplication
    n : frames to pick
    min_distance : absolute feature distance below which a frame is a duplicate

    Returns
    -------
    list of distinct indices, largest σ first (ties: the lowest index)
    """
    features = np.asarray(features, dtype=float)
    picked: list[int] = []
    for i in np.argsort(-np.asarray(sigma, dtype=float), kind="stable"):
        if len(picked) == n:
            break
        if picked and np.linalg.norm(features[picked] - features[i], axis=1).min() \
                <= min_distance:
            continue
        picked.append(int(i))
    return picked


def select(model: ShallowEnsemble, pool: Sequence[Atoms], training: Sequence[Atoms],
           config: SelectionConfig) -> list[int]:
    """Indices of the frames of ``pool`` to label, by ``config.kind``."""
    if not pool:
        return []
    features = structure_features(model, pool, config.features)
    if config.kind == "farthest_point":
        reference = structure_features(model, training, config.features)
        return farthest_point_sampling(features, config.n, reference)
    key = K.MAX_FORCES_UNCERTAINTY if config.sigma == "forces" else K.ENERGY_UNCERTAINTY_PER_ATOM
    sigma = np.array([float(frame.info.get(key, np.nan)) for frame in pool])
    if np.isnan(sigma).any():
        sigma = frame_sigma(model, pool, config.sigma)
    return highest_sigma(sigma, features, config.n,
                         config.min_distance * median_distance(features))


def median_distance(features: np.ndarray) -> float:
    """Median pairwise Euclidean distance of the rows of ``features`` (0 for < 2 rows)."""
    if len(features) < 2:
        return 0.0
    diff = np.linalg.norm(features[:, None, :] - features[None, :, :], axis=-1)
    return float(np.median(diff[np.triu_indices(len(features), k=1)]))


def _min_distance(points: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Distance of every row of ``points`` (S, d) to its nearest row of ``others`` (R, d)."""
    out = np.full(len(points), np.inf)
    for start in range(0, len(others), 256):
        block = others[start:start + 256]
        out = np.minimum(out, np.linalg.norm(points[:, None] - block[None], axis=-1).min(1))
    return out


def frame_sigma(model: ShallowEnsemble, frames: Sequence[Atoms], quantity: str) -> np.ndarray:
    """Calibrated σ of each frame, shape (S,): max_i ‖σ(F_i)‖ (eV/Å) for ``"forces"``, σ_E/N
    (eV/atom) for ``"energy_per_atom"``."""
    from ..calibration import predict_dataset
    from ..data.batch import graphs_from_atoms

    pred = predict_dataset(model, graphs_from_atoms(frames, model.cutoff),
                           member_forces=quantity != "energy_per_atom", calibrated=True)
    if quantity == "energy_per_atom":
        return pred["energy_sigma"] / pred["n_atoms"]
    return K.max_forces_uncertainty(pred["forces_sigma"], pred["n_atoms"])
