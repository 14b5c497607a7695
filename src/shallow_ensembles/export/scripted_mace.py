# TorchScript resolves typing.List/Tuple, not PEP 604/585 forms
# ruff: noqa: UP006, UP035
# TorchScript has no zip(strict=) and cannot index a ModuleList with a loop variable
# ruff: noqa: B905, SIM113
"""TorchScript form of the ``mace`` backbone kind (the same mace-torch submodules and tensors).

:class:`~shallow_ensembles.model.mace_backbone.MaceBackbone` takes a ``Batch``; this module takes
the scripted ensemble's arrays (types, pair indices, pair vectors) and calls the very same MACE
submodules in the same order. The e3nn submodules are compiled with ``e3nn.util.jit.compile``
(e3nn's code-generated modules need it; mace-torch's own LAMMPS export does the same).
"""

from typing import List, Tuple

import torch
from torch import nn

from ..errors import ConfigError


class ScriptedMace(nn.Module):
    """Features h (N, C) and the shared per-atom energy (N,) eV of a trained MACE backbone."""

    def __init__(self, backbone):
        super().__init__()
        mace = backbone.mace
        if hasattr(mace, "pair_repulsion_fn"):
            raise ConfigError("model.backbone", "MACE models with a ZBL pair repulsion have no "
                              "metatomic export yet")
        self.n_species = len(backbone.species)
        self.register_buffer("species_index", backbone.species_index.clone())
        self.register_buffer("scalar_columns", backbone.scalar_columns.clone())
        self.register_buffer("atomic_numbers", mace.atomic_numbers.clone())
        self.node_embedding = mace.node_embedding
        self.spherical_harmonics = mace.spherical_harmonics
        self.radial_embedding = mace.radial_embedding
        self.interactions = mace.interactions
        self.products = mace.products
        self.readouts = nn.ModuleList(list(mace.readouts)[:-1])
        self.scale = float(torch.atleast_1d(mace.scale_shift.scale)[0])
        self.shift = float(torch.atleast_1d(mace.scale_shift.shift)[0])
        e0 = mace.atomic_energies_fn.atomic_energies.reshape(-1, self.n_species)[0]
        self.register_buffer("e0", e0.detach().clone())

    def forward(self, types: torch.Tensor, centre: torch.Tensor, neighbour: torch.Tensor,
                edge_vectors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """As ``MaceBackbone.forward``: sender i (centre), receiver j (neighbour)."""
        dtype = edge_vectors.dtype
        z = self.species_index[types]
        node_attrs = nn.functional.one_hot(z, self.n_species).to(dtype)
        edge_index = torch.stack([centre, neighbour])
        heads = torch.zeros_like(types)
        arange = torch.arange(types.shape[0], device=types.device)
        lengths = torch.linalg.norm(edge_vectors, dim=-1, keepdim=True)
        node_feats = self.node_embedding(node_attrs)
        edge_attrs = self.spherical_harmonics(edge_vectors)
        edge_feats, cutoff = self.radial_embedding(lengths, node_attrs, edge_index,
                                                   self.atomic_numbers)
        shared = node_attrs.new_zeros(types.shape[0])
        feats: List[torch.Tensor] = []
        k = 0
        for interaction, product in zip(self.interactions, self.products):
            node_feats, sc = interaction(node_attrs=node_attrs, node_feats=node_feats,
                                         edge_attrs=edge_attrs, edge_feats=edge_feats,
                                         edge_index=edge_index, cutoff=cutoff,
                                         first_layer=(k == 0), lammps_class=None,
                                         lammps_natoms=(0, 0))
            node_feats = product(node_feats=node_feats, sc=sc, node_attrs=node_attrs)
            feats.append(node_feats)
            k += 1
        k = 0
        for readout in self.readouts:
            shared = shared + readout(feats[k], heads)[arange, heads]
            k += 1
        shared = self.scale * shared + self.shift + self.e0.to(dtype)[z]
        return feats[-1][:, self.scalar_columns], shared


def compiled(backbone) -> torch.jit.ScriptModule:
    """:class:`ScriptedMace` of ``backbone``, compiled with e3nn's ``compile``."""
    from e3nn.util import jit

    return jit.compile(ScriptedMace(backbone))
