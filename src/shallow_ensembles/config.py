"""Configuration schemas: one frozen dataclass per section, defaults in one place.

Each field has its default beside it and an attribute docstring under it; the same declaration
validates user YAML (:func:`from_dict`), prints templates (:func:`template`) and documents options.
Numbers with a unit carry the unit in their name (``cutoff_A``, ``timestep_fs``).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import os
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError

T = typing.TypeVar("T")


LEGACY_BACKBONE_KEYS = ("cutoff_A", "n_radial", "l_max", "n_channels", "hidden")
"""Options of the built-in backbone that were once written directly under ``model``; they are
still read there (as ``model.backbone: {kind: power-spectrum, ...}``)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a shallow ensemble: a registered backbone, an optional bottleneck and M
    linear heads."""

    backbone: dict = dataclasses.field(default_factory=lambda: {"kind": "power-spectrum"})
    """The backbone: ``kind`` (``power-spectrum``, the built-in one, or ``mace``, with
    ``pip install 'shallow-ensembles[mace]'``) and its options (``shallow-ensembles template``
    lists them; ``model/registry.py`` has the table)."""
    bottleneck: int | None = 16
    """Width d of the last-layer features feeding the heads (an atom-wise Linear + SiLU; for
    ``mace`` it is the hidden layer of MACE's last readout); null feeds the F backbone features."""
    n_members: int = 8
    """Number of ensemble members M (heads); at least 2 for an uncertainty."""
    dtype: Literal["float32", "float64"] = "float32"
    """Floating-point precision of parameters and computations."""

    def __post_init__(self):
        if not isinstance(self.backbone.get("kind", "power-spectrum"), str):
            raise ConfigError("model.backbone.kind",
                              f"expected a string, got {self.backbone.get('kind')!r}")
        if self.n_members < 1:
            raise ConfigError("model.n_members", f"expected >= 1, got {self.n_members}")
        if self.bottleneck is not None and self.bottleneck < 1:
            raise ConfigError("model.bottleneck", f"expected >= 1 or null, got {self.bottleneck}")

    @staticmethod
    def upgrade(data: dict) -> dict:
        """Fold the legacy top-level backbone options into ``backbone`` (see
        :data:`LEGACY_BACKBONE_KEYS`)."""
        legacy = {k: data[k] for k in LEGACY_BACKBONE_KEYS if k in data}
        if not legacy:
            return data
        backbone = dict(data.get("backbone") or {"kind": "power-spectrum"})
        if backbone.get("kind", "power-spectrum") != "power-spectrum":
            raise ConfigError(f"model.{next(iter(legacy))}", "is an option of the "
                              "power-spectrum backbone; put backbone options under "
                              "model.backbone")
        rest = {k: v for k, v in data.items() if k not in legacy}
        return {**rest, "backbone": {**backbone, **legacy}}


STAGE_KINDS = ("mse", "energy-nll", "force-nll", "member-mse", "llpr", "isotropic", "subsample",
               "random-heads")
TRAINED_STAGES = ("mse", "energy-nll", "force-nll", "member-mse")
PROTOCOLS = {
    "mse": ("mse",),
    "energy-nll": ("energy-nll",),
    "force-nll-scratch": ("force-nll",),
    "llpr": ("mse", "llpr"),
    "random-heads": ("random-heads", "member-mse"),
    "subsample": ("mse", "subsample"),
    "two-step-llpr": ("mse", "llpr", "force-nll"),
    "two-step-energy-nll": ("energy-nll", "force-nll"),
}
"""Named protocols as their stage kinds (the fine-tune of a two-step protocol is its last)."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is split."""

    train_file: str = ""
    """ASE-readable file with the training frames (and the validation/test frames if no
    separate files are given)."""
    validation_file: str | None = None
    """Separate validation file; null splits ``train_file``."""
    test_file: str | None = None
    """Separate test file; null splits ``train_file`` (the remainder)."""
    n_train: int | None = None
    """Frames for training when splitting; null: 80 % of the frames."""
    n_validation: int | None = None
    """Frames for validation when splitting; null: 10 % of the frames (at least 1)."""
    n_test: int | None = None
    """Frames for testing when splitting; null: the rest."""
    split_seed: int = 0
    """Seed of the random split (saved to ``split.json`` in the run folder)."""
    split_file: str | None = None
    """Reuse a saved split (JSON written by a previous run)."""
    energy_key: str | None = None
    """Energy label key; null: the calculator results, then ``info['energy']``."""
    forces_key: str | None = None
    """Forces label key; null: the calculator results, then ``arrays['forces']``."""
    stress_key: str | None = None
    """Stress label key (eV/Å³); null: the calculator results if present."""


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
    energy_nll_beta: float = 0.0
    """β of a β-NLL energy term (Seitzer et al., ICLR 2022): each structure's energy NLL is
    weighted by (σ_k² / mean over the batch of σ²)^β, detached, so that structures with a large
    σ_E still pull their mean (β = 1: like an MSE). 0 is the plain NLL. On carbon (4-atom
    crystals beside 64-atom cells) β = 0.5 fitted the energy-NLL protocol (test RMSE_E 15.6
    against 45.0 meV/atom, MSE 16.7; RMSE_F 937 against 936 meV/Å) and kept all four NLL
    protocols within 2× the MSE energy error (15.6, 21.3, 27.6, 30.2), but on ethanol force NLL
    from scratch lost RLL_F (18.8 against 21.7) and RMSE_E (1.54 against 1.31): 0 stays the
    default (README, "Choosing the defaults")."""
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


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One stage of a protocol: a training stage or a head initialisation."""

    kind: Literal["mse", "energy-nll", "force-nll", "member-mse", "llpr", "isotropic",
                  "subsample", "random-heads"] = "mse"
    """mse: MSE on the ensemble mean; energy-nll: energy NLL + mean-force MSE; force-nll:
    energy NLL + force NLL (member forces); member-mse: every member's energy MSE + mean-force
    MSE; llpr / isotropic / subsample / random-heads: head initialisations (no training)."""
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
    trainable: Literal["all", "heads"] = "all"
    """Train all parameters or only the last layer (heads, per-species scales and shifts)."""
    regularizer: float | None = None
    """llpr: fixed ς; null: chosen on validation."""
    force_rows: bool = False
    """llpr: add force rows to the last-layer covariance."""
    noise: float = 0.01
    """isotropic: noise scale s of the head weights."""
    ridge: float = 1e-6
    """subsample: relative ridge parameter."""


FINE_TUNE = StageConfig(kind="force-nll", epochs=30, learning_rate=5e-4, warmup_epochs=0,
                        patience=5)
"""The fine-tune of the two-step protocols: no warm-up (the model is trained), its own peak
learning rate, early stopping on the validation force NLL (README, "Choosing the defaults")."""


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
    protocol: Literal["mse", "energy-nll", "force-nll-scratch", "llpr", "random-heads",
                      "subsample", "two-step-llpr", "two-step-energy-nll", "custom"] = \
        "two-step-llpr"
    """A named protocol, or custom to use ``stages``."""
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
        if self.protocol == "custom" and not self.stages:
            raise ConfigError("stages", "protocol: custom needs at least one stage")
        if self.protocol != "custom" and self.stages and \
                len(self.stages) != len(PROTOCOLS[self.protocol]):
            raise ConfigError("stages", f"protocol {self.protocol} has "
                              f"{len(PROTOCOLS[self.protocol])} stages "
                              f"{list(PROTOCOLS[self.protocol])}; got {len(self.stages)} overrides")
        for k, stage in enumerate(self.resolved_stages()):
            if stage.kind in ("energy-nll", "force-nll", "llpr", "isotropic", "subsample",
                              "random-heads", "member-mse") and self.model.n_members < 2:
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
        kinds = PROTOCOLS[self.protocol]
        if self.stages:
            for k, (kind, stage) in enumerate(zip(kinds, self.stages, strict=True)):
                if stage.kind != kind:
                    raise ConfigError(f"stages[{k}].kind",
                                      f"protocol {self.protocol} expects '{kind}' here")
            return self.stages
        fine_tune = self.protocol.startswith("two-step")
        stages = []
        for k, kind in enumerate(kinds):
            last = k == len(kinds) - 1
            if fine_tune and last:  # the short fine-tune of a two-step protocol
                stages.append(FINE_TUNE)
            else:
                stages.append(StageConfig(kind=kind))
        return tuple(stages)


# ------------------------------------------------------------------------------------------------
# Generic loading, validation and templates
# ------------------------------------------------------------------------------------------------


def field_docs(cls) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal right under each field)."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp, path: str):
    """Check ``value`` against the annotation ``tp`` and convert it; raise naming ``path``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        return from_dict(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(path, f"expected one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(path, f"expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            value = _numeric_string(value, path)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    return value


def _numeric_string(value: str, path: str) -> float:
    """``float(value)`` for a numeric string such as YAML's ``1e-3``; else a ConfigError."""
    try:
        return float(value)
    except ValueError:
        raise ConfigError(path, f"expected a number, got the string {value!r} (write numbers "
                          "without quotes, e.g. 0.001 or 1.0e-3)") from None


def from_dict(cls: type[T], data: dict, path: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``; unknown keys and wrong types name their path."""
    if hasattr(cls, "upgrade"):
        data = cls.upgrade(data)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(dotted, f"unknown option{hint}")
        kwargs[key] = _convert(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(path or cls.__name__, str(err)) from err


def to_dict(obj) -> dict:
    """Plain-Python (YAML-safe) dictionary of a config dataclass."""

    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    return plain(obj)


def template(cls, indent: int = 0) -> str:
    """Commented YAML of every option of ``cls`` with its default, made from the dataclass."""
    docs = field_docs(cls)
    pad = " " * indent
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in docs:
            lines.append(f"{pad}# {docs[f.name]}")
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else f.default_factory()  # type: ignore[misc]
            if f.default_factory is not dataclasses.MISSING
            else None
        )
        if dataclasses.is_dataclass(hints[f.name]) or dataclasses.is_dataclass(default):
            lines.append(f"{pad}{f.name}:")
            lines.append(template(type(default) if default is not None else hints[f.name],
                                  indent + 2))
        else:
            dumped = yaml.safe_dump(to_dict(default) if dataclasses.is_dataclass(default)
                                    else (list(default) if isinstance(default, tuple) else default),
                                    default_flow_style=True).strip()
            dumped = dumped.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"{pad}{f.name}: {dumped}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(text, "expected KEY.PATH=VALUE")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def load_yaml(path: str | Path, overrides: typing.Sequence[str] = ()) -> dict:
    """Read a YAML mapping and apply ``--set a.b=c`` overrides; errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as err:
        raise ConfigError(str(path), "no such file") from err
    except yaml.YAMLError as err:
        raise ConfigError(str(path), f"not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(str(path),
                          f"expected a mapping at the top level, got {type(data).__name__}")
    return apply_overrides(data, overrides)


def apply_overrides(data: dict, overrides: typing.Sequence[str]) -> dict:
    """Apply ``a.b=c`` overrides to the nested mapping ``data`` in place; returns it."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(text, f"'{k}' is not a section")
        node[keys[-1]] = value
    return data


DATA_PATH_KEYS = ("train_file", "validation_file", "test_file", "split_file")
"""Fields of :class:`DataConfig` holding file paths (read relative to the config's folder)."""


def resolve_data_paths(data: dict, base: Path) -> dict:
    """``data`` (a YAML ``data:`` mapping) with relative file paths read from ``base``.

    A relative path is taken from the config file's folder ``base``; if the file is not
    there but exists relative to the current folder (configs written before this rule), that
    one is used with a warning. ASE's ``@index`` suffix is kept. A file found in neither place
    is a :class:`ConfigError` that names both places.
    """
    data = dict(data)
    for key in DATA_PATH_KEYS:
        value = data.get(key)
        if not isinstance(value, str) or not value or Path(value).is_absolute():
            continue
        name, at, index = value.partition("@")
        if (base / name).exists():
            data[key] = os.path.normpath(base / name) + at + index
        elif Path(name).exists():
            warnings.warn(f"data.{key}: {name} is not in the config's folder {base}; using "
                          f"{Path(name).resolve()} from the current folder (write the path "
                          "relative to the config file)", UserWarning, stacklevel=2)
        else:
            raise ConfigError(f"data.{key}", f"no such file {name!r}: relative paths are read "
                              f"from the config file's folder {base} (also tried the current "
                              f"folder {Path.cwd()}); fix the path or make it absolute")
    return data


def load_train_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """The :class:`TrainConfig` of a YAML file, data paths (and ``init_model``, when it is
    there) relative to its folder (see :func:`resolve_data_paths`), then ``--set`` overrides
    (paths there: the current folder)."""
    data = load_yaml(path)
    folder = Path(path).resolve().parent
    if isinstance(data.get("data"), dict):
        data["data"] = resolve_data_paths(data["data"], folder)
    init = data.get("init_model")
    if isinstance(init, str) and init and not Path(init).is_absolute() \
            and (folder / init).exists():
        data["init_model"] = os.path.normpath(folder / init)
    return from_dict(TrainConfig, apply_overrides(data, overrides))
