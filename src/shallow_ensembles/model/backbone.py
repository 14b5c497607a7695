"""Backbones: structures → per-atom features ``(N, F)``.

:class:`Backbone` is the contract any backbone meets. :class:`PowerSpectrumBackbone` is the
built-in one: a SOAP-like power spectrum of a neighbour density expanded per neighbour species
on Gaussian radial functions × real spherical harmonics (l ≤ 3), mixed by learnable radial
channels, followed by an atom-wise MLP whose first layer depends on the centre species.

Its density expansion is parameter-free, which is what makes member forces cheap: the derivative
of every per-edge basis value with respect to the edge vector is computed once per geometry
(:meth:`PowerSpectrumBackbone.edge_basis_derivative`) and contracted with any number of
per-atom cotangents (``model/ensemble.py``), instead of one backward pass per member.

Symbols: ``N`` atoms, ``P`` pairs, ``Z`` species, ``B`` radial functions, ``Y`` = (l_max+1)²
spherical-harmonic components, ``C`` channels, ``F`` features.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..data.batch import Batch
from ..errors import ConfigError
from .registry import register_backbone


@runtime_checkable
class Backbone(Protocol):
    """What :class:`~shallow_ensembles.model.ShallowEnsemble` needs from a backbone
    (registered by kind in :mod:`shallow_ensembles.model.registry`).

    ============  =============  ======  ============================================
    member        shape          unit    meaning
    ============  =============  ======  ============================================
    ``cutoff``    ()             Å       neighbour-list cutoff the batches are built with
    ``species``   (Z,)           —       atomic numbers the backbone knows
    ``n_features``  ()           —       F
    ``options``   —              —       resolved options (rebuilds it without data)
    ``forward(batch, edge_vectors)``  (N, F), (N,) or None   features; eV shared energy
    ============  =============  ======  ============================================

    ``forward`` returns the per-atom features and a per-atom energy that every member shares
    (``None`` when there is none); ``edge_vectors`` (P, 3) Å, r_j − r_i + shift for the pair
    (centre i, neighbour j), are differentiable inputs (forces, stress).
    """

    cutoff: float
    species: list[int]
    n_features: int
    options: Any

    def forward(self, batch: Batch, edge_vectors: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


@dataclasses.dataclass(frozen=True)
class PowerSpectrumOptions:
    """Options of ``model.backbone: {kind: power-spectrum}`` (the built-in backbone)."""

    cutoff_A: float = 5.0
    """Radial cutoff of the atomic environments, Å."""
    n_radial: int = 8
    """Number of radial basis functions (Gaussians times a cosine cutoff)."""
    l_max: int = 3
    """Highest angular momentum of the spherical harmonics (0 to 3)."""
    n_channels: int = 8
    """Learnable radial channels per angular momentum in the species-mixed density."""
    hidden: tuple[int, ...] = (128, 128)
    """Widths of the atom-wise MLP after the power spectrum; its output width is F."""

    def __post_init__(self):
        if not 0 <= self.l_max <= 3:
            raise ConfigError("model.backbone.l_max", f"expected 0 to 3, got {self.l_max}")
        if self.cutoff_A <= 0:
            raise ConfigError("model.backbone.cutoff_A", f"expected > 0, got {self.cutoff_A}")
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError("model.backbone.hidden",
                              f"expected a non-empty list of widths >= 1, got {list(self.hidden)}")


def silu_derivative(x: torch.Tensor) -> torch.Tensor:
    """d SiLU(x)/dx = σ(x) (1 + x (1 − σ(x)))."""
    sig = torch.sigmoid(x)
    return sig * (1 + x * (1 - sig))


def _solid_harmonic_table(l_max: int) -> tuple[list[tuple[int, int, int]], torch.Tensor]:
    """Monomials x^a y^b z^c (degree ≤ l_max) and the coefficients of the real solid harmonics.

    Solid harmonics S_lm(r) = r^l Y_lm(r̂) are homogeneous polynomials, so their values and
    their exact gradients are both one matrix product with a monomial vector.
    Returns (monomials, coefficients of shape (n_monomials, (l_max+1)²)).
    """
    pi = math.pi
    a = 0.25 * math.sqrt(35 / (2 * pi))
    b = 0.5 * math.sqrt(105 / pi)
    c = 0.25 * math.sqrt(21 / (2 * pi))
    d = 0.25 * math.sqrt(7 / pi)
    e = 0.25 * math.sqrt(105 / pi)
    c1, c2, c3 = 0.5 * math.sqrt(15 / pi), 0.25 * math.sqrt(5 / pi), 0.25 * math.sqrt(15 / pi)
    p1 = math.sqrt(3 / (4 * pi))
    harmonics = [  # l, then m = -l..l; each a {(ax, ay, az): coefficient}
        [{(0, 0, 0): 0.5 / math.sqrt(pi)}],
        [{(0, 1, 0): p1}, {(0, 0, 1): p1}, {(1, 0, 0): p1}],
        [{(1, 1, 0): c1}, {(0, 1, 1): c1},
         {(0, 0, 2): 2 * c2, (2, 0, 0): -c2, (0, 2, 0): -c2},
         {(1, 0, 1): c1}, {(2, 0, 0): c3, (0, 2, 0): -c3}],
        [{(2, 1, 0): 3 * a, (0, 3, 0): -a}, {(1, 1, 1): b},
         {(0, 1, 2): 4 * c, (2, 1, 0): -c, (0, 3, 0): -c},
         {(0, 0, 3): 2 * d, (2, 0, 1): -3 * d, (0, 2, 1): -3 * d},
         {(1, 0, 2): 4 * c, (3, 0, 0): -c, (1, 2, 0): -c},
         {(2, 0, 1): e, (0, 2, 1): -e}, {(3, 0, 0): a, (1, 2, 0): -3 * a}],
    ]
    columns = [h for l in range(l_max + 1) for h in harmonics[l]]
    monomials = [(i, j, k) for n in range(l_max + 1) for i in range(n + 1)
                 for j in range(n + 1 - i) for k in [n - i - j]]
    table = torch.zeros(len(monomials), len(columns), dtype=torch.float64)
    for col, poly in enumerate(columns):
        for powers, coef in poly.items():
            table[monomials.index(powers), col] = coef
    return monomials, table


def _derivative_table(monomials, table: torch.Tensor, axis: int) -> torch.Tensor:
    """Coefficients of ∂S/∂x_axis on the same monomials."""
    out = torch.zeros_like(table)
    for row, powers in enumerate(monomials):
        if powers[axis] == 0:
            continue
        lower = list(powers)
        lower[axis] -= 1
        out[monomials.index(tuple(lower))] += powers[axis] * table[row]
    return out


def _monomial_values(vectors: torch.Tensor, monomials) -> torch.Tensor:
    """x^a y^b z^c for every monomial, (P, 3) → (P, n_monomials)."""
    degree = max(sum(m) for m in monomials)
    powers = [torch.ones_like(vectors)]
    for _ in range(degree):
        powers.append(powers[-1] * vectors)
    return torch.stack([powers[a][:, 0] * powers[b][:, 1] * powers[c][:, 2]
                        for a, b, c in monomials], dim=-1)


class PowerSpectrumBackbone(nn.Module):
    """Learnable SOAP-like power spectrum + atom-wise MLP (see the module docstring).

    Parameters
    ----------
    species : atomic numbers, sorted
    cutoff : Å
    n_radial : B Gaussian radial functions between 0.5 Å and the cutoff, × a cosine cutoff
    l_max : highest angular momentum (≤ 3)
    n_channels : C learnable radial channels per l, mixing neighbour species and radial functions
    hidden : MLP widths; the last one is F
    """

    def __init__(self, species, cutoff=5.0, n_radial=8, l_max=3, n_channels=8,
                 hidden=(128, 128)):
        super().__init__()
        self.options = PowerSpectrumOptions(float(cutoff), n_radial, l_max, n_channels,
                                            tuple(hidden))
        self.species = [int(z) for z in species]
        self.cutoff = float(cutoff)
        self.n_radial, self.l_max, self.n_channels = n_radial, l_max, n_channels
        n_species = len(self.species)
        lookup = torch.full((max(self.species) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(self.species)] = torch.arange(n_species)
        self.register_buffer("species_index", lookup, persistent=False)
        self.register_buffer("centers", torch.linspace(0.5, self.cutoff, n_radial))
        self.width = (self.cutoff - 0.5) / max(n_radial - 1, 1)
        monomials, table = _solid_harmonic_table(l_max)
        self.monomials = monomials
        self.register_buffer("harmonic_table", table, persistent=False)
        self.register_buffer("harmonic_gradient", torch.cat(
            [_derivative_table(monomials, table, axis) for axis in range(3)], dim=1),
            persistent=False)
        self.register_buffer("l_of_y", torch.cat(
            [torch.full((2 * l + 1,), l, dtype=torch.long) for l in range(l_max + 1)]))
        # per (neighbour species, radial function, l) inverse RMS of the density, set from data
        self.register_buffer("density_scale", torch.ones(n_species, n_radial, l_max + 1))
        self.mixing = nn.Parameter(
            torch.randn(l_max + 1, n_species * n_radial, n_channels)
            / math.sqrt(n_species * n_radial)
        )
        n_in = (l_max + 1) * n_channels**2 + n_channels
        self.n_in = n_in
        self.first = nn.ModuleList(nn.Linear(n_in, hidden[0]) for _ in range(n_species))
        layers = []
        for a, b in zip(hidden[:-1], hidden[1:], strict=False):
            layers += [nn.SiLU(), nn.Linear(a, b)]
        layers.append(nn.SiLU())
        self.mlp = nn.Sequential(*layers)
        self.hidden = tuple(hidden)
        self.n_features = hidden[-1]

    # --- the parameter-free density ------------------------------------------------------------
    def _radial(self, r: torch.Tensor):
        """R_b(r) = G_b(r) f_c(r) and dR_b/dr, (P, 1) Å → two (P, B)."""
        x = (r - self.centers) / self.width
        gauss = torch.exp(-0.5 * x * x)
        arg = math.pi * r / self.cutoff
        inside = (r < self.cutoff).to(r.dtype)
        cut = 0.5 * (torch.cos(arg) + 1.0) * inside
        dcut = -0.5 * math.pi / self.cutoff * torch.sin(arg) * inside
        return gauss * cut, gauss * (dcut - x / self.width * cut)

    def _angular(self, unit: torch.Tensor) -> torch.Tensor:
        """Y_lm(r̂), (P, 3) → (P, Y)."""
        return _monomial_values(unit, self.monomials) @ self.harmonic_table

    def edge_basis(self, edge_vectors: torch.Tensor) -> torch.Tensor:
        """T_e[b, lm] = R_b(r) Y_lm(r̂), (P, 3) Å → (P, B, Y); parameter-free."""
        r = torch.linalg.norm(edge_vectors, dim=-1, keepdim=True)
        radial, _ = self._radial(r)
        return radial.unsqueeze(-1) * self._angular(edge_vectors / r).unsqueeze(-2)

    def _basis_parts(self, edge_vectors: torch.Tensor):
        """R, dR/dr (P, B); Y (P, Y); ∂Y/∂r (P, 3, Y) Å⁻¹; r̂ (P, 3) — no autograd graph.

        With S_lm = r^l Y_lm homogeneous of degree l, ∂Y/∂r = (∇S(r̂) − l Y r̂) / r.
        """
        with torch.no_grad():
            r = torch.linalg.norm(edge_vectors, dim=-1, keepdim=True)
            unit = edge_vectors / r
            radial, dradial = self._radial(r)
            mono = _monomial_values(unit, self.monomials)
            ylm = mono @ self.harmonic_table
            grad = (mono @ self.harmonic_gradient).view(-1, 3, ylm.shape[-1])
            dylm = (grad - (self.l_of_y.to(r.dtype) * ylm).unsqueeze(1) * unit.unsqueeze(-1))
            return radial, dradial, ylm, dylm / r.unsqueeze(-1), unit

    def edge_basis_derivative(self, edge_vectors: torch.Tensor) -> torch.Tensor:
        """∂T_e/∂r_e in closed form, (P, 3) Å → (P, 3, B·Y) Å⁻¹ (for checks; the force
        path contracts without materialising it, see :meth:`pair_gradients`)."""
        radial, dradial, ylm, dylm, unit = self._basis_parts(edge_vectors)
        out = (unit[:, :, None, None] * (dradial[:, :, None] * ylm[:, None, :])[:, None]
               + radial[:, None, :, None] * dylm[:, :, None, :])
        return out.reshape(out.shape[0], 3, -1)

    def pair_gradients(self, batch: Batch, edge_vectors: torch.Tensor,
                       cotangents: torch.Tensor, max_elements: int = 1 << 23) -> torch.Tensor:
        """g_k(e) = Σ_{b,lm} c_k[slot(e), b, lm] ∂T_e[b, lm]/∂r_e for K cotangents.

        Factorised so that ∂T is never materialised:
        g_k(e) = r̂ Σ_b R'_b Σ_lm c_k Y_lm + Σ_lm ∂Y_lm/∂r Σ_b c_k R_b.
        Pairs are padded per density row (centre atom × neighbour species) and contracted with
        batched matrix products, in chunks of rows to bound memory.

        Parameters
        ----------
        cotangents : (K, N·Z, B, Y), gradients of K scalars with respect to the density sums
        Returns
        -------
        (K, P, 3): gradients of the K scalars with respect to every pair vector (per Å);
        differentiable in ``cotangents`` (training with member-force losses).
        """
        radial, dradial, ylm, dylm, unit = self._basis_parts(edge_vectors)
        radial, dradial, ylm, dylm, unit = (
            x.to(cotangents.dtype) for x in (radial, dradial, ylm, dylm, unit))
        slot = self.slot_index(batch)
        n_rows, n_slots, n_rad, n_y = cotangents.shape
        order = torch.argsort(slot, stable=True)
        counts = torch.bincount(slot, minlength=n_slots)
        starts = torch.cumsum(counts, 0) - counts
        position = torch.empty_like(slot)
        position[order] = torch.arange(slot.shape[0], device=slot.device) - starts[slot[order]]
        n_pad = max(int(counts.max()), 1) if slot.numel() else 1
        result = cotangents.new_zeros(n_rows, slot.shape[0], 3)
        chunk = max(1, max_elements // (n_pad * (n_rad + n_y) * n_rows))
        for s0 in range(0, n_slots, chunk):
            s1 = min(n_slots, s0 + chunk)
            edges = ((slot >= s0) & (slot < s1)).nonzero().squeeze(1)
            if edges.numel() == 0:
                continue
            where = (slot[edges] - s0, position[edges])

            def pad(x, edges=edges, where=where, rows=s1 - s0):
                out = x.new_zeros(rows, n_pad, *x.shape[1:])
                out[where] = x[edges]
                return out

            c = cotangents[:, s0:s1].permute(1, 2, 3, 0)  # (s, B, Y, K)
            # α[s,n,b,k] = Σ_y Y[n,y] c[s,b,y,k];  β[s,n,y,k] = Σ_b R[n,b] c[s,b,y,k]
            alpha = torch.einsum("sny,sbyk->snbk", pad(ylm), c)
            beta = torch.einsum("snb,sbyk->snyk", pad(radial), c)
            along = torch.einsum("snb,snbk->snk", pad(dradial), alpha)
            across = torch.einsum("snxy,snyk->snxk", pad(dylm), beta)
            grads = pad(unit).unsqueeze(-1) * along.unsqueeze(2) + across  # (s, n, 3, K)
            result = result.index_copy(1, edges, grads[where].permute(2, 0, 1))
        return result

    def slot_index(self, batch: Batch) -> torch.Tensor:
        """(P,) int64: the density row of each pair, centre atom × neighbour species."""
        n_species = len(self.species)
        return batch.i * n_species + self.species_index[batch.numbers[batch.j]]

    def density(self, batch: Batch, edge_vectors: torch.Tensor) -> torch.Tensor:
        """Neighbour density per species, (N, Z, B, Y), scaled to unit RMS on training data."""
        n_atoms, n_species = batch.numbers.shape[0], len(self.species)
        basis = self.edge_basis(edge_vectors)
        dens = basis.new_zeros(n_atoms * n_species, self.n_radial, basis.shape[-1])
        dens = dens.index_add(0, self.slot_index(batch), basis)
        scale = self.density_scale[..., self.l_of_y]
        return dens.view(n_atoms, n_species, self.n_radial, -1) * scale

    # --- the learnable part, atom-wise -----------------------------------------------------------
    def readout(self, density: torch.Tensor, numbers: torch.Tensor,
                cache: dict | None = None) -> torch.Tensor:
        """Per-atom features (N, F) from the density (N, Z, B, Y).

        With a ``cache`` dict, the intermediates that :meth:`readout_vjp` needs are stored in it.
        """
        n_atoms = density.shape[0]
        flat = density.reshape(n_atoms, -1, density.shape[-1])  # (N, Z·B, Y)
        parts, mixed = [], []
        start = 0
        for l in range(self.l_max + 1):
            size = 2 * l + 1
            a_l = torch.einsum("nky,kc->nyc", flat[..., start:start + size], self.mixing[l])
            mixed.append(a_l)
            start += size
            if l == 0:
                parts.append(a_l[:, 0])
            power = torch.einsum("nyc,nyd->ncd", a_l, a_l) / math.sqrt(size)
            parts.append(power.reshape(n_atoms, -1))
        invariants = torch.cat(parts, dim=-1)
        # the first layer depends on the centre species: one matrix product per species
        centre = self.species_index[numbers]
        rows_of = [(centre == k).nonzero().squeeze(1) for k in range(len(self.first))]
        hidden = invariants.new_zeros(n_atoms, self.hidden[0])
        for layer, rows in zip(self.first, rows_of, strict=True):
            if rows.numel():
                hidden = hidden.index_copy(0, rows, layer(invariants.index_select(0, rows)))
        inputs = []
        for layer in self.mlp:
            inputs.append(hidden)
            hidden = layer(hidden)
        if cache is not None:
            cache.update(mixed=mixed, rows_of=rows_of, mlp_inputs=inputs, shape=density.shape)
        return hidden

    def readout_vjp(self, cache: dict, cotangents: torch.Tensor) -> torch.Tensor:
        """K vector-Jacobian products of :meth:`readout` at once, in closed form.

        Parameters
        ----------
        cache : filled by ``readout(..., cache=cache)``
        cotangents : (K, N, F), gradients of K scalars with respect to the features

        Returns
        -------
        (K, N, Z, B, Y): their gradients with respect to the density; differentiable in the
        parameters (training with member-force losses). Replaces K autograd passes, whose cost
        is dominated by per-operation overhead on CPU.
        """
        grad = cotangents
        for layer, x in zip(reversed(self.mlp), reversed(cache["mlp_inputs"]), strict=True):
            grad = grad * silu_derivative(x) if isinstance(layer, nn.SiLU) else grad @ layer.weight
        n_rows, n_atoms = grad.shape[:2]
        grad_inv = grad.new_zeros(n_rows, n_atoms, self.n_in)
        for layer, rows in zip(self.first, cache["rows_of"], strict=True):
            if rows.numel():
                grad_inv = grad_inv.index_copy(1, rows, grad.index_select(1, rows) @ layer.weight)
        c = self.n_channels
        offset, blocks = c, []
        for l, a_l in enumerate(cache["mixed"]):
            g_power = grad_inv[..., offset:offset + c * c].reshape(n_rows, n_atoms, c, c)
            offset += c * c
            g_a = torch.einsum("knce,nye->knyc", g_power + g_power.transpose(-1, -2), a_l)
            g_a = g_a / math.sqrt(2 * l + 1)
            if l == 0:
                g_a = g_a + grad_inv[..., None, :c]
            blocks.append(torch.einsum("knyc,jc->knjy", g_a, self.mixing[l]))
        return torch.cat(blocks, dim=-1).reshape(n_rows, *cache["shape"])

    def forward(self, batch: Batch, edge_vectors: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Per-atom features (N, F) of ``batch`` with pair vectors ``edge_vectors`` (P, 3) Å;
        no shared energy."""
        return self.readout(self.density(batch, edge_vectors), batch.numbers), None

    def explicit_vjp(self, batch: Batch, cotangents_of, stress: bool = False):
        """Position (and strain) gradients of K contractions Σ_i c_k,i · f_i, without autograd.

        The cotangents on the parameter-free density come from one closed-form batched VJP of
        the atom-wise readout (:meth:`readout_vjp`); the pair part is one contraction
        (:meth:`pair_gradients`).

        Parameters
        ----------
        cotangents_of : callable, features (N, F) → cotangents c (K, N, F) (differentiable)

        Returns
        -------
        d_pos : (K, N, 3), per Å; virial : (K, S, 3, 3) (∂/∂ε), or None
        """
        edges = batch.edge_vectors().detach()
        density = self.density(batch, edges).detach()
        cache: dict = {}
        features = self.readout(density, batch.numbers, cache)
        cotangents = self.readout_vjp(cache, cotangents_of(features))  # (K, N, Z, B, Y)
        n_rows = cotangents.shape[0]
        cotangents = (cotangents * self.density_scale[..., self.l_of_y]).flatten(1, 2)
        d_edges = self.pair_gradients(batch, edges, cotangents)  # (K, P, 3)
        d_pos = d_edges.new_zeros(n_rows, batch.numbers.shape[0], 3)
        d_pos = d_pos.index_add(1, batch.j, d_edges).index_add(1, batch.i, -d_edges)
        virial = None
        if stress:
            per_edge = torch.einsum("kpa,pb->kpab", d_edges, edges)
            virial = per_edge.new_zeros(n_rows, batch.n_structures, 3, 3).index_add(
                1, batch.edge_structure, per_edge)
            virial = 0.5 * (virial + virial.transpose(-1, -2))
        return d_pos, virial

    @torch.no_grad()
    def fit_density_scale(self, batch: Batch) -> None:
        """Scale each (neighbour species, radial function, l) block of the density to unit RMS."""
        self.density_scale.fill_(1.0)
        dens = self.density(batch, batch.edge_vectors().to(self.centers.dtype))
        sq = dens.pow(2).mean(dim=0)  # (Z, B, Y)
        per_l = torch.zeros_like(self.density_scale).index_add_(-1, self.l_of_y, sq)
        counts = torch.bincount(self.l_of_y).to(sq.dtype)
        rms = (per_l / counts).sqrt()
        self.density_scale.copy_(torch.where(rms > 1e-8, 1.0 / rms, torch.ones_like(rms)))


def build_power_spectrum(options: PowerSpectrumOptions, species, batch=None):
    """The registry's builder: a :class:`PowerSpectrumBackbone`, its density scaled on ``batch``."""
    backbone = PowerSpectrumBackbone(species, options.cutoff_A, options.n_radial, options.l_max,
                                     options.n_channels, options.hidden)
    if batch is not None:  # in the batch's precision; the ensemble sets the model's dtype
        backbone = backbone.to(batch.positions.dtype)
        backbone.fit_density_scale(batch)
    return backbone


register_backbone("power-spectrum", PowerSpectrumOptions, build_power_spectrum)
