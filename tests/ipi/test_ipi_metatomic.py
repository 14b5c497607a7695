"""i-PI's own metatomic client (``i-pi-py_driver -m metatomic``) on the exported shipped water
model, next to our driver (issue 14): a 10-step NVT run with the same seed gives the same
positions at every step, to 1e-5 Å, in float64; with ``energy_ensemble=true`` the client sends
the calibrated member energies as ``committee_pot``."""

import os
import secrets
import subprocess
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.units import Hartree

from conftest import ROOT, SHIPPED_MODEL
from shallow_ensembles import ShallowEnsembleCalculator
from shallow_ensembles.data.ipi_outputs import read_committee_pot
from shallow_ensembles.ipi.run import ipi_executable

pytest.importorskip("metatomic.torch", reason="the metatomic extra is not installed "
                    "(pip install 'shallow-ensembles[metatomic]')")
pytest.importorskip("vesin.metatomic", reason="i-PI's metatomic client needs vesin.metatomic")

STEPS = 10
TIMEOUT_S = 180
COMMITTEE_POT = ("<trajectory filename='committee_pot' stride='1' extra_type='committee_pot'> "
                 "extras </trajectory>")
DRIVER_FILE = ROOT / "src" / "shallow_ensembles" / "ipi" / "driver.py"
INPUT = """<simulation verbosity='low'>
  <output prefix='simulation'>
    <trajectory filename='pos' stride='1' format='ase'> positions </trajectory>
    {extras}
  </output>
  <total_steps> {steps} </total_steps>
  <prng> <seed> 4242 </seed> </prng>
  <ffsocket name='model' mode='unix' pbc='true'>
    <address> {address} </address> <latency> 1e-3 </latency>
  </ffsocket>
  <system>
    <initialize nbeads='1'>
      <file mode='ase'> water.extxyz </file>
      <velocities mode='thermal' units='kelvin'> 300 </velocities>
    </initialize>
    <forces> <force forcefield='model'> </force> </forces>
    <motion mode='dynamics'>
      <dynamics mode='nvt'>
        <timestep units='femtosecond'> 0.5 </timestep>
        <thermostat mode='svr'> <tau units='femtosecond'> 10 </tau> </thermostat>
      </dynamics>
    </motion>
    <ensemble> <temperature units='kelvin'> 300 </temperature> </ensemble>
  </system>
</simulation>
"""


def run_nvt(folder: Path, driver_args: list[str], extras: str = "") -> list:
    """i-PI + one ``i-pi-py_driver`` client; the positions (Å) of every step."""
    folder.mkdir()
    address = f"se-mta-{secrets.token_hex(4)}"
    (folder / "input.xml").write_text(INPUT.format(steps=STEPS, address=address, extras=extras))
    ase.io.write(folder / "water.extxyz",
                 ase.io.read(ROOT / "md_protocols" / "ipi" / "water_64H2O.extxyz", 0))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(folder / "ipi.log", "w") as log:
        server = subprocess.Popen([ipi_executable(), "input.xml"], cwd=folder, stdout=log,
                                  stderr=subprocess.STDOUT, env=env)
    socket_file = Path(f"/tmp/ipi_{address}")
    client = None
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not socket_file.exists():
            assert server.poll() is None, (folder / "ipi.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "i-PI did not open its socket"
            time.sleep(0.2)
        driver = str(Path(ipi_executable()).parent / "i-pi-py_driver")
        with open(folder / "driver.log", "w") as log:
            client = subprocess.Popen([driver, "-u", "-a", address, *driver_args], cwd=folder,
                                      stdout=log, stderr=subprocess.STDOUT, env=env)
        server.wait(timeout=TIMEOUT_S)
        client.wait(timeout=30)
    finally:
        for process in (client, server):
            if process is not None and process.poll() is None:
                process.kill()
        socket_file.unlink(missing_ok=True)
    assert server.returncode == 0, (folder / "ipi.log").read_text()[-2000:]
    return ase.io.read(folder / "simulation.pos_0.extxyz", ":")


@pytest.mark.slow
def test_metatomic_client_follows_our_driver(tmp_path):
    exported = tmp_path / "water-metatomic.pt"
    from shallow_ensembles.cli import main

    assert main(["export", str(SHIPPED_MODEL), "--output", str(exported)]) == 0
    theirs = run_nvt(tmp_path / "metatomic", [
        "-m", "metatomic", "-o", f"template=water.extxyz,model={exported},energy_ensemble=true"],
        extras=COMMITTEE_POT)
    ours = run_nvt(tmp_path / "ours", [
        "-m", "custom", "-P", str(DRIVER_FILE), "-o",
        f"model={SHIPPED_MODEL},template=water.extxyz,dtype=float64,committee=false"])
    assert len(theirs) == len(ours) == STEPS + 1
    start = ase.io.read(tmp_path / "ours" / "water.extxyz")
    moved = np.abs(ours[-1].positions - start.positions).max()
    assert moved > 1e-3, "the atoms did not move: the comparison would be empty"
    for step, (a, b) in enumerate(zip(theirs, ours, strict=True)):
        gap = np.abs(a.positions - b.positions).max()
        assert gap < 1e-5, f"step {step}: positions differ by {gap:.3g} Å"
    # the calibrated members reach i-PI as committee_pot (printed with 9 significant digits)
    members = read_committee_pot(tmp_path / "metatomic" / "simulation.committee_pot_0")
    assert members.shape == (STEPS + 1, 8)
    calc = ShallowEnsembleCalculator(SHIPPED_MODEL, dtype="float64")
    for step in (0, STEPS):
        atoms = theirs[step].copy()
        atoms.calc = calc
        native = calc.get_property("energy_ensemble", atoms)
        # i-PI's and ASE's Hartree differ by ~1e-7 (relative): compare the totals to that, and
        # the calibrated spread about the mean to the print precision
        np.testing.assert_allclose(members[step], native, rtol=3e-7, atol=0)
        np.testing.assert_allclose(members[step] - members[step].mean(), native - native.mean(),
                                   rtol=0, atol=2e-5 * Hartree)
