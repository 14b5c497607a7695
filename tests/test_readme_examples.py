"""The README snippet and every example script run (examples in smoke mode)."""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, SHIPPED_MODEL

EXAMPLES = sorted((ROOT / "examples").glob("[0-9][0-9]_*.py"))


def test_readme_snippet_runs(capsys, monkeypatch):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has a python snippet"
    monkeypatch.chdir(ROOT)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})  # noqa: S102
    out = capsys.readouterr().out
    assert re.search(r"E = -?\d+\.\d+ ± \d+\.\d+ eV, max σ_F = \d+\.\d+ eV/Å", out)


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_in_smoke_mode(script, tmp_path):
    env = {**os.environ, "SHALLOW_ENSEMBLES_SMOKE": "1", "OMP_NUM_THREADS": "1",
           "EXAMPLE_OUTPUT": str(tmp_path / "out")}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shipped_model_has_a_card():
    assert SHIPPED_MODEL.exists()
    card = (ROOT / "models" / "README.md").read_text()
    assert SHIPPED_MODEL.name in card and "α_E" in card
