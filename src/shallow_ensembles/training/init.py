"""Head initialisation for stage 1 of a protocol, and the closed-form steps on the shared last
layer that stages start and end with. Method notes, "Head initialisation".

Members share everything but their head weights w_m (M, d): the initialisations edit
``model.head.weight`` in place and are deterministic for a given generator;
:func:`centre_features` moves the feature centre (the mean prediction is unchanged) and
:func:`solve_shared_shift` is the one function that moves the shared shift β_Z.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..config import LossConfig
from ..data.batch import Graph, collate
from ..model import ShallowEnsemble
from .llpr import LastLayerPosterior, fit_posterior

LOG = logging.getLogger(__name__)

CENTRING_FRAMES = 256
"""Training frames (the first ones, in a fixed order) over which the feature centre is taken."""


def head_weights(model: ShallowEnsemble) -> torch.Tensor:
    """w_m of every head, (M, d)."""
    return model.head.weight.detach().clone()


def set_head_weights(model: ShallowEnsemble, weights: torch.Tensor) -> None:
    """Write w (M, d) into the heads."""
    with torch.no_grad():
        model.head.weight.copy_(weights)


@torch.no_grad()
def centre_features(model: ShallowEnsemble, graphs: Sequence[Graph], batch_size: int = 16) -> float:
    """Centre the last-layer features per species on ``graphs`` (the mean is unchanged).

    c_Z = mean of g_i over the atoms of species Z in the first ``CENTRING_FRAMES`` graphs;
    species absent there keep their centre. Returns the largest move of a centre component.
    """
    graphs = list(graphs)[:CENTRING_FRAMES]
    sums = counts = None
    was_training = model.training
    model.eval()
    for start in range(0, len(graphs), batch_size):
        batch = collate(graphs[start:start + batch_size], dtype=model.dtype).to(
            model.feature_centre.device)
        s, c = model.species_feature_sums(batch)
        sums, counts = (s, c) if sums is None else (sums + s, counts + c)
    model.train(was_training)
    if sums is None:
        return 0.0
    present = counts > 0
    centre = model.feature_centre.clone()
    centre[present] = sums[present] / counts[present, None]
    return model.centre_features(centre)


def random_heads(model: ShallowEnsemble, generator: torch.Generator) -> None:
    """Independent random heads (uniform ±1/√d, as ``nn.Linear``)."""
    d = model.n_last
    bound = 1.0 / d**0.5
    weights = torch.rand(model.n_members, d, generator=generator, dtype=model.dtype) * 2 - 1
    set_head_weights(model, weights * bound)


def isotropic_heads(model: ShallowEnsemble, scale: float, generator: torch.Generator) -> None:
    """w_m = w_MAP + s ε_m around the mean head, re-centred (mean w_m = w_MAP)."""
    weights = head_weights(model)
    mean = weights.mean(0, keepdim=True)
    noise = scale * torch.randn(weights.shape, generator=generator, dtype=weights.dtype)
    set_head_weights(model, mean + noise - noise.mean(0, keepdim=True))


@torch.no_grad()
def linear_targets(model: ShallowEnsemble, graphs: Sequence[Graph], batch_size: int = 16):
    """Structure features x (S, d), per-atom targets y = (E − shared)/N (S,) and N (S,)."""
    xs, ys, ns = [], [], []
    for start in range(0, len(graphs), batch_size):
        batch = collate(graphs[start:start + batch_size], dtype=model.dtype)
        n = batch.n_atoms.to(torch.float64)
        xs.append(model.structure_features(batch))
        ys.append(((batch.energy - model.shared_energy(batch)) / n).to(model.dtype))
        ns.append(n)
    return torch.cat(xs), torch.cat(ys), torch.cat(ns)


def llpr_heads(model: ShallowEnsemble, train: Sequence[Graph], validation: Sequence[Graph],
               generator: torch.Generator, regularizer: float | None = None,
               force_rows: bool = False, loss: LossConfig | None = None) -> LastLayerPosterior:
    """Sample heads from the last-layer Laplace posterior around the mean head (MAP).

    Φ holds the rows of the stage-1 (MSE) loss's Gauss–Newton matrix, weighted as the loss
    weights them: energy rows √(w_E N_k^(−a) / S) ∂E_k/∂w = √(w_E N_k^(2−a) / S) x_k and, with
    ``force_rows``, one row √(w_F / (3 N_atoms)) ∂F_iα/∂w per force component (the feature
    Jacobian from :meth:`ShallowEnsemble.row_gradients`). Only their relative weight
    matters: ς and α are chosen on validation.
    """
    centre_features(model, train)
    w_map = head_weights(model).mean(0)
    x_val, y_val, _ = linear_targets(model, validation)
    residual = y_val - x_val @ w_map
    post = fit_posterior(llpr_rows(model, train, loss, force_rows), x_val, residual, regularizer)
    set_head_weights(model, post.sample(w_map, model.n_members, generator))
    return post


def llpr_rows(model: ShallowEnsemble, train: Sequence[Graph], loss: LossConfig | None = None,
              force_rows: bool = False) -> torch.Tensor:
    """Φ of :func:`llpr_heads`: loss-weighted energy rows (S, d) and, with ``force_rows``, the
    force rows (3 N_atoms, d) below them."""
    loss = loss or LossConfig()
    x_train, _, n_train = linear_targets(model, train)
    energy_weight = (loss.energy_weight * n_train ** (2 - loss.atom_exponent) / len(train)).sqrt()
    rows = [x_train * energy_weight[:, None].to(x_train)]
    if force_rows:
        n_components = 3 * float(n_train.sum())
        scale = (loss.forces_weight / n_components) ** 0.5
        rows += [scale * feature_jacobian(model, g) for g in train]
    return torch.cat(rows)


def feature_jacobian(model: ShallowEnsemble, graph: Graph) -> torch.Tensor:
    """Rows ∂G/∂R of one structure, (3N, d): one per force component."""
    batch = collate([graph], dtype=model.dtype)
    basis = torch.eye(model.n_last, dtype=model.dtype)
    d_pos, _ = model.row_gradients(batch, basis)
    return d_pos.detach().reshape(d_pos.shape[0], -1).T


def subsample_heads(model: ShallowEnsemble, train: Sequence[Graph], generator: torch.Generator,
                    ridge: float = 1e-6) -> None:
    """Heads from ridge fits on bootstrap resamples (backbone frozen), re-centred on the MAP.

    ŵ_m = argmin Σ_{k ∈ B_m} (w·x_k − y_k)² + ridge · tr(XᵀX)/d · |w|², then
    w_m = w_MAP + ŵ_m − mean ŵ: the bootstrap sets the spread, the trained head the mean
    (ridge fits to energies alone would otherwise replace the force-trained mean).
    """
    centre_features(model, train)
    w_map = head_weights(model).mean(0)
    x, y, _ = linear_targets(model, train)
    n, dim = x.shape
    fits = []
    for _ in range(model.n_members):
        idx = torch.randint(0, n, (n,), generator=generator)
        xb, yb = x[idx], y[idx]
        gram = xb.T @ xb
        lam = ridge * float(torch.trace(gram)) / dim
        fits.append(torch.linalg.solve(gram + lam * torch.eye(dim, dtype=x.dtype), xb.T @ yb))
    fits = torch.stack(fits)
    set_head_weights(model, w_map + fits - fits.mean(0, keepdim=True))


@torch.no_grad()
def solve_shared_shift(model: ShallowEnsemble, graphs: Sequence[Graph], loss: LossConfig,
                       batch_size: int = 16) -> torch.Tensor:
    """Move the shared per-element shift β_Z to the optimum of an NLL stage's energy terms.

    Forces do not depend on β_Z, so in NLL stages only the energy terms pull on it, weakly,
    while the backbone keeps moving the mean energy: the mean energy then drifts by a constant
    per element (+3 meV/atom on water after a two-step fine-tune). With the members' spread
    fixed, the energy NLL plus the MSE anchor are quadratic in β: the optimum solves the
    weighted least squares Σ_k u_k x_kZ (r_k − x_k·Δβ) = 0 with x_kZ = n_kZ s_Z (atoms of
    element Z times its scale), r_k = E_k − Ē_k and u_k = N_k^(−a_NLL)/σ_k² + 2 λ N_k^(−a)
    (the derivatives of ½ r²/σ² and of the anchor λ r² N^(−a)). At that optimum the step is
    zero: it changes a model only where training left β short of it. Returns Δβ
    (n_species,), eV per unit scale.
    """
    rows, residuals, weights = [], [], []
    for start in range(0, len(graphs), batch_size):
        batch = collate(graphs[start:start + batch_size], dtype=model.dtype)
        totals = model.predict(batch, forces=False)["energy_ensemble"].detach()
        z = model.species_index[batch.numbers]
        scale = model.scale.detach()[z].double()
        x = scale.new_zeros(batch.n_structures, len(model.species)).index_put_(
            (batch.structure, z), scale, accumulate=True)
        n = batch.n_atoms.double()
        variance = totals.var(1, correction=1).clamp_min(loss.variance_floor)
        rows.append(x)
        residuals.append(batch.energy - totals.mean(1))
        weights.append(n ** -loss.nll_atom_exponent / variance
                       + 2 * loss.energy_anchor * n ** -loss.atom_exponent)
    x, r, u = torch.cat(rows), torch.cat(residuals), torch.cat(weights).sqrt()
    present = x.abs().sum(0) > 0
    delta = torch.zeros(len(model.species), dtype=torch.float64)
    solution = torch.linalg.lstsq(u[:, None] * x[:, present], (u * r)[:, None]).solution
    delta[present] = solution[:, 0]
    model.shift += delta.to(model.shift)
    return delta
