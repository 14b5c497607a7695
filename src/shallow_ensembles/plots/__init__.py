"""Figures (PNG, matplotlib's Agg backend), one module per layer that draws them.

============================  =============================================================
module                        figures
============================  =============================================================
``plots.evaluation``          parity, |error| against σ, coverage, z histograms (``evaluate``)
``plots.training``            loss curves per stage (``train``)
``plots.md``                  σ against time with the trust levels (``md``: ``sigma.png``)
``plots.active_learning``     errors, candidate rate and data size per round
============================  =============================================================

The only package that imports matplotlib; importing it (not its modules) imports nothing.
"""
