"""Data layer: reading and validating structures, neighbour lists, batches, splits, baselines."""

from .baseline import fit_composition_baseline
from .batch import Batch, Graph, collate, graphs_from_atoms
from .io import read_structures
from .split import Split, load_split, make_split, save_split

__all__ = [
    "Batch",
    "Graph",
    "Split",
    "collate",
    "fit_composition_baseline",
    "graphs_from_atoms",
    "load_split",
    "make_split",
    "read_structures",
    "save_split",
]
