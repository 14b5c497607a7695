"""The active-learning protocol: one frozen dataclass per section, defaults in one place.

``shallow-ensembles active-learn PROTOCOL.yaml --print-defaults`` prints every option with its
default and docstring (made from these classes by :func:`shallow_ensembles.config.template`).
Errors name the dotted key (``selection.n``, ``md.dynamics.friction_per_fs``,
``initial.stages[0].kind``).

Frame sources (``data.*_file``, ``walkers.structures``) are ASE-readable files, optionally with
an ASE index after ``@``: ``frames.extxyz@0:8`` is the first eight frames. Relative paths are
relative to the working directory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import load_config
from ..data.config import DataConfig
from ..errors import ConfigError
from ..md.config import MDConfig, load_md_config
from ..model.config import ModelConfig
from ..training.config import (
    LossConfig,
    StageConfig,
    TrainConfig,
    TrainingConfig,
    protocol_stages,
)


def _prefixed(prefix: str, build):
    """Call ``build()``; name ConfigErrors ``prefix.<path>``."""
    try:
        return build()
    except ConfigError as err:
        if err.path.startswith(prefix):
            raise
        raise err.under(prefix) from None


@dataclass(frozen=True)
class ALDataConfig:
    """The labelled frames the loop starts from, and the fixed validation and test sets."""

    train_file: str = ""
    """Starting training frames (``file@index`` allowed), labelled with the reference unless
    ``relabel`` is set."""
    validation_file: str | None = None
    """Fixed validation frames: early stopping and the α refit of every round. Null: a growing
    validation set, ``validation_fraction`` of the starting frames and of every round's labels."""
    validation_fraction: float = 0.2
    """Share of new labels moved to the validation set when ``validation_file`` is null."""
    test_file: str | None = None
    """Fixed test frames of the per-round errors (RMSE, RLL); null: no test errors."""
    relabel: bool = False
    """Label the train, validation and test frames with the reference before round 0 (files
    holding another method's labels, or none): the whole loop then uses one reference."""

    def __post_init__(self):
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError("data.validation_fraction",
                              f"expected between 0 and 1, got {self.validation_fraction}")


@dataclass(frozen=True)
class ReferenceConfig:
    """The reference ASE calculator that labels the selected frames.

    ``{kind: xtb, method: GFN2-xTB}`` uses tblite (``pip install 'shallow-ensembles[reference]'``);
    ``{kind: import, path: ase.calculators.emt.EMT, kwargs: {}}`` imports any ASE calculator.
    """

    kind: Literal["xtb", "import"] = "xtb"
    """xtb: GFN-xTB through tblite; import: the calculator class (or factory) at ``path``."""
    method: str | None = None
    """xtb: the tblite method (GFN2-xTB, GFN1-xTB, IPEA1-xTB); null: GFN2-xTB."""
    path: str | None = None
    """import: dotted path of the calculator class or factory, e.g. ase.calculators.emt.EMT."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the calculator (xtb: e.g. charge, multiplicity, accuracy;
    verbosity defaults to 0)."""
    stress: bool = False
    """Also label the stress of frames periodic in all three directions."""

    def __post_init__(self):
        if self.kind == "import" and not self.path:
            raise ConfigError("reference.path", "required for kind 'import' (e.g. "
                              "ase.calculators.emt.EMT)")
        if self.kind == "import" and self.method is not None:
            raise ConfigError("reference.method", "not used by kind 'import'; put calculator "
                              "options in reference.kwargs")
        if self.kind == "xtb" and self.path is not None:
            raise ConfigError("reference.path", "not used by kind 'xtb'")

    @property
    def xtb_method(self) -> str:
        """The tblite method name."""
        return self.method or "GFN2-xTB"


@dataclass(frozen=True)
class InitialConfig:
    """The model of round 0: a trained model file, or one trained on ``data.train_file``."""

    model_file: str | None = None
    """Start from this trained model; null: train one with the options below."""
    model: ModelConfig = ModelConfig()
    """Architecture of the model trained in round 0."""
    protocol: str = "two-step-llpr"
    """A named training protocol (``train --print-defaults`` lists them), or custom to use
    ``stages``."""
    stages: tuple[StageConfig, ...] = ()
    """Stages of a custom protocol, or per-stage overrides of a named one."""
    loss: LossConfig = LossConfig()
    """Loss weights."""
    training: TrainingConfig = TrainingConfig()
    """Optimiser and run control."""

    def __post_init__(self):
        if self.model_file is None:
            self.train_config("train.extxyz", "training")  # validates protocol and stages

    def train_config(self, train_file: str, output_dir: str,
                     validation_file: str | None = None) -> TrainConfig:
        """The training job of round 0 (errors named ``initial.*``)."""
        return _prefixed("initial", lambda: TrainConfig(
            data=DataConfig(train_file=train_file, validation_file=validation_file),
            model=self.model, protocol=self.protocol, stages=self.stages, loss=self.loss,
            training=self.training, output_dir=output_dir, calibrate=True))


@dataclass(frozen=True)
class WalkersConfig:
    """The MD walkers of every round: one per (temperature, seed) pair."""

    temperatures_K: tuple[float, ...] = (300.0,)
    """Thermostat targets, K (initial temperature for velocity_verlet)."""
    seeds: tuple[int, ...] = (0,)
    """Seeds of the walkers; round k runs with seed + 1000 k, so rounds explore anew."""
    steps: int = 500
    """MD steps of each walker (the protocol's ``steps`` is ignored)."""
    structures: str | None = None
    """Start structures (``file@index`` allowed); walker i of round k starts from frame
    (i + k) mod n. Null: the starting training frames."""

    def __post_init__(self):
        if not self.temperatures_K or not self.seeds:
            raise ConfigError("walkers", "needs at least one temperature and one seed")
        if any(t < 0 for t in self.temperatures_K):
            raise ConfigError("walkers.temperatures_K", f"expected >= 0, got "
                              f"{list(self.temperatures_K)}")
        if self.steps < 1:
            raise ConfigError("walkers.steps", f"expected >= 1, got {self.steps}")


@dataclass(frozen=True)
class SelectionConfig:
    """How a diverse batch is chosen from the pooled candidates of a round."""

    kind: Literal["farthest_point", "highest_sigma"] = "farthest_point"
    """farthest_point: greedy farthest-point sampling on per-structure last-layer features,
    starting from the current training set; highest_sigma: the largest σ first, skipping
    near-duplicates."""
    n: int = 8
    """Frames labelled per round (fewer when the pool is smaller)."""
    features: Literal["mean", "sum"] = "mean"
    """Per-structure features: mean or sum of the atoms' last-layer features g_i."""
    sigma: Literal["forces", "energy_per_atom"] = "forces"
    """highest_sigma: rank by max_i ‖σ(F_i)‖ (eV/Å) or σ_E/N (eV/atom)."""
    min_distance: float = 0.1
    """highest_sigma: skip a candidate closer (in feature space) to an already selected frame
    than this fraction of the pool's median pairwise distance."""

    def __post_init__(self):
        if self.n < 1:
            raise ConfigError("selection.n", f"expected >= 1, got {self.n}")
        if self.min_distance < 0:
            raise ConfigError("selection.min_distance", f"expected >= 0, got {self.min_distance}")


@dataclass(frozen=True)
class FineTuneConfig:
    """The short fine-tune of every round, from the current model on the grown training set;
    the calibration (α_E, α_F) is refitted on the validation set at its end."""

    stages: tuple[StageConfig, ...] = ()
    """Training stages; empty: the two-step-llpr protocol with a shorter MSE stage (60
    epochs): mse, llpr heads, then its fine-tune (``training.stages.FINE_TUNE``). A force-nll
    stage alone is cheaper but fits the new frames' mean energies and forces less well."""
    loss: LossConfig = LossConfig()
    """Loss weights."""
    training: TrainingConfig = TrainingConfig()
    """Optimiser and run control."""

    def resolved_stages(self) -> tuple[StageConfig, ...]:
        """The stages to run."""
        if self.stages:
            return self.stages
        return tuple(dataclasses.replace(stage, epochs=60) if stage.kind == "mse" else stage
                     for stage in protocol_stages("two-step-llpr"))

    def train_config(self, model: ModelConfig, init_model: str, train_file: str,
                     validation_file: str, output_dir: str) -> TrainConfig:
        """The training job of one round (errors named ``fine_tune.*``)."""
        return _prefixed("fine_tune", lambda: TrainConfig(
            data=DataConfig(train_file=train_file, validation_file=validation_file),
            model=model, protocol="custom", stages=self.resolved_stages(), loss=self.loss,
            training=self.training, init_model=init_model, output_dir=output_dir,
            calibrate=True))


@dataclass(frozen=True)
class StoppingConfig:
    """When the loop ends."""

    max_rounds: int = 3
    """Rounds of explore → select → label → fine-tune after round 0."""
    min_candidate_rate: float | None = 0.01
    """Stop when the candidate rate (candidate frames saved / MD steps run, over all walkers)
    of a round's exploration falls below this; null: run max_rounds rounds."""
    explore_final: bool = True
    """After the last round, run one more exploration (no labels) to measure the final
    model's candidate rate."""

    def __post_init__(self):
        if self.max_rounds < 0:
            raise ConfigError("stopping.max_rounds", f"expected >= 0, got {self.max_rounds}")
        rate = self.min_candidate_rate
        if rate is not None and not 0 <= rate <= 1:
            raise ConfigError("stopping.min_candidate_rate", f"expected 0 to 1, got {rate}")


@dataclass(frozen=True)
class ActiveLearningConfig:
    """An active-learning job (``shallow-ensembles active-learn PROTOCOL.yaml``)."""

    output_dir: str = "runs/active_learning"
    """Folder of the run: data/, round_00/, round_01/, ..., report.md, report.csv, rounds.png."""
    data: ALDataConfig = ALDataConfig()
    """Starting, validation and test frames."""
    reference: ReferenceConfig = ReferenceConfig()
    """The reference calculator."""
    initial: InitialConfig = InitialConfig()
    """The round-0 model."""
    walkers: WalkersConfig = WalkersConfig()
    """The MD walkers of every round."""
    md: str | dict[str, Any] = ""
    """The MD protocol of the walkers: a YAML file (md_protocols/*.yaml) or an inline mapping.
    Its ``save`` actions collect the candidates; steps, temperature and seed come from
    ``walkers``."""
    selection: SelectionConfig = SelectionConfig()
    """How candidates are chosen for labelling."""
    fine_tune: FineTuneConfig = FineTuneConfig()
    """The fine-tune of every round."""
    stopping: StoppingConfig = StoppingConfig()
    """When to stop."""
    threads: int | None = None
    """torch threads for the whole loop; null: torch's default."""
    plot: bool = True
    """Draw rounds.png (test errors, candidate rate and data size across rounds)."""

    def __post_init__(self):
        if not self.data.train_file:
            raise ConfigError("data.train_file", "required")
        if self.md == "" or self.md == {}:
            raise ConfigError("md", "required: an MD protocol file or an inline mapping")
        self.md_config()
        if self.initial.model_file is None:
            self.fine_tune.train_config(self.initial.model, "initial.pt", "train.extxyz",
                                        "validation.extxyz", "round")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("threads", f"expected >= 1 or null, got {self.threads}")

    def md_config(self) -> MDConfig:
        """The validated MD protocol (errors named ``md.*``)."""
        where = f" (in {self.md})" if isinstance(self.md, str) else ""
        try:
            config = load_md_config(self.md)
        except ConfigError as err:
            if isinstance(self.md, str) and err.path == str(Path(self.md)):
                raise ConfigError("md", str(err)) from None  # unreadable file
            raise ConfigError(f"md.{err.path}" if err.path else "md", err.detail + where) \
                from None
        if not any(action.kind == "save" for action in config.actions):
            raise ConfigError("md.actions", "needs a save action (e.g. {kind: save, level: "
                              f"candidate}}) to collect candidates{where}")
        return config


def load_al_config(source: ActiveLearningConfig | dict | str | Path,
                   overrides: Sequence[str] = ()) -> ActiveLearningConfig:
    """Validate an active-learning protocol given as a config, a mapping or a YAML file, with
    ``--set`` overrides (:func:`~shallow_ensembles.config.load_config`); ConfigErrors name the
    dotted key."""
    return load_config(ActiveLearningConfig, source, overrides)
