"""The training job's schemas: loss, stages, optimiser and the job itself (``TrainConfig``).

Defaults in one place, each with its attribute docstring (the template of
``shallow-ensembles train --print-defaults``); stage kinds and named protocols come from the
tables of :mod:`~shallow_ensembles.training.stages`.
"""

from __future__ import annotations

import dataclasses
import os
import typing
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from ..config import load_config
from ..data.config import DataConfig, resolve_data_paths
from ..errors import ConfigError
from ..model.config import ModelConfig
from .stages import PROTOCOLS, STAGES, check_protocol, stage_kind


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Weights and options of the loss terms."""

    energy_weight: float = 1.0
    """Weight of the energy term."""
    forces_weight: float = 1.0
    """Weight of the force term."""
    stress_weight: float = 0.0
    """Weight of the stress MSE term (structures with a stress label)."""
    atom_exponent: float = 1.0
    """a in the per-structure weight N_atoms^(−a) of MSE energy terms (a = 2 is the MSE of
    energies per atom)."""
    nll_atom_exponent: float = 1.0
    """a in the per-structure weight N_atoms^(−a) of NLL energy terms (an NLL is unchanged, up
    to a constant, when energy and σ_E are both divided by N: a only sets how much large
    structures count). a = 0 slowed force learning on ethanol (README, "Choosing the
    defaults")."""
    energy_anchor: float = 1.0
    """Weight, relative to the energy term, of the MSE of the ensemble-mean energy (with
    ``atom_exponent``) added to NLL stages: it keeps the mean energy where an MSE model puts
    it (without it, the mean energy of water drifted by ~1 eV/atom inside a growing σ_E);
    0 turns it off. 10 fitted carbon's energies in energy-NLL stages (test RMSE_E 16.6 against
    45.0 meV/atom) but broke their forces (RMSE_F 1444 and, from scratch with force NLL, 2199
    against 884 meV/Å for MSE): 1 stays (README, "Choosing the defaults")."""
    energy_anchor_scale: Literal["auto", "absolute", "variance"] = "auto"
    """Units of the anchor: absolute, λ N^(−a) (Ē − E)² in eV²; variance, λ ½ N^(−a_NLL)
    (Ē − E)² / σ̄², with σ̄² the mean floored σ_E² of the batch (detached): the NLL's own pull on
    the mean with every structure's σ_E replaced by the batch's mean, unit-free, and as strong
    on structures with a large σ_E as on the others; auto: variance in force-NLL stages when
    the training frames have more than one size, absolute otherwise (:meth:`for_stage`).
    Measured (README, "Choosing the defaults"): on carbon (4- and 64-atom cells) force NLL from
    scratch with variance fitted the mean energy on 4 of 4 training seeds (test RMSE_E
    16.5–25.1 against 17.8–29.1 meV/atom; MSE 12.9) and lowered RMSE_F from 1003–1292 to
    805–885 meV/Å; on ethanol it raised RMSE_F on 2 of 3 seeds (75 / 78 / 75 → 74 / 88 / 98
    meV/Å); in an energy-NLL stage, whose σ_E nothing else holds, the anchor faded as σ_E grew
    (carbon RMSE_E 139 meV/atom)."""
    energy_nll_beta: float = 0.0
    """β of a β-NLL energy term (Seitzer et al., ICLR 2022): each structure's energy NLL is
    weighted by (σ_k² / mean over the batch of σ²)^β, detached, so that structures with a large
    σ_E still pull their mean (β = 1: like an MSE). 0 is the plain NLL. The energy-NLL stage of
    the named protocols sets 0.5 (``stages[k].energy_nll_beta``; ``training.stages.ENERGY_NLL``:
    carbon test RMSE_E 32.1 → 20.4 meV/atom); force-NLL stages keep 0: over three training
    seeds β = 0.5 cost ethanol's force error (RMSE_F 75 / 78 / 75 → 83 / 100 / 86 meV/Å) and
    BaTiO3's RLL_F and RLL_E (README, "Choosing the defaults")."""
    variance_floor: float = 1e-6
    """Floor of every NLL variance, eV² or (eV/Å)²."""
    force_nll: Literal["component", "isotropic", "full"] = "component"
    """Force NLL per Cartesian component, per atom isotropic, or per atom full 3×3."""
    force_jitter: float = 1e-6
    """Jitter added to the 3×3 member covariance of the ``full`` force NLL, (eV/Å)²."""
    uncertainty_loss: Literal["nll", "crps"] = "nll"
    """Scoring rule of the energy-nll and force-nll stages: nll (Gaussian negative
    log-likelihood, ``force_nll`` selects the force variant) or crps (closed-form Gaussian CRPS
    per structure energy and per force component; less sensitive to outliers)."""

    def __post_init__(self):
        if not 0 <= self.energy_nll_beta <= 1:
            raise ConfigError("training.loss.energy_nll_beta",
                              f"expected 0 to 1, got {self.energy_nll_beta}")

    def for_stage(self, member_forces: bool, sizes: Iterable[int]) -> LossConfig:
        """This config with ``energy_anchor_scale: auto`` resolved for a stage (``member_forces``:
        a force-NLL stage) on training frames of ``sizes`` atoms."""
        if self.energy_anchor_scale != "auto":
            return self
        mixed = member_forces and len(set(sizes)) > 1
        return dataclasses.replace(self, energy_anchor_scale="variance" if mixed else "absolute")


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One stage of a protocol: a training stage or a head initialisation."""

    kind: str = "mse"
    """A stage kind of ``training/stages.py``: mse (MSE on the ensemble mean), energy-nll
    (energy NLL + mean-force MSE), force-nll (energy NLL + force NLL of the member forces),
    member-mse (every member's energy MSE + mean-force MSE); llpr, isotropic, subsample,
    random-heads: head initialisations (no training)."""
    epochs: int = 100
    """Maximum epochs of a training stage."""
    max_minutes: float | None = None
    """Wall-time budget of a training stage, minutes; null: no limit."""
    learning_rate: float | None = None
    """Peak learning rate of this stage; null: ``training.learning_rate``."""
    warmup_epochs: int | None = None
    """Linear warm-up epochs of this stage (cosine schedule); null: ``training.warmup_epochs``."""
    patience: int | None = None
    """Stop this stage after this many epochs without improvement of the monitored validation
    loss (the best epoch is kept); null: ``training.patience``."""
    monitor: Literal["auto", "loss", "force-nll"] = "auto"
    """Validation quantity for early stopping and the best epoch: the stage loss, or the force
    NLL alone; auto: force-nll for force-nll stages, the loss otherwise."""
    energy_weight: float | None = None
    """Weight of the energy term in this stage; null: ``loss.energy_weight``."""
    energy_nll_beta: float | None = None
    """β of the β-NLL energy term in this stage; null: ``loss.energy_nll_beta``."""
    trainable: Literal["all", "heads"] = "all"
    """Train all parameters or only the last layer (heads, per-species scales and shifts)."""
    centring: Literal["atoms", "frames"] = "atoms"
    """How this stage weights the training atoms when it centres the last-layer features per
    species (a training stage every epoch and at its end, an initialisation before it sets the
    heads; :func:`~shallow_ensembles.training.init.centre_features`): atoms, each atom alike;
    frames, each atom by 1/N of its frame, so that no member keeps a constant offset per atom
    over frames of different sizes. Where all frames have one size the two are the same, bit
    for bit. The mse and force-nll kinds' schedules set frames: on carbon (50 crystals of 4
    atoms, 10 cells of 64; three shuffling seeds) it took the test ``energy_offset_share`` of
    two-step-llpr from 0.67–0.75 to 0.05–0.10 and of two-step-energy-nll from 0.45–0.85 to
    0.01–0.04, of MSE from 0.88 to 0.17, and of force NLL from scratch (with the
    variance-scaled anchor, ``LossConfig.energy_anchor_scale``; four seeds) from 0.16–0.53 to
    0.06–0.20. In an energy-NLL stage from scratch it let σ_E of the 64-atom cells run away
    (67 eV/atom), so atoms stays the default there (README, "Choosing the defaults")."""
    regularizer: float | None = None
    """llpr: fixed ς; null: chosen on validation."""
    force_rows: bool = False
    """llpr: add force rows to the last-layer covariance. Off by default (README, "Choosing
    the defaults"). Over frames of mixed sizes pair it with ``centring: frames``: force rows
    leave the direction of the per-species mean feature to the few energy rows, and on carbon
    (three sampling seeds from one MSE model) the atom-weighted centre left each member a
    per-atom offset on the crystals (test ``energy_offset_share`` 0.33–0.48 → 0.04–0.08; RLL_F
    cal 36–39 → 29–34, RLL_E cal 43–48 → 27–54)."""
    noise: float = 0.01
    """isotropic: noise scale s of the head weights."""
    ridge: float = 1e-6
    """subsample: relative ridge parameter."""

    def __post_init__(self):
        if self.energy_nll_beta is not None and not 0 <= self.energy_nll_beta <= 1:
            raise ConfigError("stages[].energy_nll_beta",
                              f"expected 0 to 1 or null, got {self.energy_nll_beta}")

    @staticmethod
    def upgrade(data: dict) -> dict:
        """Fill in the kind's default schedule (``StageKind.schedule``) under the options
        written (the ``from_dict`` hook)."""
        kind = STAGES.get(data.get("kind", "mse"))
        return {**kind.schedule, **data} if kind is not None else data


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Optimiser, schedule and run control shared by the training stages."""

    optimizer: Literal["adam", "adamw"] = "adam"
    """Optimiser."""
    learning_rate: float = 2e-3
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Weight decay (decoupled with adamw)."""
    batch_size: int = 4
    """Structures per optimisation step (per process under torchrun)."""
    scheduler: Literal["cosine", "plateau", "constant"] = "cosine"
    """Warm-up then cosine decay over the stage, reduce-on-plateau, or constant."""
    warmup_epochs: int = 2
    """Linear warm-up epochs (cosine schedule)."""
    min_lr_ratio: float = 0.02
    """Final learning rate of the cosine schedule as a fraction of the peak."""
    grad_clip: float | None = 10.0
    """Clip the gradient norm; null: no clipping."""
    patience: int | None = 30
    """Stop a stage after this many epochs without validation improvement; null: never."""
    seed: int = 0
    """Seed of initialisation, shuffling and head sampling."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto uses CUDA when present."""
    threads: int | None = None
    """torch threads per process; null: torch's default."""
    progress: bool = True
    """Show a progress bar."""
    member_forces: Literal["auto", "explicit", "jacobian", "loop"] = "auto"
    """Route of the member forces in force-NLL stages: closed-form descriptor derivatives
    (explicit, built-in backbone), d backward passes (jacobian), one backward pass per member
    (loop, the cost model of the paper); auto: the cheapest available."""

    def __post_init__(self):
        positive = {"batch_size": self.batch_size, "learning_rate": self.learning_rate,
                    "threads": self.threads, "grad_clip": self.grad_clip}
        for name, value in positive.items():
            if value is not None and value <= 0:
                raise ConfigError(f"training.{name}", f"expected a value > 0, got {value}")
        for name in ("weight_decay", "warmup_epochs", "min_lr_ratio", "patience"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"training.{name}", f"expected a value >= 0, got {value}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training job: data, model, protocol (named or as stages), loss and optimiser."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """The data."""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    """The architecture."""
    protocol: str = "two-step-llpr"
    """A named protocol of ``training/stages.py`` (mse, energy-nll, force-nll-scratch, llpr,
    random-heads, subsample, two-step-llpr, two-step-energy-nll), or custom to use ``stages``."""
    stages: tuple[StageConfig, ...] = ()
    """Stages of a custom protocol; with a named protocol, per-stage overrides in order
    (empty: the defaults)."""
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    """Loss weights."""
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    """Optimiser and run control."""
    init_model: str | None = None
    """Start from this trained model: a model file of this package, or a MACE model file written
    by ``mace_run_train`` (imported with ``model.n_members`` heads; its architecture replaces
    ``model``). A named protocol then skips its leading MSE stage (e.g. ``two-step-llpr``:
    LLPR heads, then the force-NLL fine-tune); custom stages run as written."""
    output_dir: str = "runs/train"
    """Folder of the run: checkpoint, log, split, model, plots."""
    calibrate: bool = True
    """Refit α_E and α_F on validation at the end."""

    def __post_init__(self):
        check_protocol(self.protocol)
        if self.protocol == "custom" and not self.stages:
            raise ConfigError("stages", "protocol: custom needs at least one stage")
        named = PROTOCOLS.get(self.protocol, ())
        if self.protocol != "custom" and self.stages and len(self.stages) != len(named):
            raise ConfigError("stages", f"protocol {self.protocol} has {len(named)} stages "
                              f"{[kind for kind, _ in named]}; got {len(self.stages)} overrides")
        for k, stage in enumerate(self.resolved_stages()):
            if stage_kind(stage.kind, f"stages[{k}].kind").needs_members \
                    and self.model.n_members < 2:
                raise ConfigError(f"stages[{k}].kind",
                                  f"{stage.kind} needs model.n_members >= 2")
        if not self.data.train_file:
            raise ConfigError("data.train_file", "required")
        self._check_stage_numbers()
        if self.model.n_members < 2:
            warnings.warn("model.n_members: 1 gives no uncertainty (σ = 0 for every structure: "
                          "every MD step looks trusted, calibration is impossible); use "
                          "n_members >= 2", UserWarning, stacklevel=3)

    def _check_stage_numbers(self) -> None:
        for k, stage in enumerate(self.stages):
            if stage.learning_rate is not None and stage.learning_rate <= 0:
                raise ConfigError(f"stages[{k}].learning_rate",
                                  f"expected a value > 0 or null, got {stage.learning_rate}")
            if stage.epochs < 0:
                raise ConfigError(f"stages[{k}].epochs", f"expected >= 0, got {stage.epochs}")

    def resolved_stages(self) -> tuple[StageConfig, ...]:
        """The stages to run, with protocol defaults filled in."""
        if self.protocol == "custom":
            return self.stages
        if self.stages:
            for k, ((kind, _), stage) in enumerate(
                    zip(PROTOCOLS[self.protocol], self.stages, strict=True)):
                if stage.kind != kind:
                    raise ConfigError(f"stages[{k}].kind",
                                      f"protocol {self.protocol} expects '{kind}' here")
            return self.stages
        return protocol_stages(self.protocol)


def default_stage(kind: str, **fields) -> StageConfig:
    """A stage of ``kind`` with the kind's default schedule (:meth:`StageConfig.upgrade`), then
    ``fields``."""
    return StageConfig(**StageConfig.upgrade({"kind": stage_kind(kind).name, **fields}))


def protocol_stages(name: str) -> tuple[StageConfig, ...]:
    """The stages of the named protocol ``name`` with their defaults."""
    check_protocol(name)
    return tuple(default_stage(kind, **fields) for kind, fields in PROTOCOLS[name])


def load_train_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """The :class:`TrainConfig` of a YAML file, data paths (and ``init_model``, when it is
    there) relative to its folder (see :func:`~shallow_ensembles.data.config.resolve_data_paths`),
    then ``--set`` overrides (paths there: the current folder)."""
    return load_config(TrainConfig, Path(path), overrides, prepare=_relative_paths)


def _relative_paths(data: dict, folder: Path) -> dict:
    if isinstance(data.get("data"), dict):
        data["data"] = resolve_data_paths(data["data"], folder)
    init = data.get("init_model")
    if isinstance(init, str) and init and not Path(init).is_absolute() \
            and (folder / init).exists():
        data["init_model"] = os.path.normpath(folder / init)
    return data
