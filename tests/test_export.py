"""Export to metatomic (issue 14): the exported TorchScript file against the native model.

Each shipped model is exported with the CLI, loaded with metatomic's own loader and run through
metatomic-ase's calculator (the real consumer): energy, per-member energies, per-atom energies,
forces, stress and σ must equal the native model in float64 to 1e-6 eV (eV/Å, eV/Å³).
Skipped when the ``metatomic`` extra is not installed.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from ase.io import read

from conftest import ETHANOL, ROOT, WATER
from shallow_ensembles.cli import main
from shallow_ensembles.data import Batch
from shallow_ensembles.export import atomistic_model
from shallow_ensembles.model import BACKBONES, load_model

mta = pytest.importorskip("metatomic.torch", reason="the metatomic extra is not installed "
                          "(pip install 'shallow-ensembles[metatomic]')")
from metatensor.torch import Labels  # noqa: E402 - after the skip

metatomic_ase = pytest.importorskip("metatomic_ase", reason="the metatomic extra is not "
                                    "installed (pip install 'shallow-ensembles[metatomic]')")

BATIO3 = ROOT / "tests" / "data" / "batio3_23.extxyz"
CASES = {  # shipped model, structure file, frame
    "water": ("water_two_step", WATER, 3),
    "batio3": ("batio3_two_step", BATIO3, 2),
    "ethanol": ("ethanol_two_step", ETHANOL, 7),
}
if importlib.util.find_spec("mace") is not None:  # the shipped MACE-backed model
    CASES["ethanol_mace"] = ("ethanol_mace_two_step", ETHANOL, 7)
TOL = 1e-6  # eV, eV/Å, eV/Å³ (float64)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every shipped model exported once through the CLI (float64)."""
    folder = tmp_path_factory.mktemp("metatomic")
    paths = {}
    for case, (name, _, _) in CASES.items():
        paths[case] = folder / f"{name}-metatomic.pt"
        code = main(["export", str(ROOT / "models" / f"{name}.pt"), "--output",
                     str(paths[case])])
        assert code == 0
    return paths


def native_reference(name, atoms):
    """The native model's calibrated outputs in float64 (the oracle)."""
    model = load_model(ROOT / "models" / f"{name}.pt").double()
    batch = Batch.from_atoms(atoms, model.cutoff)
    out = model.predict(batch, forces=True, stress=bool(atoms.pbc.all()), calibrated=True)
    with torch.no_grad():
        members = model(batch)  # (N, M) member atomic energies, raw
    alpha = float(model.alpha_energy)
    ref = {k: v.detach().numpy() for k, v in out.items()}
    ref["atom_sigma"] = alpha * members.std(dim=1, correction=1).numpy()
    return ref


def metatomic_calculator(path, **kwargs):
    outputs = {key: mta.ModelOutput(unit="eV", sample_kind="system")
               for key in ("energy_ensemble", "energy_uncertainty")}
    return metatomic_ase.MetatomicCalculator(
        mta.load_atomistic_model(str(path)), additional_outputs=outputs,
        check_consistency=True, **kwargs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_exported_model_matches_native_through_metatomic_ase(case, exported):
    name, structure, frame = CASES[case]
    atoms = read(structure, frame)
    atoms.rattle(0.02, seed=3)
    ref = native_reference(name, atoms)
    atoms.calc = metatomic_calculator(exported[case], uncertainty_threshold=None)
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    energies = atoms.get_potential_energies()
    extra = atoms.calc.additional_outputs
    ensemble = extra["energy_ensemble"].block().values.detach().numpy()[0]
    sigma = float(extra["energy_uncertainty"].block().values.detach()[0, 0])

    assert abs(energy - ref["energy"][0]) < TOL, (energy, ref["energy"][0])
    np.testing.assert_allclose(ensemble, ref["energy_ensemble"][0], rtol=0, atol=TOL)
    np.testing.assert_allclose(sigma, ref["energy_uncertainty"][0], rtol=0, atol=TOL)
    np.testing.assert_allclose(energies, ref["energies"], rtol=0, atol=TOL)
    np.testing.assert_allclose(forces, ref["forces"], rtol=0, atol=TOL)
    # the calibrated members are rescaled about the mean: their σ is the exported σ
    assert abs(ensemble.std(ddof=1) - sigma) < TOL
    assert abs(ensemble.mean() - energy) < TOL
    if atoms.pbc.all():
        np.testing.assert_allclose(atoms.get_stress(), ref["stress"][0], rtol=0, atol=TOL)


def tiny_kind_model(kind, frames):
    from test_backbones import build

    model = build(kind, frames)
    with torch.no_grad():
        model.alpha_energy.fill_(1.7)  # a visible calibration factor
    return model


KIND_CASES = {"water": (WATER, 3), "batio3": (BATIO3, 2), "ethanol": (ETHANOL, 7)}


@pytest.fixture(scope="module")
def exported_kinds(tmp_path_factory):
    """A tiny float64 model of every registered backbone kind per system, exported."""
    from test_backbones import kinds

    folder = tmp_path_factory.mktemp("kinds")
    done = {}
    for param in kinds():
        kind = param.values[0]
        if any(mark.name == "skipif" and mark.args and mark.args[0] for mark in param.marks):
            continue
        for case, (structure, _) in KIND_CASES.items():
            model = tiny_kind_model(kind, read(structure, ":2"))
            path = folder / f"{kind}-{case}.pt"
            atomistic_model(model, "float64").save(str(path))
            done[kind, case] = (model, path)
    return done


@pytest.mark.parametrize("case", sorted(KIND_CASES))
@pytest.mark.parametrize("kind", sorted(BACKBONES))
def test_every_backbone_kind_exports(kind, case, exported_kinds):
    """Each registered backbone (tiny, float64, α_E = 1.7) agrees with its export."""
    if (kind, case) not in exported_kinds:
        pytest.skip(f"the {kind} backbone's optional dependency is not installed")
    model, path = exported_kinds[kind, case]
    structure, frame = KIND_CASES[case]
    atoms = read(structure, frame)
    atoms.rattle(0.02, seed=5)
    out = model.predict(Batch.from_atoms(atoms, model.cutoff), forces=True,
                        stress=bool(atoms.pbc.all()), calibrated=True)
    atoms.calc = metatomic_calculator(path, uncertainty_threshold=None)
    energy = atoms.get_potential_energy()
    extra = atoms.calc.additional_outputs
    ensemble = extra["energy_ensemble"].block().values.detach().numpy()[0]
    assert abs(energy - float(out["energy"].detach()[0])) < TOL
    np.testing.assert_allclose(ensemble, out["energy_ensemble"][0].detach().numpy(), rtol=0,
                               atol=TOL)
    np.testing.assert_allclose(float(extra["energy_uncertainty"].block().values.detach()[0, 0]),
                               float(out["energy_uncertainty"].detach()[0]), rtol=0, atol=TOL)
    np.testing.assert_allclose(atoms.get_forces(), out["forces"].detach().numpy(), rtol=0,
                               atol=TOL)
    if atoms.pbc.all():
        np.testing.assert_allclose(atoms.get_stress(), out["stress"][0].detach().numpy(),
                                   rtol=0, atol=TOL)


def test_float32_export_matches_the_native_float32_model(tmp_path):
    """``--dtype float32``: the same float32 network; only the final cast of the float64 sums
    to float32 (metatomic wants outputs in the model dtype) costs precision (~1 meV at 3e4 eV)."""
    name, structure, frame = CASES["water"]
    path = tmp_path / "water32.pt"
    assert main(["export", str(ROOT / "models" / f"{name}.pt"), "--output", str(path),
                 "--dtype", "float32"]) == 0
    atoms = read(structure, frame)
    model = load_model(ROOT / "models" / f"{name}.pt")  # float32 as shipped
    out = model.predict(Batch.from_atoms(atoms, model.cutoff, dtype=torch.float32),
                        calibrated=True)
    atoms.calc = metatomic_calculator(path, uncertainty_threshold=None)
    assert mta.load_atomistic_model(str(path)).capabilities().dtype == "float32"
    energy = atoms.get_potential_energy()
    assert abs(energy - float(out["energy"].detach()[0])) < 4e-3
    np.testing.assert_allclose(atoms.get_forces(), out["forces"].detach().numpy(), rtol=0,
                               atol=1e-4)
    sigma = float(atoms.calc.additional_outputs["energy_uncertainty"].block().values.detach()[0, 0])
    assert abs(sigma - float(out["energy_uncertainty"].detach()[0])) < 1e-4


def test_per_atom_uncertainty_reaches_metatomic_ase(exported):
    """metatomic-ase reads the per-atom ``energy_uncertainty`` and warns above its threshold;
    the values are α_E times the spread of each atom's member energies."""
    name, structure, frame = CASES["ethanol"]
    atoms = read(structure, frame)
    ref = native_reference(name, atoms)
    threshold = float(np.median(ref["atom_sigma"]))
    atoms.calc = metatomic_ase.MetatomicCalculator(
        str(exported["ethanol"]), uncertainty_threshold=threshold, check_consistency=True,
        additional_outputs={"energy_uncertainty": mta.ModelOutput(unit="eV",
                                                                  sample_kind="atom")})
    with pytest.warns(UserWarning, match="atomic energy uncertainties are larger") as record:
        atoms.get_potential_energy()
    flagged = np.flatnonzero(ref["atom_sigma"] > threshold)
    assert str(flagged.tolist()).replace(",", "") in str(record[0].message).replace(",", "")
    per_atom = atoms.calc.additional_outputs["energy_uncertainty"].block().values
    np.testing.assert_allclose(per_atom.detach().numpy()[:, 0], ref["atom_sigma"],
                               rtol=0, atol=TOL)


def test_selected_atoms_give_the_energy_of_those_atoms(exported):
    """Domain decomposition (LAMMPS): with ``selected_atoms`` the energy is the sum over them."""
    name, structure, frame = CASES["water"]
    atoms = read(structure, frame)
    ref = native_reference(name, atoms)
    model = mta.load_atomistic_model(str(exported["water"]))
    calc = metatomic_ase.MetatomicCalculator(model)
    chosen = np.arange(0, len(atoms), 3)
    selected = Labels(["system", "atom"], torch.tensor([[0, int(i)] for i in chosen]))
    out = calc.run_model(atoms, {"energy": mta.ModelOutput(unit="eV", sample_kind="system")},
                         selected_atoms=selected)
    value = float(out["energy"].block().values.detach()[0, 0])
    assert abs(value - ref["energies"][chosen].sum()) < TOL


def test_metadata_and_capabilities(exported):
    model = mta.load_atomistic_model(str(exported["batio3"]))
    capabilities = model.capabilities()
    assert sorted(capabilities.atomic_types) == [8, 22, 56]
    assert capabilities.dtype == "float64"
    assert capabilities.length_unit == "angstrom"
    assert abs(capabilities.interaction_range - 5.0) < 1e-12
    assert {"energy", "energy_ensemble", "energy_uncertainty"} <= set(capabilities.outputs)
    (request,) = model.requested_neighbor_lists()
    assert request.full_list and abs(request.cutoff - 5.0) < 1e-12
    metadata = model.metadata()
    assert metadata.name == "batio3_two_step"
    assert any("2602.15747" in ref for ref in metadata.references["architecture"])
    assert any("batio3_two_step.md" in ref for ref in metadata.references["model"])
    alpha = torch.load(ROOT / "models" / "batio3_two_step.pt",
                       weights_only=True)["calibration"]["alpha_energy"]
    assert float(metadata.extra["alpha_energy"]) == pytest.approx(alpha, rel=1e-12)


def test_export_errors_are_one_line(tmp_path, capsys):
    code = main(["export", str(tmp_path / "missing.pt"), "--output", str(tmp_path / "x.pt")])
    assert code == 2
    assert "no such model file" in capsys.readouterr().err


def test_readme_metatomic_snippet_runs(tmp_path, monkeypatch, capsys):
    """The ASE snippet of the README's metatomic section runs on the exported shipped model."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Run in LAMMPS, i-PI or ASE through metatomic", 1)[1].split("\n## ")[0]
    (block,) = re.findall(r"```py\n(.*?)```", section, flags=re.S)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    assert main(["export", str(ROOT / "models" / "water_two_step.pt"), "--output",
                 "water-metatomic.pt"]) == 0
    exec(compile(block, "README.md", "exec"), {})  # noqa: S102
    assert re.search(r"E = -?\d+\.\d+ ± \d+\.\d+ eV over 8 members", capsys.readouterr().out)


NETWORK_ERRORS = ("No matching distribution", "Could not find a version", "NewConnectionError",
                  "Network is unreachable", "Temporary failure in name resolution",
                  "Failed to establish a new connection", "ConnectionError")
CLEAN_SCRIPT = textwrap.dedent("""
    import json, sys
    try:
        import shallow_ensembles  # noqa: F401
        raise SystemExit("shallow_ensembles is importable: this venv is not clean")
    except ModuleNotFoundError:
        pass
    import ase.io
    import metatomic.torch as mta
    from metatomic_ase import MetatomicCalculator

    results = []
    for model, structure, frame in json.loads(sys.argv[1]):
        atoms = ase.io.read(structure, frame)
        outputs = {"energy_uncertainty": mta.ModelOutput(unit="eV", sample_kind="system")}
        atoms.calc = MetatomicCalculator(model, additional_outputs=outputs,
                                         uncertainty_threshold=None)
        sigma = atoms.calc.run_model(atoms, outputs)["energy_uncertainty"].block().values
        results.append({"energy": atoms.get_potential_energy(),
                        "forces": atoms.get_forces().tolist(),
                        "energy_uncertainty": float(sigma.detach()[0, 0])})
    print(json.dumps(results))
""")


@pytest.mark.slow
def test_exported_file_runs_without_this_package(exported, exported_kinds, tmp_path):
    """A fresh venv with only torch, metatomic-torch, metatomic-ase and ase (no mace-torch, no
    e3nn) loads and runs the export of every shipped model and of every backbone kind, and
    reproduces the native energy, forces and σ."""
    venv = tmp_path / "clean-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", f"torch=={torch.__version__.split('+')[0]}",
         "metatomic-torch", "metatomic-ase", "ase"],
        capture_output=True, text=True, env=env)
    if install.returncode != 0:
        text = install.stdout + install.stderr
        if any(marker in text for marker in NETWORK_ERRORS):
            pytest.skip(f"cannot install metatomic-torch from the package registry: "
                        f"{text.strip().splitlines()[-1]}")
        raise AssertionError(f"pip install in the clean venv failed:\n{text}")
    script = tmp_path / "run_exported.py"
    script.write_text(CLEAN_SCRIPT)
    jobs, refs = [], []
    for case, (name, structure, frame) in sorted(CASES.items()):  # every shipped model
        jobs.append((str(exported[case]), str(structure), frame))
        refs.append(native_reference(name, read(structure, frame)))
    for (_, case), (model, path) in sorted(exported_kinds.items()):
        if case == "batio3":
            structure, frame = KIND_CASES[case]
            jobs.append((str(path), str(structure), frame))
            atoms = read(structure, frame)
            out = model.predict(Batch.from_atoms(atoms, model.cutoff), calibrated=True)
            refs.append({k: v.detach().numpy() for k, v in out.items()})
    run = subprocess.run([python, str(script), json.dumps(jobs)], capture_output=True,
                         text=True, cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(results) == len(refs)
    for result, ref in zip(results, refs, strict=True):
        assert abs(result["energy"] - ref["energy"][0]) < TOL
        assert abs(result["energy_uncertainty"] - ref["energy_uncertainty"][0]) < TOL
        np.testing.assert_allclose(result["forces"], ref["forces"], rtol=0, atol=TOL)

