# TorchScript resolves typing.List/Dict/Optional/Tuple, not PEP 604/585 forms
# ruff: noqa: UP006, UP007, UP035, UP045
"""TorchScript forms of a trained shallow ensemble, fed by metatomic systems and neighbour lists.

The package's own modules take a :class:`~shallow_ensembles.data.Batch` (a NamedTuple with
Python-side helpers) and keep Python data (monomial tuples, option dataclasses) that TorchScript
cannot compile. The modules here compute the same functions from the same trained tensors:

* :class:`ScriptedPowerSpectrum` — the built-in backbone's density and readout, with the
  model's own ``first`` (per-species) layers and ``mlp`` submodules and copies of its buffers;
* :class:`ScriptedEnsemble` — the bottleneck, the M heads (the model's own ``Linear``), the
  per-species scale, shift, feature centre and composition baseline, and α_E; its ``forward``
  follows metatomic's model interface and returns ``energy``, ``energy_ensemble`` and
  ``energy_uncertainty`` (per system or per atom).

Backbone interface (any kind): ``forward(types (N,), centre (P,), neighbour (P,), edge_vectors
(P, 3) Å)`` → features (N, F) and the shared per-atom energy (N,) eV, with edge vectors
r_j − r_i + S·cell for the pair (centre i, neighbour j), metatomic's neighbour-list convention
and the package's own.

Member atomic energies e_im are accumulated in float64 (as the native model does); the outputs
are cast to the exported dtype at the very end (metatomic requires outputs in the model dtype).
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import ModelOutput, NeighborListOptions, System
from torch import nn


class ScriptedPowerSpectrum(nn.Module):
    """The built-in power-spectrum backbone, TorchScript-compatible (same tensors, same maths).

    Parameters
    ----------
    backbone : a trained :class:`~shallow_ensembles.model.backbone.PowerSpectrumBackbone`, already
        in the export dtype; its ``first`` and ``mlp`` submodules are reused as they are
    """

    def __init__(self, backbone):
        super().__init__()
        self.cutoff = float(backbone.cutoff)
        self.width = float(backbone.width)
        self.n_species = len(backbone.species)
        self.n_radial = int(backbone.n_radial)
        self.l_max = int(backbone.l_max)
        dtype = backbone.mixing.dtype
        self.register_buffer("species_index", backbone.species_index.clone())
        self.register_buffer("centers", backbone.centers.detach().clone())
        self.register_buffer("harmonic_table", backbone.harmonic_table.to(dtype).clone())
        # exponents (a, b, c) of each monomial x^a y^b z^c, as index columns
        self.register_buffer("monomials", torch.tensor(backbone.monomials, dtype=torch.long))
        self.max_degree = max(sum(m) for m in backbone.monomials)
        self.register_buffer("radial_scale",
                             backbone.density_scale[..., backbone.l_of_y].detach().clone())
        self.register_buffer("mixing", backbone.mixing.detach().clone())
        self.first = backbone.first
        self.mlp = backbone.mlp

    def edge_basis(self, edge_vectors: torch.Tensor) -> torch.Tensor:
        """T_e[b, lm] = R_b(r) Y_lm(r̂), (P, 3) Å → (P, B, Y)."""
        r = torch.linalg.norm(edge_vectors, dim=-1, keepdim=True)
        x = (r - self.centers) / self.width
        gauss = torch.exp(-0.5 * x * x)
        arg = math.pi * r / self.cutoff
        inside = (r < self.cutoff).to(r.dtype)
        radial = gauss * (0.5 * (torch.cos(arg) + 1.0) * inside)
        unit = edge_vectors / r
        powers = [torch.ones_like(unit)]
        for _ in range(self.max_degree):
            powers.append(powers[-1] * unit)
        table = torch.stack(powers)  # (D + 1, P, 3)
        a, b, c = self.monomials[:, 0], self.monomials[:, 1], self.monomials[:, 2]
        mono = (table[a, :, 0] * table[b, :, 1] * table[c, :, 2]).T  # (P, n_monomials)
        angular = mono @ self.harmonic_table
        return radial.unsqueeze(-1) * angular.unsqueeze(-2)

    def forward(self, types: torch.Tensor, centre: torch.Tensor, neighbour: torch.Tensor,
                edge_vectors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Features (N, F) and a zero shared energy (N,)."""
        n_atoms = types.shape[0]
        z = self.species_index[types]
        basis = self.edge_basis(edge_vectors)
        slot = centre * self.n_species + z[neighbour]
        dens = basis.new_zeros(n_atoms * self.n_species, self.n_radial, basis.shape[-1])
        dens = dens.index_add(0, slot, basis)
        density = dens.view(n_atoms, self.n_species, self.n_radial, -1) * self.radial_scale
        flat = density.reshape(n_atoms, -1, density.shape[-1])  # (N, Z·B, Y)
        parts: List[torch.Tensor] = []
        start = 0
        for l in range(self.l_max + 1):
            size = 2 * l + 1
            a_l = torch.einsum("nky,kc->nyc", flat[..., start:start + size], self.mixing[l])
            start += size
            if l == 0:
                parts.append(a_l[:, 0])
            power = torch.einsum("nyc,nyd->ncd", a_l, a_l) / math.sqrt(size)
            parts.append(power.reshape(n_atoms, -1))
        invariants = torch.cat(parts, dim=-1)
        hidden = invariants.new_zeros(n_atoms, self.first[0].out_features)
        for k, layer in enumerate(self.first):
            rows = (z == k).nonzero().squeeze(1)
            if rows.numel() > 0:
                hidden = hidden.index_copy(0, rows, layer(invariants.index_select(0, rows)))
        return self.mlp(hidden), hidden.new_zeros(n_atoms)


class ScriptedEnsemble(nn.Module):
    """Heads of a trained :class:`~shallow_ensembles.model.ShallowEnsemble` on a scripted
    backbone, with metatomic's ``forward(systems, outputs, selected_atoms)``.

    ===================================  ============  ====  ================================
    output (``sample_kind``)             values shape  unit  meaning
    ===================================  ============  ====  ================================
    ``energy`` (system)                  (S, 1)        eV    mean total energy Ē
    ``energy`` (atom)                    (N, 1)        eV    mean atomic energies ē_i
    ``energy_ensemble`` (system)         (S, M)        eV    Ē + α_E (E_m − Ē)
    ``energy_ensemble`` (atom)           (N, M)        eV    ē_i + α_E (e_im − ē_i)
    ``energy_uncertainty`` (system)      (S, 1)        eV    α_E σ(E_m), ddof=1
    ``energy_uncertainty`` (atom)        (N, 1)        eV    α_E σ(e_im), ddof=1 (local σ)
    ===================================  ============  ====  ================================

    Per-atom σ are the spread of each atom's member energies; they do not add up to the total
    σ (members are correlated across atoms). Forces and stress come from the engine's autograd
    of ``energy``.
    """

    def __init__(self, model, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.bottleneck = model.bottleneck
        self.head = model.head
        self.n_members = int(model.n_members)
        self.cutoff = float(model.cutoff)
        self.register_buffer("species_index", model.species_index.clone())
        for name in ("scale", "shift", "feature_centre", "composition"):
            self.register_buffer(name, getattr(model, name).detach().clone())
        self.alpha_energy = float(model.alpha_energy)
        self.ddof = 1
        self.neighbors = NeighborListOptions(cutoff=self.cutoff, full_list=True, strict=True)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        """One full neighbour list within the cutoff."""
        return [self.neighbors]

    def atom_energies(self, system: System) -> torch.Tensor:
        """Member atomic energies e_im (N, M), eV, float64, as ``ShallowEnsemble.forward``."""
        pairs = system.get_neighbor_list(self.neighbors)
        samples = pairs.samples.values
        centre = samples[:, 0].to(torch.long)
        neighbour = samples[:, 1].to(torch.long)
        edge_vectors = pairs.values.reshape(-1, 3)
        types = system.types.to(torch.long)
        features, shared = self.backbone(types, centre, neighbour, edge_vectors)
        features = self.bottleneck(features)
        z = self.species_index[types]
        centred = features - self.feature_centre[z]
        learned = self.scale[z].unsqueeze(1) * (self.head(centred) + self.shift[z].unsqueeze(1))
        energies = learned.double() + self.composition[z].double().unsqueeze(1)
        return energies + shared.double().unsqueeze(1)

    def forward(self, systems: List[System], outputs: Dict[str, ModelOutput],
                selected_atoms: Optional[Labels] = None) -> Dict[str, TensorMap]:
        """metatomic's model interface (see the class table)."""
        dtype = systems[0].positions.dtype if len(systems) > 0 else torch.float64
        device = systems[0].positions.device if len(systems) > 0 else torch.device("cpu")
        per_system: List[torch.Tensor] = []
        per_atom: List[torch.Tensor] = []
        atom_ids: List[torch.Tensor] = []
        for s, system in enumerate(systems):
            energies = self.atom_energies(system)
            atoms = torch.arange(energies.shape[0], device=device)
            if selected_atoms is not None:
                chosen = selected_atoms.values
                atoms = chosen[chosen[:, 0] == s][:, 1].to(torch.long)
                energies = energies.index_select(0, atoms)
            per_atom.append(energies)
            per_system.append(energies.sum(dim=0, keepdim=True))
            atom_ids.append(torch.stack([torch.full_like(atoms, s), atoms], dim=1))
        results: Dict[str, TensorMap] = {}
        for name, request in outputs.items():
            if request.sample_kind == "atom":
                values = torch.cat(per_atom) if len(per_atom) > 0 else torch.zeros(
                    0, self.n_members, dtype=torch.float64, device=device)
                ids = torch.cat(atom_ids) if len(atom_ids) > 0 else torch.zeros(
                    0, 2, dtype=torch.long, device=device)
                samples = Labels(["system", "atom"], ids.to(torch.int32))
            else:
                values = torch.cat(per_system) if len(per_system) > 0 else torch.zeros(
                    0, self.n_members, dtype=torch.float64, device=device)
                ids = torch.arange(values.shape[0], device=device).reshape(-1, 1)
                samples = Labels(["system"], ids.to(torch.int32))
            mean = values.mean(dim=1, keepdim=True)
            if name == "energy":
                block_values, props = mean, Labels(["energy"], torch.zeros(
                    1, 1, dtype=torch.int32, device=device))
            elif name == "energy_ensemble":
                block_values = mean + self.alpha_energy * (values - mean)
                props = Labels(["energy"], torch.arange(
                    self.n_members, dtype=torch.int32, device=device).reshape(-1, 1))
            elif name == "energy_uncertainty":
                if self.n_members > self.ddof:
                    sigma = values.std(dim=1, correction=self.ddof, keepdim=True)
                else:
                    sigma = torch.zeros_like(mean)
                block_values = self.alpha_energy * sigma
                props = Labels(["energy"], torch.zeros(1, 1, dtype=torch.int32, device=device))
            else:
                raise ValueError(f"this model can not compute the output '{name}'")
            block = TensorBlock(values=block_values.to(dtype), samples=samples,
                                components=torch.jit.annotate(List[Labels], []),
                                properties=props)
            results[name] = TensorMap(Labels(["_"], torch.zeros(
                1, 1, dtype=torch.int32, device=device)), [block])
        return results
