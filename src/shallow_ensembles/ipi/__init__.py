"""i-PI integration: the shallow-ensemble driver, ``ipi run`` orchestration, output readers.

Importing this package is cheap: names load their module (and torch, i-PI) on first access.

- :class:`~shallow_ensembles.ipi.driver.ShallowEnsembleDriver`: the i-PI python driver (also
  ``i-pi-py_driver -m custom -P <driver.py>``), and :func:`~shallow_ensembles.ipi.driver.serve`
- :func:`~shallow_ensembles.ipi.run.run_ipi`: i-PI plus driver(s) for one input, with a summary
- :func:`~shallow_ensembles.ipi.outputs.read_committee_pot` and friends: i-PI's committee outputs
  in eV and Å (numpy only)
"""

from __future__ import annotations

import importlib

_WHERE = {
    "ShallowEnsembleDriver": "driver",
    "serve": "driver",
    "run_ipi": "run",
    "RunSummary": "run",
    "IPIRunError": "run",
    "read_committee_pot": "outputs",
    "read_committee_uncertainty": "outputs",
    "read_active_output": "outputs",
    "read_extras": "outputs",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
