"""i-PI's committee outputs in eV and Å: the readers live in the data layer, so that the
reweighting module (``md``) uses the same code; this module keeps the ``ipi`` import path."""

from ..data.ipi_outputs import (  # noqa: F401
    read_active_output,
    read_committee_pot,
    read_committee_uncertainty,
    read_extras,
)
