"""The shallow ensemble: one backbone, M linear heads, and everything derived from them.

Contract (``forward``): member atomic energies ``(N, M)`` in eV. Everything else is derived:

==========================  =========  =======  =============================================
``predict`` key             shape      unit     meaning
==========================  =========  =======  =============================================
``energy_ensemble``         (S, M)     eV       member total energies E_m
``energy``                  (S,)       eV       mean Ē
``energy_uncertainty``      (S,)       eV       σ_E, standard deviation over members, ddof=1
``energies``                (N,)       eV       mean per-atom energies
``forces``                  (N, 3)     eV/Å     −∂Ē/∂R (one backward pass)
``stress``                  (S, 6)     eV/Å³    (1/V) ∂Ē/∂ε, Voigt xx yy zz yz xz xy
``forces_ensemble``         (M, N, 3)  eV/Å     −∂E_m/∂R
``stress_ensemble``         (M, S, 6)  eV/Å³    member stresses
==========================  =========  =======  =============================================

Member atomic energies are e_im = s_Z [w_m·(g_i − c_Z) + β_Z] + μ_Z with g_i the last-layer
features (backbone features through an optional bottleneck of width d), c_Z their per-species
centre (a buffer, the mean of g over the training atoms of species Z), s_Z a learnable
per-species scale, β_Z a learnable per-species shift shared by every member and μ_Z the fixed
per-species composition baseline. Members differ only in w_m, and they act on centred features:
a member offset that is the same in every frame of a composition (a per-member bias, or
features whose per-species mean is far from zero) cannot arise, so σ_E measures the structure.
:meth:`ShallowEnsemble.centre_features` moves c_Z and compensates β_Z so that the ensemble mean
is unchanged. Because the head is linear, E_m = w_m·G + const with G = Σ_i s_Z g_i, so the
member forces need the Jacobian of G (d rows), not one backward pass per member (docs/method.md,
"Model").

Energies are accumulated in float64 whatever the network's dtype (μ_Z is added and atoms are
summed in float64): a float32 total of −3·10⁴ eV would resolve only ~2 meV. Forces, stresses
and their ensembles keep the network's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from ..conventions import DDOF
from ..data.batch import Batch
from .backbone import silu_derivative
from .registry import backbone_spec, build_backbone

VOIGT = ([0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1])


class ShallowEnsemble(nn.Module):
    """A backbone with M linear heads (members); see the module docstring for the outputs.

    Parameters
    ----------
    backbone : any :class:`~shallow_ensembles.model.backbone.Backbone`
    n_members : M
    bottleneck : d, width of an atom-wise ``Linear(F, d) + SiLU`` before the heads; ``None``
        feeds the backbone features directly (d = F)
    hyperparameters : the ``ModelConfig`` dictionary, kept for the model file
    """

    def __init__(self, backbone, n_members: int, bottleneck: int | None = None,
                 hyperparameters: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.species = list(backbone.species)
        self.cutoff = float(backbone.cutoff)
        self.n_members = int(n_members)
        self.hyperparameters = dict(hyperparameters or {})
        width = backbone.n_features
        if bottleneck is None:
            self.bottleneck = nn.Identity()
        else:
            self.bottleneck = nn.Sequential(nn.Linear(width, bottleneck), nn.SiLU())
            width = bottleneck
        self.n_last = width
        self.head = nn.Linear(width, n_members, bias=False)
        n_species = len(self.species)
        self.scale = nn.Parameter(torch.ones(n_species))
        self.shift = nn.Parameter(torch.zeros(n_species))
        self.register_buffer("feature_centre", torch.zeros(n_species, width))
        self.register_buffer("composition", torch.zeros(n_species))
        self.register_buffer("alpha_energy", torch.tensor(1.0))
        self.register_buffer("alpha_forces", torch.tensor(1.0))
        # optional per-element multipliers of α_F (1 unless calibrated per element)
        self.register_buffer("alpha_forces_species", torch.ones(n_species))
        lookup = torch.full((max(self.species) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(self.species)] = torch.arange(n_species)
        self.register_buffer("species_index", lookup, persistent=False)

    @classmethod
    def from_config(cls, config, species, batch: Batch | None = None) -> ShallowEnsemble:
        """Build from a :class:`~shallow_ensembles.model.config.ModelConfig` and the element list.

        The backbone comes from the registry (``config.backbone``); with a ``batch`` of
        training structures its data-dependent parts are set. The stored hyperparameters hold
        the backbone's resolved options, so that the model file rebuilds it without data.
        """
        from ..config import to_dict

        backbone = build_backbone(config.backbone, species, batch)
        hyperparameters = {**to_dict(config), "backbone": backbone_spec(backbone.options)}
        model = cls(backbone, config.n_members, config.bottleneck, hyperparameters)
        return model.to(getattr(torch, config.dtype))

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters."""
        return self.head.weight.dtype

    # --- contract ------------------------------------------------------------------------------
    def last_layer_features(self, batch: Batch, edge_vectors=None) -> torch.Tensor:
        """g_i, (N, d): the features the heads act on."""
        return self._features(batch, edge_vectors)[0]

    def _features(self, batch: Batch, edge_vectors=None):
        """g_i (N, d) and the backbone's shared per-atom energy (N,) eV or None."""
        edge_vectors = batch.edge_vectors() if edge_vectors is None else edge_vectors
        features, shared = self.backbone(batch, edge_vectors)
        return self.bottleneck(features), shared

    def heads(self, features: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """Member atomic energies (N, M), eV, float64, from last-layer features (N, d)."""
        z = self.species_index[numbers]
        centred = features - self.feature_centre[z]
        learned = self.scale[z, None] * (self.head(centred) + self.shift[z, None])
        return learned.double() + self.composition[z, None].double()

    def forward(self, batch: Batch, edge_vectors=None) -> torch.Tensor:
        """Member atomic energies e_im, (N, M), eV, float64 (plus the backbone's shared
        per-atom energy, if it has one)."""
        features, shared = self._features(batch, edge_vectors)
        energies = self.heads(features, batch.numbers)
        return energies if shared is None else energies + shared.double()[:, None]

    @torch.no_grad()
    def centre_features(self, centre: torch.Tensor) -> float:
        """Set the per-species feature centre c_Z (n_species, d), keeping the mean unchanged.

        The shared shift absorbs the move: β_Z += w̄·(c_new − c_old), so Ē is unchanged and
        each member moves by −s_Z (w_m − w̄)·(c_new − c_old) per atom: only the member spread
        changes. Returns the largest |c_new − c_old|.
        """
        centre = centre.to(self.feature_centre)
        delta = centre - self.feature_centre
        self.shift += delta @ self.head.weight.mean(0)
        self.feature_centre.copy_(centre)
        return float(delta.abs().max()) if delta.numel() else 0.0

    # --- derived outputs ---------------------------------------------------------------------
    def predict(self, batch: Batch, *, forces: bool = True, stress: bool = False,
                member_forces: bool = False, create_graph: bool = False,
                method: str = "auto", calibrated: bool = False) -> dict[str, torch.Tensor]:
        """Energies, σ and, on request, mean and member forces and stresses (module table).

        ``stress`` is computed for structures that are periodic in all three directions (others
        get NaN). ``method`` chooses the member-force route: ``"explicit"`` (parameter-free
        density derivatives contracted with min(M, d) cheap atom-wise cotangents; built-in
        backbone only), ``"jacobian"`` (d backward passes of G), ``"loop"`` (M backward
        passes), ``"auto"`` (the cheapest available). ``calibrated`` rescales members about
        the mean with the stored α_E, α_F.
        """
        with torch.enable_grad():
            out = self._predict(batch, forces, stress, member_forces, create_graph, method)
        return self.calibrate_outputs(out, batch.numbers) if calibrated else out

    def calibrate_outputs(self, out: dict[str, torch.Tensor], numbers: torch.Tensor, *,
                          forces_like_energy: bool = False) -> dict[str, torch.Tensor]:
        """Raw ``predict``/``member_forces`` outputs → calibrated, with the stored factors.

        The one place where calibration is applied (calculator, i-PI driver, evaluation,
        active learning): :func:`apply_calibration` with α_E, α_F and the per-element force
        factors (:meth:`force_alphas`).

        Parameters
        ----------
        out : raw outputs (keys of the module table; any subset)
        numbers : torch.Tensor, shape (N,), atomic numbers of the atoms of ``out``
        forces_like_energy : rescale member forces and stresses by α_E instead of α_F, so that
            they stay the exact derivatives of the calibrated member energies (i-PI's weighted
            baseline needs that)
        """
        alpha_e = float(self.alpha_energy)
        if forces_like_energy:
            return apply_calibration(out, alpha_e, alpha_e)
        return apply_calibration(out, alpha_e, float(self.alpha_forces),
                                 self.force_alphas(numbers))

    def force_alphas(self, numbers: torch.Tensor) -> torch.Tensor:
        """Per-atom force calibration factors α_F · a_Z, (N,)."""
        numbers = torch.as_tensor(numbers, device=self.alpha_forces.device)
        return self.alpha_forces * self.alpha_forces_species[self.species_index[numbers]]

    def _predict(self, batch, forces, stress, member_forces, create_graph, method):
        edges, inputs = _differentiable_edges(batch, forces or stress, stress)
        atom_energies = self.forward(batch, edges)
        out = summarize_energies(atom_energies, batch)
        if forces or stress:
            grads = torch.autograd.grad(out["energy"].sum(), inputs, create_graph=create_graph,
                                        retain_graph=create_graph or member_forces)
            if forces:
                out["forces"] = -grads[0]
            if stress:
                out["stress"] = _stress_from_virial(grads[1], batch)
        if member_forces:
            out.update(self.member_forces(batch, stress=stress, create_graph=create_graph,
                                          method=method))
        return out

    def member_forces(self, batch: Batch, *, stress: bool = False, create_graph: bool = False,
                      method: str = "auto") -> dict[str, torch.Tensor]:
        """Member forces (M, N, 3) eV/Å and, with ``stress``, member stresses (M, S, 6) eV/Å³.

        ``method``: ``"explicit"`` (the backbone's ``explicit_vjp``), ``"jacobian"`` (min(M, d)
        backward passes), ``"loop"`` (M backward passes), ``"auto"`` (explicit when the
        backbone has it, else the cheaper of the two others). A backbone's shared energy adds
        one backward pass, whose gradient every member shares.
        """
        explicit = hasattr(self.backbone, "explicit_vjp")
        if method == "auto":
            method = "explicit" if explicit else (
                "jacobian" if self.n_last < self.n_members else "loop")
        if method not in ("explicit", "jacobian", "loop"):
            raise ValueError(f"method must be auto, explicit, jacobian or loop, got {method!r}")
        if method == "explicit" and not explicit:
            raise ValueError(f"{type(self.backbone).__name__} has no explicit member-force "
                             "route; use method 'auto', 'jacobian' or 'loop'")
        basis, mix = (self.head.weight, None) if method == "loop" else self._row_basis()
        # rows that are the members themselves carry the shared energy; mixed rows need one more
        shared = "none" if not getattr(self.backbone, "shares_energy", False) else (
            "add" if mix is None else "append")
        if method == "explicit":
            d_pos, virial = self.explicit_row_gradients(batch, basis, stress, create_graph)
        else:
            d_pos, virial = self.autograd_row_gradients(batch, basis, stress, create_graph,
                                                        shared)
        d_pos = _mix(d_pos[:-1], mix) + d_pos[-1] if shared == "append" else _mix(d_pos, mix)
        out = {"forces_ensemble": -d_pos}
        if stress:
            virial = (_mix(virial[:-1], mix) + virial[-1] if shared == "append"
                      else _mix(virial, mix))
            out["stress_ensemble"] = _stress_from_virial(virial, batch)
        return out

    def row_gradients(self, batch: Batch, basis: torch.Tensor, stress: bool = False,
                      create_graph: bool = False):
        """Position (and strain) gradients of K rows r_k = Σ_i s_Z basis_k · g_i per structure
        (the backbone's explicit route when it has one, else K backward passes).

        Parameters
        ----------
        basis : (K, d)

        Returns
        -------
        d_pos : (K, N, 3), ∂r_k/∂R; virial : (K, S, 3, 3), ∂r_k/∂ε, or None
        """
        if hasattr(self.backbone, "explicit_vjp"):
            return self.explicit_row_gradients(batch, basis, stress, create_graph)
        return self.autograd_row_gradients(batch, basis, stress, create_graph)

    def autograd_row_gradients(self, batch: Batch, basis: torch.Tensor, stress: bool = False,
                               create_graph: bool = False, shared: str = "none"):
        """:meth:`row_gradients` by K backward passes through one retained graph (on CPU a
        loop beats batched VJPs). The backbone's shared energy (per structure) is ``"add"``-ed
        to every row, or ``"append"``-ed as row K + 1, or left out (``"none"``)."""
        with torch.enable_grad():
            edges, inputs = _differentiable_edges(batch, True, stress)
            features, shared_energy = self._features(batch, edges)
            rows = list((self._structure_sums(features, batch) @ basis.T).T)
            if shared != "none":
                total = sum_per_structure(shared_energy, batch)
                rows = [row + total for row in rows] if shared == "add" else rows + [total]
            grads = [torch.autograd.grad(row.sum(), inputs, retain_graph=True,
                                         create_graph=create_graph) for row in rows]
        d_pos = torch.stack([g[0] for g in grads])
        return d_pos, torch.stack([g[1] for g in grads]) if stress else None

    def _structure_sums(self, features: torch.Tensor, batch: Batch) -> torch.Tensor:
        """G = Σ_i s_Z g_i per structure, (S, d)."""
        return sum_per_structure(self.scale[self.species_index[batch.numbers], None] * features,
                                 batch)

    def _row_basis(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows whose position gradients give the member forces, and how to mix them.

        Returns (basis (K, d), mix (K, M) or None) with K = min(M, d): row k is
        r_k = Σ_i s_Z basis_k · g_i. With K = d the rows are G's components and the member
        derivatives are mixᵀ · row derivatives (mix = Wᵀ); with K = M they are the members.
        """
        weight = self.head.weight
        if self.n_last < self.n_members:
            return torch.eye(self.n_last, dtype=weight.dtype, device=weight.device), weight.T
        return weight, None

    def explicit_row_gradients(self, batch: Batch, basis: torch.Tensor, stress: bool = False,
                               create_graph: bool = False):
        """:meth:`row_gradients` through the backbone's ``explicit_vjp`` (the bottleneck's VJP
        is closed-form here)."""
        scale = self.scale[self.species_index[batch.numbers]]  # (N,)

        def cotangents_of(features):  # (N, F) → ∂r_k/∂f_i, (K, N, F)
            grad = basis[:, None, :] * scale[None, :, None]  # ∂r_k/∂g_i
            if not isinstance(self.bottleneck, nn.Identity):
                linear = self.bottleneck[0]
                grad = (grad * silu_derivative(linear(features))) @ linear.weight
            return grad

        return self.backbone.explicit_vjp(batch, cotangents_of, stress)

    def structure_features(self, batch: Batch) -> torch.Tensor:
        """x_k = Σ_i s_Z (g_i − c_Z) / N_k, (S, d): the linear model E_m/N = w_m·x + shared/N.

        Used by last-layer (LLPR) and subsampling initialisation (``shared_energy``: the part
        every member has in common).
        """
        features = self.last_layer_features(batch)
        centred = features - self.feature_centre[self.species_index[batch.numbers]]
        sums = self._structure_sums(centred, batch)
        return sums / batch.n_atoms[:, None].to(sums.dtype)

    def shared_energy(self, batch: Batch) -> torch.Tensor:
        """Σ_i (μ_Z + s_Z β_Z + the backbone's shared energy) per structure, (S,) eV, float64:
        the member-independent part."""
        z = self.species_index[batch.numbers]
        per_atom = self.composition[z].double() + (self.scale[z] * self.shift[z]).double()
        if getattr(self.backbone, "shares_energy", False):
            per_atom = per_atom + self._features(batch)[1].double()
        return sum_per_structure(per_atom, batch)

    def species_feature_sums(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-species sums of the features g_i (n_species, d) and atom counts (n_species,)."""
        features = self.last_layer_features(batch)
        z = self.species_index[batch.numbers]
        sums = features.new_zeros(len(self.species), features.shape[1]).index_add(0, z, features)
        counts = torch.bincount(z, minlength=len(self.species)).to(features.dtype)
        return sums, counts


def _differentiable_edges(batch: Batch, positions_grad: bool, stress: bool):
    """Pair vectors (P, 3) Å and the leaves to differentiate: [positions] or [positions, ε].

    The strain ε (S, 3, 3) enters symmetrised as R → R(I + ε), cell → cell(I + ε), so that
    ∂E/∂ε / V is the stress.
    """
    positions, cell, inputs = batch.positions, batch.cell, []
    if positions_grad or stress:
        positions = positions.detach().requires_grad_(True)
        inputs.append(positions)
    if stress:
        strain = torch.zeros_like(cell).requires_grad_(True)
        inputs.append(strain)
        sym = 0.5 * (strain + strain.transpose(1, 2))
        positions = positions + torch.einsum("nk,nkl->nl", positions, sym[batch.structure])
        cell = cell + torch.bmm(cell, sym)
    return batch.edge_vectors(positions, cell), inputs


def _mix(rows: torch.Tensor, mix: torch.Tensor | None) -> torch.Tensor:
    """Member derivatives (M, ...) from row derivatives (K, ...) and mix (K, M)."""
    if mix is None:
        return rows
    return torch.einsum("km,k...->m...", mix, rows)


def _stress_from_virial(d_strain: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Voigt stress (..., S, 6) = ∂E/∂ε / V; NaN for structures not periodic in 3-D."""
    volume = torch.linalg.det(batch.cell).abs()
    periodic = batch.pbc.all(dim=1)
    stress = d_strain[..., VOIGT[0], VOIGT[1]] / torch.where(periodic, volume, 1.0)[:, None]
    return torch.where(periodic[:, None], stress, torch.full_like(stress, float("nan")))


def sum_per_structure(values: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Σ_i over the atoms of each structure, (N, ...) → (S, ...), in the dtype of ``values``."""
    return values.new_zeros((batch.n_structures, *values.shape[1:])).index_add(
        0, batch.structure, values)


def summarize_energies(atom_energies: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
    """Member totals (S, M), mean (S,), σ (S,) with ddof=1 and mean per-atom energies (N,)."""
    totals = sum_per_structure(atom_energies, batch)
    n_members = atom_energies.shape[1]
    std = totals.std(dim=1, correction=DDOF) if n_members > DDOF else torch.zeros_like(totals[:, 0])
    return {
        "energy_ensemble": totals,
        "energy": totals.mean(dim=1),
        "energy_uncertainty": std,
        "energies": atom_energies.mean(dim=1),
    }


def apply_calibration(out: dict[str, torch.Tensor], alpha_energy: float,
                      alpha_forces: float, atom_alphas: torch.Tensor | None = None
                      ) -> dict[str, torch.Tensor]:
    """Rescale members about their mean: X_m → X̄ + α (X_m − X̄); σ → α σ.

    Energies use α_E; stresses α_F; forces the per-atom ``atom_alphas`` (N,) when given
    (α_F times a per-element factor), else α_F.
    """
    out = dict(out)
    if "energy_ensemble" in out:
        ens = out["energy_ensemble"]
        mean = ens.mean(dim=1, keepdim=True)
        out["energy_ensemble"] = mean + alpha_energy * (ens - mean)
        out["energy_uncertainty"] = alpha_energy * out["energy_uncertainty"]
    for key in ("forces_ensemble", "stress_ensemble"):
        if key in out:
            ens = out[key]
            mean = ens.mean(dim=0, keepdim=True)
            alpha = alpha_forces
            if key == "forces_ensemble" and atom_alphas is not None:
                alpha = atom_alphas.to(ens)[None, :, None]
            out[key] = mean + alpha * (ens - mean)
    return out
