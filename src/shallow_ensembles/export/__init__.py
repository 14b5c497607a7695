"""Export to metatomic: one TorchScript ``AtomisticModel`` file for LAMMPS, i-PI, ASE and others.

:func:`export_model` wraps the trained tensors of a model file in the TorchScript modules of
:mod:`shallow_ensembles.export.scripted` and saves a metatomic ``AtomisticModel``. The file
loads with ``metatomic.torch.load_atomistic_model`` (or any engine that reads metatomic models)
without this package installed. Needs ``pip install 'shallow-ensembles[metatomic]'``.

Outputs: ``energy``, ``energy_ensemble`` and ``energy_uncertainty``, each per system or per
atom, in eV, calibrated with the model's α_E exactly as
:meth:`~shallow_ensembles.model.ShallowEnsemble.calibrate_outputs` does; forces and stress are
the engine's autograd of ``energy``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..errors import ConfigError
from ..model import PowerSpectrumBackbone, ShallowEnsemble, load_model
from ..model.mace_backbone import MaceBackbone

PAPER = "M. Schäfer, M. Kellner, J. Kästner, M. Ceriotti, How to Train a Shallow Ensemble, " \
        "arXiv:2602.15747 (2026)"
SHALLOW_ENSEMBLES = "M. Kellner, M. Ceriotti, Uncertainty quantification by direct propagation " \
                    "of shallow ensembles, Mach. Learn.: Sci. Technol. 5, 035006 (2024)"
IMPLEMENTATION = "shallow-ensembles (Python package), https://pypi.org/project/shallow-ensembles"
DTYPES = ("float32", "float64")


def _import_metatomic():
    try:
        import metatomic.torch as mta
    except ImportError as err:
        raise ConfigError("export", "needs the optional dependency metatomic-torch "
                          f"({err}); install it with pip install "
                          "'shallow-ensembles[metatomic]'") from None
    return mta


def scripted_module(model: ShallowEnsemble, dtype: str = "float64"):
    """The TorchScript-compatible :class:`~.scripted.ScriptedEnsemble` of ``model`` (a copy
    converted to ``dtype``; ``model`` itself is not changed)."""
    _import_metatomic()
    from .scripted import ScriptedEnsemble, ScriptedPowerSpectrum

    if dtype not in DTYPES:
        raise ConfigError("export --dtype", f"expected float32 or float64, got {dtype!r}")
    model = copy.deepcopy(model).to(getattr(torch, dtype)).eval()
    if isinstance(model.backbone, PowerSpectrumBackbone):
        backbone = ScriptedPowerSpectrum(model.backbone)
    elif isinstance(model.backbone, MaceBackbone):
        from .scripted_mace import compiled

        backbone = compiled(model.backbone)
    else:
        raise ConfigError("model.backbone.kind", f"{type(model.backbone).__name__} has no "
                          "metatomic export (known: power-spectrum, mace)")
    return ScriptedEnsemble(model, backbone).eval()


def atomistic_model(model: ShallowEnsemble, dtype: str = "float64", name: str = "",
                    card: str = ""):
    """The metatomic ``AtomisticModel`` of ``model`` (capabilities, metadata, neighbour list)."""
    mta = _import_metatomic()
    module = scripted_module(model, dtype)
    outputs = {key: mta.ModelOutput(unit="eV", sample_kind="atom", explicit_gradients=[],
                                    description=text)
               for key, text in (
                   ("energy", "mean potential energy of the shallow ensemble"),
                   ("energy_ensemble", "calibrated member energies, mean + α_E (E_m − mean)"),
                   ("energy_uncertainty", "calibrated standard deviation of the member "
                    "energies (ddof=1), α_E σ"))}
    capabilities = mta.ModelCapabilities(
        outputs=outputs, atomic_types=[int(z) for z in model.species],
        interaction_range=float(model.cutoff), length_unit="angstrom",
        supported_devices=["cpu", "cuda"], dtype=dtype)
    alpha = float(model.alpha_energy)
    kind = "mace" if isinstance(model.backbone, MaceBackbone) else "power-spectrum"
    description = (f"Shallow ensemble of {model.n_members} members ({kind} backbone, cutoff "
                   f"{model.cutoff:g} Å); uncertainties calibrated with alpha_E = {alpha:.6g}.")
    references = {"implementation": [IMPLEMENTATION], "architecture": [PAPER, SHALLOW_ENSEMBLES]}
    if card:
        references["model"] = [card]
    metadata = mta.ModelMetadata(
        name=name or "shallow-ensemble", description=description,
        authors=["shallow-ensembles developers"], references=references,
        extra={"alpha_energy": repr(alpha), "n_members": str(model.n_members)})
    return mta.AtomisticModel(module, metadata, capabilities)


def export_model(model: ShallowEnsemble | str | Path, output: str | Path,
                 dtype: str = "float64") -> Path:
    """Write ``model`` (or a model file) as a metatomic TorchScript file at ``output``.

    Parameters
    ----------
    model : a model or the path of a model file written by ``save_model``
    output : the ``.pt`` file to write
    dtype : the dtype engines must use with it; ``float64`` (default) evaluates a float32 model
        with its weights promoted exactly, so energies agree with the native model in float64

    Returns
    -------
    The path written. The metadata names the model after the file and points to its card
    (``<name>.md`` beside the model file) when there is one.
    """
    name, card = "shallow-ensemble", ""
    if isinstance(model, str | Path):
        path = Path(model)
        model, name = load_model(path), path.stem
        if path.with_suffix(".md").is_file():
            card = f"model card: {path.with_suffix('.md').name} (shipped beside {path.name})"
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomistic_model(model, dtype, name, card).save(str(output))
    return output


__all__ = ["atomistic_model", "export_model", "scripted_module"]
