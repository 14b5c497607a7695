"""A non-editable install works from any folder: the demo finds its assets as package data.

The package is built into a wheel from a copy of the files a checkout has (the demo assets are
links into ``examples/`` and ``models/``, as in git), installed into a fresh virtual
environment that sees this one's dependencies but not its editable install, and
``shallow-ensembles demo`` runs from an unrelated folder.
"""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import ROOT

ASSET_TARGETS = ("examples/configs/demo_water_two_step.yaml",
                 "examples/data/water_64H2O_60frames.extxyz", "models/water_two_step.pt")


@pytest.mark.slow
def test_installed_wheel_runs_the_demo_from_another_folder(tmp_path):
    tree = tmp_path / "checkout"
    shutil.copytree(ROOT / "src", tree / "src", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", *ASSET_TARGETS):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tree / name)
    run = {"check": True, "capture_output": True, "text": True}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", str(tree), "-w", str(tmp_path / "wheel")], **run)
    wheel = next((tmp_path / "wheel").glob("shallow_ensembles-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], **run)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], **run).stdout.strip()
    # this environment's packages (torch, ase, ...) without running its .pth files, so that
    # its editable install of this package stays invisible
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", str(wheel)], **run)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import shallow_ensembles; "
                            "print(shallow_ensembles.__file__)"], cwd=elsewhere, **run)
    assert Path(where.stdout.strip()).is_relative_to(venv)
    out = subprocess.run([str(venv / "bin" / "shallow-ensembles"), "demo", "--skip-training",
                          "--md-steps", "2", "--output", "demo"], cwd=elsewhere, **run)
    assert "using the shipped model" in out.stdout and "demo finished" in out.stdout
    assert (elsewhere / "demo" / "evaluation" / "metrics.json").is_file()
