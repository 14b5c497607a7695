"""Stage kinds and named protocols: one table each, from which everything else derives.

A stage either *trains* (the trainer minimises the loss its descriptor defines) or
*initialises the heads* (a function of the current model and the data; no gradient steps).
``StageConfig.kind`` and ``TrainConfig.protocol`` are checked against these tables,
:func:`~shallow_ensembles.training.objectives.stage_loss` builds the loss from the descriptor,
the trainer reads its monitor and uncertainty flags, the protocol runner calls its
``initialise``. Adding a stage is one :func:`register_stage` call; adding a protocol one
:func:`register_protocol` call (``tests/test_stages.py`` registers toy ones).

The loss terms (docs/method.md, "Losses"; per structure k, N_k atoms):

==========  ========================================  =========================================
energy      ℓ_E                                       weight N^(−a)
==========  ========================================  =========================================
mean        (Ē − E)²                                  ``loss.atom_exponent``
members     mean_m (E_m − E)²                         ``loss.atom_exponent``
score       ½[log σ_E² + r²/σ_E²] (or the CRPS),      ``loss.nll_atom_exponent``
            plus ``loss.energy_anchor`` · (Ē − E)²
==========  ========================================  =========================================

The force term is the MSE of the mean forces, or with ``member_forces`` the force NLL (or CRPS)
of the member forces (``loss.force_nll``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal

from ..errors import ConfigError

Initialiser = Callable[..., None]
"""``f(model, stage, train_graphs, validation_graphs, generator, loss_config)``: set the heads
of ``model`` in place (``stage`` is its :class:`~shallow_ensembles.training.config.StageConfig`,
``generator`` a seeded ``torch.Generator``)."""


@dataclasses.dataclass(frozen=True)
class StageKind:
    """What one stage kind does."""

    name: str
    """The YAML name (``stages[k].kind``)."""
    description: str
    """One line for templates and errors."""
    energy: Literal["mean", "members", "score"] = "mean"
    """The energy term (table in the module docstring); ``score`` makes an *uncertainty* stage:
    the member spread is rescaled before it and the shared last layer solved after it."""
    member_forces: bool = False
    """Force term from member forces (an NLL over the ensemble); else the mean-force MSE."""
    initialise: Initialiser | None = None
    """The head initialisation of an untrained stage; None: a trained stage."""
    needs_members: bool = True
    """Needs ``model.n_members >= 2``."""
    schedule: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Default ``StageConfig`` fields of this kind (epochs, learning rate, ...)."""

    @property
    def trained(self) -> bool:
        """Whether the trainer runs it (else it initialises the heads)."""
        return self.initialise is None

    @property
    def uncertainty(self) -> bool:
        """Whether its loss scores the member spread (NLL or CRPS of the members)."""
        return self.energy == "score"

    @property
    def monitor(self) -> str:
        """Validation quantity of ``monitor: auto``: ``force-nll`` or ``loss``."""
        return "force-nll" if self.member_forces else "loss"


STAGES: dict[str, StageKind] = {}
"""Registered stage kinds by name."""

PROTOCOLS: dict[str, tuple[tuple[str, Mapping[str, Any]], ...]] = {}
"""Named protocols: each stage's kind and its default ``StageConfig`` fields (after the kind's
own ``schedule``)."""


def register_stage(kind: StageKind) -> StageKind:
    """Add ``kind`` to :data:`STAGES` (replacing an entry of the same name); returns it."""
    STAGES[kind.name] = kind
    return kind


def register_protocol(name: str, *stages: str | tuple[str, Mapping[str, Any]]) -> None:
    """Add a named protocol: stage kinds, each optionally ``(kind, {field: default})``."""
    if name == "custom":
        raise ValueError("'custom' is reserved for protocols written as stages")
    PROTOCOLS[name] = tuple((s, MappingProxyType({})) if isinstance(s, str) else
                            (s[0], MappingProxyType(dict(s[1]))) for s in stages)


def stage_kind(name: str, path: str = "stages[].kind") -> StageKind:
    """The registered kind ``name``; a ConfigError at ``path`` listing the kinds otherwise."""
    if name not in STAGES:
        raise ConfigError(path, f"expected one of {sorted(STAGES)}, got {name!r}")
    return STAGES[name]


def kinds_template() -> str:
    """Commented YAML lines listing the stage kinds and named protocols (for templates)."""
    lines = ["# Stage kinds (stages[k].kind), training/stages.py:"]
    lines += [f"#   {k.name}: {k.description}" + ("" if k.trained else " (no training)")
              for k in STAGES.values()]
    lines.append("# Named protocols (protocol), their stage kinds:")
    lines += [f"#   {name}: {', '.join(kind for kind, _ in stages)}"
              for name, stages in PROTOCOLS.items()]
    return "\n".join(lines)


def check_protocol(name: str, path: str = "protocol") -> None:
    """A ConfigError at ``path`` unless ``name`` is ``custom`` or a registered protocol."""
    if name != "custom" and name not in PROTOCOLS:
        raise ConfigError(path, f"expected one of {sorted(PROTOCOLS) + ['custom']}, got {name!r}")


# --- head initialisations (imported on use: this table stays free of torch) --------------------
def _llpr(model, stage, train, validation, generator, loss) -> None:
    from .init import llpr_heads

    llpr_heads(model, train, validation, generator, stage.regularizer, stage.force_rows, loss,
               stage.centring)


def _isotropic(model, stage, train, validation, generator, loss) -> None:
    from .init import isotropic_heads

    isotropic_heads(model, stage.noise, generator)


def _subsample(model, stage, train, validation, generator, loss) -> None:
    from .init import subsample_heads

    subsample_heads(model, train, generator, stage.ridge, stage.centring)


def _random_heads(model, stage, train, validation, generator, loss) -> None:
    from .init import random_heads

    random_heads(model, generator)


for _kind in (
    StageKind("mse", "MSE of the ensemble mean (energies, forces)", needs_members=False,
              schedule={"centring": "frames"}),
    StageKind("member-mse", "every member's energy MSE + mean-force MSE", energy="members"),
    StageKind("energy-nll", "energy NLL + mean-force MSE (no member forces: costs one model)",
              energy="score"),
    StageKind("force-nll", "energy NLL + force NLL of the member forces", energy="score",
              member_forces=True, schedule={"centring": "frames"}),
    StageKind("llpr", "heads sampled from the last-layer Laplace (LLPR) posterior",
              initialise=_llpr),
    StageKind("isotropic", "heads = trained head + isotropic noise", initialise=_isotropic),
    StageKind("subsample", "heads fitted on bootstrap subsamples, centred on the MAP head",
              initialise=_subsample),
    StageKind("random-heads", "randomly initialised heads", initialise=_random_heads),
):
    register_stage(_kind)

# mse centres over frames: its loss sees only the mean, which centring never moves, so the
# weighting decides which member offsets remain; over carbon's mixed sizes (4 and 64 atoms) the
# atom-weighted centre left the MSE model's members a per-atom offset on the crystals (test
# offset share 0.88 → 0.17; RMSE_E 15.4 → 12.9 meV/atom, one seed; identical on one-size data).
# force-nll centres over frames too, from scratch and as a fine-tune: the fine-tuned backbone
# otherwise left each member a per-atom offset on carbon's crystals, and from scratch so did
# the atom-weighted centre (test offset share 0.16–0.53 over 4 seeds → 0.06–0.20, with the
# variance-scaled anchor that ``loss.energy_anchor_scale: auto`` picks on mixed sizes).
FINE_TUNE: Mapping[str, Any] = MappingProxyType(
    {"epochs": 30, "learning_rate": 5e-4, "warmup_epochs": 0, "patience": 5})
"""The fine-tune of the two-step protocols: no warm-up (the model is trained), its own peak
learning rate, early stopping on the validation force NLL (README, "Choosing the defaults");
like every force-nll stage it centres the features over frames."""

ENERGY_NLL: Mapping[str, Any] = MappingProxyType({"energy_nll_beta": 0.5})
"""The energy-NLL stage of the named protocols (``energy-nll``, stage 1 of
``two-step-energy-nll``): a β-NLL energy term with β = 0.5, so that structures with a large σ_E
still pull their mean energy. Against the plain NLL (one seed each; carbon, ethanol, water):
test RMSE_E 32.1 → 20.4 (MSE 15.4; the plain NLL stayed at 31.8 with 600 epochs), 3.98 →
3.81, 0.89 → 0.79 meV/atom; calibrated RLL_E 55 → 54, −64 → −14, −34 → −17; RMSE_F +5 %,
+3 %, −10 %; RLL_F cal −0.4, +4.8, −4.0. Force-NLL stages keep ``loss.energy_nll_beta`` (0):
there β = 0.5 fitted carbon's mean energy but cost ethanol's force error (RMSE_F +10–30 %,
three seeds) and BaTiO3's RLL_F and RLL_E (README, "Choosing the defaults")."""

register_protocol("mse", "mse")
register_protocol("energy-nll", ("energy-nll", ENERGY_NLL))
register_protocol("force-nll-scratch", "force-nll")
register_protocol("llpr", "mse", "llpr")
register_protocol("random-heads", "random-heads", "member-mse")
register_protocol("subsample", "mse", "subsample")
register_protocol("two-step-llpr", "mse", "llpr", ("force-nll", FINE_TUNE))
register_protocol("two-step-energy-nll", ("energy-nll", ENERGY_NLL), ("force-nll", FINE_TUNE))
