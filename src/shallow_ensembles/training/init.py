"""Head initialisation for stage 1 of a protocol. Method notes, "Head initialisation".

Every function edits ``model.head`` in place and is deterministic for a given generator.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..data.batch import Graph, collate
from ..model import ShallowEnsemble
from .llpr import LastLayerPosterior, fit_posterior

LOG = logging.getLogger(__name__)


def head_parameters(model: ShallowEnsemble) -> torch.Tensor:
    """θ_m = [w_m, b_m] of every head, (M, d+1)."""
    return torch.cat([model.head.weight, model.head.bias[:, None]], dim=1).detach()


def set_head_parameters(model: ShallowEnsemble, theta: torch.Tensor) -> None:
    """Write θ (M, d+1) into the heads."""
    with torch.no_grad():
        model.head.weight.copy_(theta[:, :-1])
        model.head.bias.copy_(theta[:, -1])


def random_heads(model: ShallowEnsemble, generator: torch.Generator) -> None:
    """Independent random heads (uniform ±1/√d, as ``nn.Linear``), zero-mean bias."""
    d = model.head.weight.shape[1]
    bound = 1.0 / d**0.5
    theta = (torch.rand(model.n_members, d + 1, generator=generator, dtype=model.dtype) * 2 - 1)
    theta = theta * bound
    theta[:, -1] = 0.0
    set_head_parameters(model, theta)


def isotropic_heads(model: ShallowEnsemble, scale: float, generator: torch.Generator) -> None:
    """θ_m = θ_MAP + s ε_m around the mean head, re-centred (mean θ_m = θ_MAP)."""
    theta = head_parameters(model)
    mean = theta.mean(0, keepdim=True)
    noise = scale * torch.randn(theta.shape, generator=generator, dtype=theta.dtype)
    set_head_parameters(model, mean + noise - noise.mean(0, keepdim=True))


@torch.no_grad()
def linear_targets(model: ShallowEnsemble, graphs: Sequence[Graph], batch_size: int = 16):
    """Structure features x (S, d+1) and per-atom targets y = (E − Σμ)/N (S,)."""
    xs, ys = [], []
    for start in range(0, len(graphs), batch_size):
        batch = collate(graphs[start:start + batch_size], dtype=model.dtype)
        xs.append(model.structure_features(batch))
        ys.append((batch.energy - model.baseline_energy(batch)) / batch.n_atoms.to(model.dtype))
    return torch.cat(xs), torch.cat(ys)




def llpr_heads(model: ShallowEnsemble, train: Sequence[Graph], validation: Sequence[Graph],
               generator: torch.Generator, regularizer: float | None = None,
               force_rows: bool = False) -> LastLayerPosterior:
    """Sample heads from the last-layer Laplace posterior around the mean head (MAP).

    Optional force rows add −∂x/∂R rows (per atom and component, the feature Jacobian from
    :meth:`ShallowEnsemble.explicit_row_gradients`) to Φ.
    """
    theta = head_parameters(model)
    theta_map = theta.mean(0)
    set_head_parameters(model, theta_map.expand_as(theta).clone())
    x_train, _ = linear_targets(model, train)
    x_val, y_val = linear_targets(model, validation)
    rows = [x_train]
    if force_rows:
        rows += [_force_rows(model, g) for g in train]
    residual = y_val - x_val @ theta_map
    post = fit_posterior(torch.cat(rows), x_val, residual, regularizer)
    set_head_parameters(model, post.sample(theta_map, model.n_members, generator))
    return post


def _force_rows(model: ShallowEnsemble, graph: Graph) -> torch.Tensor:
    """Rows ∂G/∂R of one structure, (3N, d+1) (the bias column has no force)."""
    batch = collate([graph], dtype=model.dtype)
    basis = torch.eye(model.n_last, dtype=model.dtype)
    d_pos, _ = model.explicit_row_gradients(batch, basis)
    d_pos = d_pos.detach().reshape(d_pos.shape[0], -1).T
    return torch.cat([d_pos, torch.zeros_like(d_pos[:, :1])], dim=1)


def subsample_heads(model: ShallowEnsemble, train: Sequence[Graph], generator: torch.Generator,
                    ridge: float = 1e-6) -> None:
    """Fit each head by ridge regression on a bootstrap resample (backbone frozen).

    θ_m = argmin Σ_{k ∈ B_m} (θ·x_k − y_k)² + ridge · tr(XᵀX)/D · |θ|².
    """
    x, y = linear_targets(model, train)
    n, dim = x.shape
    heads = []
    for _ in range(model.n_members):
        idx = torch.randint(0, n, (n,), generator=generator)
        xb, yb = x[idx], y[idx]
        gram = xb.T @ xb
        lam = ridge * float(torch.trace(gram)) / dim
        heads.append(torch.linalg.solve(gram + lam * torch.eye(dim, dtype=x.dtype), xb.T @ yb))
    set_head_parameters(model, torch.stack(heads))
