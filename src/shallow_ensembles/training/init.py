"""Head initialisation for stage 1 of a protocol, and the closed-form steps on the shared last
layer that stages start and end with. docs/method.md, "Head initialisation".

Members share everything but their head weights w_m (M, d): the initialisations edit
``model.head.weight`` in place and are deterministic for a given generator;
:func:`centre_features` moves the feature centre (the mean prediction is unchanged) and
:func:`solve_shared_last_layer` is the one function that moves the shared shift β_Z (and,
after NLL stages, the mean head).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..data.batch import Graph, collate
from ..model import ShallowEnsemble
from . import losses
from .config import LossConfig
from .llpr import LastLayerPosterior, fit_posterior
from .stages import STAGES

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
def centre_features(model: ShallowEnsemble, graphs: Sequence[Graph], batch_size: int = 16,
                    weighting: str = "atoms") -> float:
    """Centre the last-layer features per species on ``graphs`` (the mean is unchanged).

    ``weighting="atoms"`` (default): c_Z = mean of g_i over the atoms of species Z in the
    first ``CENTRING_FRAMES`` graphs. ``weighting="frames"``: every atom weighted by 1/N_k of
    its frame, c_Z = Σ_k Σ_{i ∈ k, Z} g_i / N_k / Σ_k n_kZ / N_k; then each member's per-atom
    deviation (E_km − Ē_k)/N_k = Σ_Z (n_kZ/N_k) s_Z (w_m − w̄)·(ḡ_kZ − c_Z) averages to zero
    over these frames whatever the heads and compositions: no per-member constant per atom,
    the quantity :func:`~shallow_ensembles.metrics.offset_share` measures. Where all frames
    have one size the two are the same (and computed alike: bit for bit "atoms"). The
    stages choose with ``StageConfig.centring`` (measurements there).
    Species absent there keep their centre. Returns the largest move of a centre component.
    """
    if weighting not in ("atoms", "frames"):
        raise ValueError(f"weighting must be 'atoms' or 'frames', got {weighting!r}")
    graphs = list(graphs)[:CENTRING_FRAMES]
    if len({len(g.numbers) for g in graphs}) == 1:
        weighting = "atoms"  # the same centre; this way bit for bit the same as "atoms"
    sums = counts = None
    was_training = model.training
    model.eval()
    for start in range(0, len(graphs), batch_size):
        batch = collate(graphs[start:start + batch_size], dtype=model.dtype).to(
            model.feature_centre.device)
        s, c = (model.species_feature_sums(batch) if weighting == "atoms"
                else _frame_weighted_feature_sums(model, batch))
        sums, counts = (s, c) if sums is None else (sums + s, counts + c)
    model.train(was_training)
    if sums is None:
        return 0.0
    present = counts > 0
    centre = model.feature_centre.clone()
    centre[present] = sums[present] / counts[present, None]
    return model.centre_features(centre)


def _frame_weighted_feature_sums(model: ShallowEnsemble, batch) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """Per-species Σ g_i / N_k (n_species, d) and Σ 1 / N_k (n_species,) over a batch."""
    features = model.last_layer_features(batch)
    z = model.species_index[batch.numbers]
    weight = 1.0 / batch.n_atoms.to(features.dtype)[batch.structure]  # (N,)
    n_species = len(model.species)
    sums = features.new_zeros(n_species, features.shape[1]).index_add(
        0, z, weight[:, None] * features)
    counts = features.new_zeros(n_species).index_add(0, z, weight)
    return sums, counts


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
               force_rows: bool = False, loss: LossConfig | None = None,
               centring: str = "atoms") -> LastLayerPosterior:
    """Sample heads from the last-layer Laplace posterior around the mean head (MAP).

    Φ holds the rows of the stage-1 (MSE) loss's Gauss–Newton matrix, weighted as the loss
    weights them: energy rows √(w_E N_k^(−a) / S) ∂E_k/∂w = √(w_E N_k^(2−a) / S) x_k and, with
    ``force_rows``, one row √(w_F / (3 N_atoms)) ∂F_iα/∂w per force component (the feature
    Jacobian from :meth:`ShallowEnsemble.row_gradients`). Only their relative weight
    matters: ς and α are chosen on validation. The features are centred first
    (:func:`centre_features` with ``weighting=centring``).
    """
    centre_features(model, train, weighting=centring)
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
                    ridge: float = 1e-6, centring: str = "atoms") -> None:
    """Heads from ridge fits on bootstrap resamples (backbone frozen), re-centred on the MAP.

    ŵ_m = argmin Σ_{k ∈ B_m} (w·x_k − y_k)² + ridge · tr(XᵀX)/d · |w|², then
    w_m = w_MAP + ŵ_m − mean ŵ: the bootstrap sets the spread, the trained head the mean
    (ridge fits to energies alone would otherwise replace the force-trained mean). The
    features are centred first (:func:`centre_features` with ``weighting=centring``).
    """
    centre_features(model, train, weighting=centring)
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
def solve_shared_last_layer(model: ShallowEnsemble, graphs: Sequence[Graph], loss: LossConfig,
                            kind: str, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the shared last layer (mean head w̄ and shift β_Z) to the optimum of an NLL stage's
    loss with the members' deviations w_m − w̄, hence every σ_E and σ_F, held fixed.

    Moving every head by δ and β by Δβ moves each mean energy by N_k x_k·δ + Σ_Z n_kZ s_Z Δβ_Z
    (``structure_features`` x_k) and each mean force by −J δ (J = ∂G/∂R, ``feature_jacobian``)
    and changes no σ, so the stage loss is quadratic in (δ, Δβ): its optimum solves the normal
    equations Σ c (a·(δ, Δβ) − r) a = 0 over the rows of the loss, with weights
    c = w_E [½ b_k N^(−a_NLL)/σ_k² + λ N^(−a)] / S for energies (``kind`` energy-nll and
    force-nll: the NLL and the anchor λ; b_k: the β-NLL weights of ``loss.energy_nll_beta``,
    normalised by the mean variance over ``graphs``) and, for force components,
    c = w_F ½ P / (3 N_atoms) with P the precision of the force NLL (``loss.force_nll``: 1/σ²
    per component, isotropic, or the full 3×3) in force-nll stages, c = w_F / (3 N_atoms) for
    the mean-force MSE of energy-nll stages.
    Near-null directions (features that move neither energies nor forces) get no step
    (pseudo-inverse, relative cut-off 1e-10). At the optimum the step is zero: it changes a
    model only where training left the shared last layer short of it. Why: in NLL stages the
    energy terms pull weakly and the backbone keeps moving; on carbon the crystalline frames'
    mean energy wandered by ±50–100 meV/atom from epoch to epoch and the kept epoch's test
    RMSE_E was 27–44 meV/atom against 17 for MSE (README, "Choosing the defaults"); without
    the β part the two-step fine-tune left water's mean energy off by +3.1 meV/atom.

    With a stress term (``loss.stress_weight`` > 0), or a backbone without closed-form feature
    derivatives, only β is solved (the energy rows alone: forces and stresses do not depend on
    it). Returns (δ (d,), Δβ (n_species,)).
    """
    from ..model.backbone import PowerSpectrumBackbone

    with_head = loss.stress_weight == 0 and isinstance(model.backbone, PowerSpectrumBackbone)
    d, n_species = model.n_last, len(model.species)
    size = d + n_species if with_head else n_species
    hessian = torch.zeros(size, size, dtype=torch.float64)
    gradient = torch.zeros(size, dtype=torch.float64)
    n_components = 3 * sum(int(g.numbers.shape[0]) for g in graphs)
    mean_variance = _mean_energy_variance(model, graphs, loss, batch_size)
    for start in range(0, len(graphs), batch_size):
        batch = collate(graphs[start:start + batch_size], dtype=model.dtype)
        member = with_head and STAGES[kind].member_forces
        out = model.predict(batch, forces=with_head and not member, member_forces=member)
        totals = out["energy_ensemble"].detach()
        n = batch.n_atoms.double()
        z = model.species_index[batch.numbers]
        scale = model.scale.detach()[z].double()
        rows = scale.new_zeros(batch.n_structures, n_species).index_put_(
            (batch.structure, z), scale, accumulate=True)
        if with_head:
            x = model.structure_features(batch).detach().double()
            rows = torch.cat([n[:, None] * x, rows], 1)
        variance = totals.var(1, correction=1).clamp_min(loss.variance_floor)
        beta = (variance / mean_variance) ** loss.energy_nll_beta  # β-NLL weights
        anchor = losses.anchor_weights(n, mean_variance, loss)
        weight = loss.energy_weight / len(graphs) * (
            0.5 * beta * n ** -loss.nll_atom_exponent / variance + anchor)
        residual = batch.energy - totals.mean(1)
        hessian += rows.T @ (weight[:, None] * rows)
        gradient += rows.T @ (weight * residual)
        if with_head:
            forces = out["forces_ensemble"].detach().double() if member else None
            mean = forces.mean(0) if member else out["forces"].detach().double()
            precision = _force_precision(forces, loss) if member else None
            offsets = [0, *torch.cumsum(batch.n_atoms, 0).tolist()]
            for k, graph in enumerate(graphs[start:start + batch_size]):
                atoms = slice(offsets[k], offsets[k + 1])
                jac = feature_jacobian(model, graph).double().reshape(-1, 3, d)  # (N, 3, d)
                r = (batch.forces[atoms].double() - mean[atoms])  # (N, 3)
                if member:  # ½ (r + J δ)ᵀ P (r + J δ) per atom
                    pj = precision[atoms] @ jac  # (N, 3, d)
                    h, g = 0.5 * torch.einsum("nad,nae->de", jac, pj), -0.5 * torch.einsum(
                        "nad,na->d", pj, r)
                else:
                    h, g = torch.einsum("nad,nae->de", jac, jac), -torch.einsum("nad,na->d", jac, r)
                hessian[:d, :d] += loss.forces_weight * h / n_components
                gradient[:d] += loss.forces_weight * g / n_components
    step = torch.linalg.pinv(hessian, rtol=1e-10, hermitian=True) @ gradient
    delta, shift = (step[:d], step[d:]) if with_head else (step.new_zeros(d), step)
    with torch.no_grad():
        model.head.weight += delta.to(model.head.weight)
        model.shift += shift.to(model.shift)
    return delta, shift


def _mean_energy_variance(model: ShallowEnsemble, graphs: Sequence[Graph], loss: LossConfig,
                          batch_size: int) -> torch.Tensor:
    """Mean over ``graphs`` of the floored member-energy variance (the normaliser of β-NLL
    weights and of a variance-scaled anchor; the training loss takes it per batch), eV²; 1 when
    neither is used."""
    if not loss.energy_nll_beta and loss.energy_anchor_scale == "absolute":
        return torch.tensor(1.0, dtype=torch.float64)
    total = torch.tensor(0.0, dtype=torch.float64)
    for start in range(0, len(graphs), batch_size):
        batch = collate(graphs[start:start + batch_size], dtype=model.dtype)
        totals = model.predict(batch, forces=False)["energy_ensemble"].detach()
        total += totals.var(1, correction=1).clamp_min(loss.variance_floor).sum()
    return total / len(graphs)


def _force_precision(forces: torch.Tensor, loss: LossConfig) -> torch.Tensor:
    """Per-atom 3×3 precision of the force NLL (``loss.force_nll``), (N, 3, 3), from member
    forces (M, N, 3): the matrix P of ½ rᵀ P r in :func:`~.losses.force_nll`."""
    from .losses import _cholesky_3x3

    variance = forces.var(0, correction=1)  # (N, 3)
    eye = torch.eye(3, dtype=forces.dtype)
    if loss.force_nll == "component":
        return torch.diag_embed(1 / variance.clamp_min(loss.variance_floor))
    if loss.force_nll == "isotropic":
        return eye / variance.mean(-1).clamp_min(loss.variance_floor)[:, None, None]
    dev = forces - forces.mean(0)
    cov = torch.einsum("mna,mnb->nab", dev, dev) / (forces.shape[0] - 1)
    chol = _cholesky_3x3(cov, loss.force_jitter)
    return torch.cholesky_solve(eye.expand_as(cov), chol)
