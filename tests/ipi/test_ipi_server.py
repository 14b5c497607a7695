"""A real ``i-pi`` process with the shallow-ensemble driver over UNIX sockets (ipi/run.py).

The shipped inputs of ``md_protocols/ipi`` run on a small water box with a tiny random model;
what i-PI writes is compared with the ASE calculator on the structures i-PI wrote.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.units import Hartree

from conftest import BAD_INPUTS, ROOT, bad_input, tiny_model
from shallow_ensembles import ShallowEnsembleCalculator, save_model
from shallow_ensembles.cli import main
from shallow_ensembles.errors import ConfigError
from shallow_ensembles.ipi.outputs import (
    read_active_output,
    read_committee_pot,
    read_committee_uncertainty,
    read_extras,
)
from shallow_ensembles.ipi.run import ipi_executable, prepare_run, run_ipi

PROTOCOLS = ROOT / "md_protocols" / "ipi"
TIMEOUT_S = 90


def water_box(length=6.21, seed=0) -> Atoms:
    """Eight randomly oriented H2O on a 2×2×2 grid of a cubic box (Å), about 1 g/cm³."""
    rng = np.random.default_rng(seed)
    atoms = Atoms(cell=[length] * 3, pbc=True)
    for corner in np.ndindex(2, 2, 2):
        water = molecule("H2O")
        water.rotate(rng.uniform(0, 360), rng.normal(size=3))
        water.translate((np.array(corner) + 0.5) * length / 2)
        atoms += water
    return atoms


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ipi_server")
    save_model(tiny_model(species=(1, 8)), folder / "model.pt")
    save_model(tiny_model(species=(1, 8), seed=1), folder / "baseline.pt")
    ase.io.write(folder / "water.extxyz", water_box())
    return {"model": folder / "model.pt", "baseline": folder / "baseline.pt",
            "water": folder / "water.extxyz"}


def protocol_copy(name: str, folder: Path, **replace) -> Path:
    """A shipped input printing every step, with text replacements."""
    text = (PROTOCOLS / name).read_text().replace("stride='10'", "stride='1'")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    target.write_text(text)
    return target


def ase_ensemble(model_file, frames):
    """σ_E (eV) and member energies (eV) of ``frames`` from the ASE calculator."""
    calc = ShallowEnsembleCalculator(model_file)
    sigma, members = [], []
    for atoms in frames:
        atoms.calc = calc
        sigma.append(calc.get_property("energy_uncertainty", atoms))
        members.append(calc.get_property("energy_ensemble", atoms))
    return np.array(sigma), np.array(members)


def test_nvt_committee_equals_ase_and_flags_only_above_thresholds(files, tmp_path):
    low = protocol_copy("nvt_committee.xml", tmp_path,
                        **{"0.5 </active_thresh>": "1e-6 </active_thresh>"})
    summary = run_ipi(low, files["model"], structure=files["water"], steps=20,
                      output=tmp_path / "low", timeout_s=TIMEOUT_S,
                      driver_options={"energy_per_atom_lo_eV": 1e-6, "forces_lo_eV_per_A": 1e-6})
    run = summary.run_dir
    assert summary.steps == 20
    frames = ase.io.read(run / "simulation.pos_0.extxyz", ":")
    assert len(frames) == 21
    sigma, members = ase_ensemble(files["model"], frames)
    np.testing.assert_allclose(read_committee_uncertainty(run / "simulation.committee_sigma_0"),
                               sigma, rtol=1e-6)
    np.testing.assert_allclose(read_committee_pot(run / "simulation.committee_pot_0"), members,
                               rtol=1e-6, atol=1e-6)
    assert np.std(members, axis=1, ddof=1) == pytest.approx(sigma, rel=1e-9)  # ddof = 1

    evaluations = summary.evaluations
    assert evaluations >= 21
    assert summary.energy_uncertainty_max == pytest.approx(sigma.max(), rel=1e-6)
    active = read_active_output(summary.active_output)
    assert len(active) == summary.n_active == evaluations
    np.testing.assert_allclose(active[0]["positions"], frames[0].positions, atol=1e-5)
    np.testing.assert_allclose(active[0]["cell"], frames[0].cell.array, atol=1e-5)
    assert active[0]["energy_uncertainty"] == pytest.approx(sigma[0], rel=1e-6)
    candidates = ase.io.read(summary.candidates, ":")
    assert len(candidates) == summary.n_candidates == evaluations
    assert {c.info["trust_level"] for c in candidates} == {"candidate"}
    written = [c.info["energy_uncertainty"] for c in candidates]
    np.testing.assert_allclose(written, ase_ensemble(files["model"], candidates)[0], rtol=1e-6)

    high_e = 2 * summary.energy_uncertainty_max
    high = protocol_copy("nvt_committee.xml", tmp_path / "high_input",
                         **{"0.5 </active_thresh>": f"{high_e} </active_thresh>"})
    above = run_ipi(high, files["model"], structure=files["water"], steps=20,
                    output=tmp_path / "high", timeout_s=TIMEOUT_S, driver_options={
                        "energy_per_atom_lo_eV": high_e / summary.n_atoms,
                        "forces_lo_eV_per_A": 2 * summary.max_forces_uncertainty_max})
    assert above.energy_uncertainty_max == pytest.approx(summary.energy_uncertainty_max)
    assert above.n_active == 0 and above.active_output.is_file()
    assert above.n_candidates == 0 and not above.candidates.exists()
    assert above.levels == {"trusted": evaluations}


def test_pimd_evaluates_every_bead(files, tmp_path):
    xml = protocol_copy("pimd_committee.xml", tmp_path, **{"nbeads='8'": "nbeads='4'"})
    summary = run_ipi(xml, files["model"], structure=files["water"], steps=3,
                      output=tmp_path / "run", timeout_s=TIMEOUT_S)
    run = summary.run_dir
    assert summary.steps == 3 and summary.evaluations >= 4 * 4
    bead_files = [run / f"simulation.committee_pot_{b}" for b in range(4)]
    per_bead = []
    for bead, pot_file in enumerate(bead_files):
        frames = ase.io.read(run / f"simulation.pos_{bead}.extxyz", ":")
        sigma, members = ase_ensemble(files["model"], frames)
        pot = read_committee_pot(pot_file)
        np.testing.assert_allclose(pot, members, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(
            read_committee_uncertainty(run / f"simulation.committee_sigma_{bead}"), sigma,
            rtol=1e-6)
        per_bead.append(pot)
    assert len(per_bead[0]) == 4
    assert not np.allclose(per_bead[0], per_bead[1])  # the beads differ
    np.testing.assert_allclose(read_committee_pot(bead_files), np.mean(per_bead, axis=0))


def test_weighted_baseline_through_the_cli(files, tmp_path, capsys):
    xml = protocol_copy("weighted_baseline.xml", tmp_path)
    code = main(["ipi", "run", str(xml), "--model", str(files["model"]), "--baseline-model",
                 str(files["baseline"]), "--structure", str(files["water"]), "--steps", "3",
                 "--output", str(tmp_path / "run"), "--timeout-s", str(TIMEOUT_S)])
    assert code == 0
    assert "3 steps" in capsys.readouterr().out
    run = tmp_path / "run"
    frames = ase.io.read(run / "simulation.pos_0.extxyz", ":")
    _, baseline_members = ase_ensemble(files["baseline"], frames)
    baseline = np.stack([v for v in read_extras(run / "simulation.baseline_pot_0")[1]])
    np.testing.assert_allclose(baseline.ravel() * Hartree, baseline_members.mean(axis=1),
                               rtol=1e-6)
    sigma = read_committee_uncertainty(run / "simulation.committee_sigma_0") / Hartree  # Ha
    s_b2 = (1.0 / Hartree) ** 2  # baseline_uncertainty: 1 eV on the total energy
    weight = np.concatenate(read_extras(run / "simulation.wb_weight_0")[1])
    np.testing.assert_allclose(weight, s_b2 / (s_b2 + sigma**2), rtol=1e-6)
    committee = read_committee_pot(run / "simulation.committee_pot_0").mean(axis=1)  # eV
    potential = np.loadtxt(run / "simulation.out")[:, 4]  # eV
    np.testing.assert_allclose(potential, baseline.ravel() * Hartree + weight * committee,
                               rtol=1e-6)


def test_driver_exits_cleanly_when_the_server_vanishes(files, tmp_path):
    plan = prepare_run(PROTOCOLS / "nvt_committee.xml", tmp_path, structure=files["water"],
                       steps=100000)
    address = plan.sockets[0].address
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "ipi.log", "w") as log:
        server = subprocess.Popen([sys.executable, ipi_executable(), "input.xml"],
                                  cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
        driver = subprocess.Popen(
            [sys.executable, "-m", "shallow_ensembles.cli", "ipi-driver", "--model",
             str(files["model"]), "--structure", str(plan.template), "--unix", address],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            deadline = time.monotonic() + TIMEOUT_S
            out = tmp_path / "simulation.out"
            while not (out.is_file() and len(out.read_text().splitlines()) > 8):
                assert driver.poll() is None, f"driver died: {driver.communicate()[1]}"
                assert time.monotonic() < deadline and server.poll() is None, "no MD steps"
                time.sleep(0.1)
            server.kill()
            server.wait()
            _, err = driver.communicate(timeout=TIMEOUT_S)
        finally:
            for process in (server, driver):
                if process.poll() is None:
                    process.kill()
                    process.wait()
            Path("/tmp/ipi_" + address).unlink(missing_ok=True)
    assert driver.returncode == 0, err
    assert "closed the connection" in err and "Traceback" not in err


def test_prepare_run_edits_a_copy_with_unique_sockets(tmp_path):
    import xml.etree.ElementTree as ET

    original = (PROTOCOLS / "weighted_baseline.xml").read_text()
    plans = [prepare_run(PROTOCOLS / "weighted_baseline.xml", tmp_path / name, steps=7)
             for name in ("a", "b")]
    assert (PROTOCOLS / "weighted_baseline.xml").read_text() == original
    addresses = [s.address for plan in plans for s in plan.sockets]
    assert len(set(addresses)) == 4  # unique per socket and per run
    assert [s.baseline for s in plans[0].sockets] == [True, False]
    root = ET.parse(plans[0].input_xml).getroot()
    assert root.findtext("total_steps").strip() == "7"
    assert [e.text.strip() for e in root.iter("address")] == addresses[:2]
    assert plans[0].template == (PROTOCOLS / "water_64H2O.extxyz").resolve()  # made absolute
    with pytest.raises(ConfigError, match="parse_json"):
        bad = protocol_copy("nvt_committee.xml", tmp_path / "bad",
                            **{"<parse_json> true </parse_json>": ""})
        prepare_run(bad, tmp_path / "c")


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_ipi_run_errors_exit_2_before_starting_ipi(files, tmp_path, capsys, case):
    model, structure = bad_input(case, files["model"], files["water"], tmp_path)
    code = main(["ipi", "run", str(PROTOCOLS / "nvt_committee.xml"), "--model", str(model),
                 "--structure", str(structure), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ")
    assert BAD_INPUTS[case] in err
    assert not (tmp_path / "run" / "ipi.log").exists()  # i-PI never started


def test_a_driver_with_the_wrong_atom_count_leaves_the_server_usable(files, tmp_path):
    """A driver whose template has fewer atoms refuses the first structure and disconnects;
    a correct driver connecting afterwards still runs the simulation to its end."""
    import threading

    from shallow_ensembles.errors import DataError
    from shallow_ensembles.ipi.driver import ShallowEnsembleDriver, serve
    from shallow_ensembles.ipi.run import ipi_executable, prepare_run

    plan = prepare_run(protocol_copy("nvt_committee.xml", tmp_path / "input"), tmp_path / "run",
                       structure=files["water"], steps=3)
    small = tmp_path / "small.extxyz"
    ase.io.write(small, water_box()[:21])
    wrong = ShallowEnsembleDriver(model=str(files["model"]), template=str(small))
    right = ShallowEnsembleDriver(model=str(files["model"]), template=str(files["water"]))
    connect = plan.sockets[0].connect_kwargs()
    log = open(plan.run_dir / "ipi.log", "w")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen([sys.executable, ipi_executable(), plan.input_xml.name],
                               cwd=plan.run_dir, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    outcome = {}
    try:
        with pytest.raises(DataError, match="i-PI server sent 24 atoms but the template has 21"):
            serve(wrong, timeout_s=60, server_timeout_s=60, **connect)
        thread = threading.Thread(target=lambda: outcome.update(
            result=serve(right, timeout_s=60, server_timeout_s=60, **connect)), daemon=True)
        thread.start()
        process.wait(timeout=TIMEOUT_S)
        thread.join(30)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
        Path("/tmp/ipi_" + connect["unix"]).unlink(missing_ok=True)
    assert process.returncode == 0, (plan.run_dir / "ipi.log").read_text()[-2000:]
    assert wrong.n_evaluations == 0
    assert outcome.get("result") == "exit" and right.n_evaluations >= 4
