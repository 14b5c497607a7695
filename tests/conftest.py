"""Shared fixtures: tiny seeded float64 models and the shipped data subsets."""

from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from shallow_ensembles.data import Batch
from shallow_ensembles.model import ShallowEnsemble
from shallow_ensembles.model.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
ETHANOL = ROOT / "tests" / "data" / "ethanol_60.extxyz"
WATER = ROOT / "examples" / "data" / "water_64H2O_60frames.extxyz"
SHIPPED_MODEL = ROOT / "models" / "water_two_step.pt"

torch.set_num_threads(1)


def tiny_model(species=(1, 6, 8), n_members=4, bottleneck=3, cutoff=4.0, seed=0,
               frames=None) -> ShallowEnsemble:
    """A small random float64 model whose heads differ visibly."""
    torch.manual_seed(seed)
    backbone = {"kind": "power-spectrum", "cutoff_A": cutoff, "n_radial": 4, "l_max": 3,
                "n_channels": 3, "hidden": (12, 10)}
    config = ModelConfig(backbone=backbone, bottleneck=bottleneck, n_members=n_members,
                         dtype="float64")
    model = ShallowEnsemble.from_config(config, species)
    if frames is not None:
        model.backbone.fit_density_scale(Batch.from_atoms(frames, model.cutoff))
    with torch.no_grad():
        model.head.weight.normal_(0.0, 1.0)
        # non-unit per-element scales s_Z, so that tests see them in energies and forces
        model.scale.copy_(torch.linspace(0.6, 1.4, len(model.species), dtype=model.dtype))
    return model


def member_energies(model, atoms):
    """Member total energies (M,) eV of one structure, numpy."""
    out = model.predict(Batch.from_atoms(atoms, model.cutoff), forces=False)
    return out["energy_ensemble"][0].detach().numpy()


def fd_member_forces(model, atoms, h=1e-5):
    """Member forces (M, N, 3) eV/Å by central differences of the member energies."""
    fd = np.zeros((model.n_members, len(atoms), 3))
    for a in range(len(atoms)):
        for x in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[a, x] += h
            minus.positions[a, x] -= h
            fd[:, a, x] = -(member_energies(model, plus) - member_energies(model, minus)) / (2 * h)
    return fd


def fd_member_stress(model, atoms, h=1e-6):
    """Member Voigt stresses (M, 6) eV/Å³ by central differences in the symmetric strain."""
    fd = np.zeros((model.n_members, 6))
    for k, (a, b) in enumerate([(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]):
        results = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[a, b] += sign * h / (1 if a == b else 2)
            strain[b, a] += 0 if a == b else sign * h / 2
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
            results.append(member_energies(model, strained))
        fd[:, k] = (results[0] - results[1]) / (2 * h) / atoms.get_volume()
    return fd


@pytest.fixture(scope="session")
def ethanol_frames():
    return ase.io.read(ETHANOL, ":")


@pytest.fixture(scope="session")
def water_frames():
    return ase.io.read(WATER, ":")


@pytest.fixture()
def model(ethanol_frames):
    return tiny_model(frames=ethanol_frames[:5])


BAD_INPUTS = {"missing_model": "no such model file", "unknown_element": "element C"}
"""Bad command-line inputs of the model-serving verbs → the text their error must contain."""


def bad_input(case, model, structure, tmp_path):
    """(model, structure) paths with one made bad: a missing model file, or a structure
    with an element (C) the water models do not know."""
    if case == "missing_model":
        return tmp_path / "missing.pt", structure
    methane = tmp_path / "methane.extxyz"
    ase.io.write(methane, Atoms(molecule("CH4"), cell=[6, 6, 6], pbc=True))
    return model, methane



def run_protocol(atoms, model_or_calc, protocol, output, **kwargs):
    """``run_md`` with a model (wrapped in our calculator) or a calculator, and a protocol
    mapping (validated by ``load_md_config``)."""
    from ase.calculators.calculator import BaseCalculator

    from shallow_ensembles.calculator import ShallowEnsembleCalculator
    from shallow_ensembles.md import load_md_config, run_md

    calc = model_or_calc if isinstance(model_or_calc, BaseCalculator) \
        else ShallowEnsembleCalculator(model_or_calc)
    return run_md(atoms, calc, load_md_config(protocol), output, **kwargs)
