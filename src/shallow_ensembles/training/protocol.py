"""Protocols: named lists of stages composing head initialisations and the trainer.

``train(config)`` is the whole job: read and split the data, build and initialise the model
(composition baseline, per-species scale, density normalisation), run the stages (resumable),
refit the calibration on validation, and save ``model.pt`` with its provenance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

from ..config import from_dict, to_dict
from ..data import collate, fit_composition_baseline, graphs_from_atoms, read_structures
from ..data.config import DataConfig
from ..data.io import check_elements
from ..data.split import load_split, make_split, save_split, shared_frames
from ..errors import ConfigError, DataError, ModelFileError
from ..model import ShallowEnsemble, save_model
from ..model.config import ModelConfig
from ..model.io import file_sha256, load_error_summary, load_initial_model
from ..model.registry import cutoff_of, resolved_spec
from . import init as heads
from .config import TrainConfig
from .stages import STAGES
from .trainer import Trainer, distributed_info

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class Datasets:
    """Labelled frames of each subset."""

    train: list
    validation: list
    test: list


RESUME_SECTIONS = ("data", "model", "protocol", "init_model")
"""Config sections a resumed run must share with the run it continues (split, architecture)."""


def check_resume(config: TrainConfig, run_dir: Path) -> None:
    """Refuse ``--resume`` when the data split or the architecture changed; writes nothing.

    Compares ``config`` with ``run_dir/resolved_config.yaml`` (if the run wrote one) on
    :data:`RESUME_SECTIONS`; file paths compare equal when they name the same file.

    Raises
    ------
    ConfigError naming the first changed dotted key, its old and new values and the remedy.
    """
    saved = run_dir / "resolved_config.yaml"
    if not saved.is_file():
        return
    old = {k: v for k, v in (yaml.safe_load(saved.read_text()) or {}).items()
           if k in RESUME_SECTIONS}
    if isinstance(old.get("model"), dict):  # compare architectures with every default filled in
        with contextlib.suppress(ConfigError):
            old["model"] = _resolved_model(from_dict(ModelConfig, old["model"], "model"))
    old = _flatten(old)
    new = _flatten({**{k: v for k, v in to_dict(config).items() if k in RESUME_SECTIONS},
                    "model": _resolved_model(config.model)})
    for key in sorted(set(old) | set(new)):
        if not _same_value(old.get(key), new.get(key)):
            raise ConfigError(key, f"changed from {old.get(key)!r} to {new.get(key)!r} since the "
                              f"run in {run_dir} started ({saved.name}); --resume needs the same "
                              "data split and architecture: restore the value, or train into a "
                              "new output_dir (nothing was written)")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def _same_value(a, b) -> bool:
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return False


def load_datasets(cfg: DataConfig, run_dir: Path | None = None,
                  resume: bool = False) -> Datasets:
    """Read the files of ``cfg``; split ``train_file`` when no separate files are given.

    With ``run_dir`` the split is saved to ``run_dir/split.json``; with ``resume`` an existing
    split file there must equal the split drawn now (else a DataError, nothing overwritten).
    """
    keys = {"energy_key": cfg.energy_key, "forces_key": cfg.forces_key,
            "stress_key": cfg.stress_key}
    frames = read_structures(cfg.train_file, **keys)
    if cfg.validation_file is not None:
        validation = read_structures(cfg.validation_file, **keys)
        test = read_structures(cfg.test_file, **keys) if cfg.test_file else []
        return _warn_shared(Datasets(frames, validation, test))
    n = len(frames)
    if cfg.split_file:
        split = load_split(cfg.split_file, n)
    else:
        n_val = cfg.n_validation if cfg.n_validation is not None else max(1, n // 10)
        n_train = cfg.n_train if cfg.n_train is not None else max(1, int(0.8 * n))
        split = make_split(n, n_train, n_val, cfg.n_test, cfg.split_seed)
    if run_dir is not None:
        saved = run_dir / "split.json"
        if resume and saved.is_file() and load_split(saved) != split:
            raise DataError("the split drawn now differs from the one of the run being resumed "
                            "(did the data file change?); resume needs the same split: restore "
                            "the data, or train into a new output_dir", file=saved)
        save_split(split, saved)
    test = read_structures(cfg.test_file, **keys) if cfg.test_file else [
        frames[i] for i in split.test]
    return _warn_shared(Datasets([frames[i] for i in split.train],
                                 [frames[i] for i in split.validation], test))


def _warn_shared(data: Datasets) -> Datasets:
    """Warn when identical frames sit in two subsets (optimistic validation, test and α)."""
    subsets = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    for (a, b), count in shared_frames(subsets).items():
        warnings.warn(f"data: {count} identical frame(s) are in both the {a} and the {b} set "
                      "(same numbers, positions and cell): validation, calibration and test "
                      "metrics on them are optimistic; remove duplicates from the data",
                      UserWarning, stacklevel=3)
    return data


def _load_checkpoint(trainer: Trainer) -> dict | None:
    """The trainer's checkpoint state; a corrupt file is a ModelFileError that says what to do."""
    try:
        return trainer.load_checkpoint()
    except Exception as err:  # noqa: BLE001 - torch raises many types for corrupt files
        raise ModelFileError(trainer.checkpoint_path, "cannot be read as a checkpoint "
                             f"({type(err).__name__}: {load_error_summary(err)}); delete it to "
                             "train from the start, or restore it") from None


def build_model(config: TrainConfig, train_graphs, species) -> ShallowEnsemble:
    """Model from the config, initialised from the training data (baseline, scales)."""
    model = ShallowEnsemble.from_config(config.model, species, collate(train_graphs[:32]))
    energies = [g.energy for g in train_graphs]
    mu = fit_composition_baseline([g.numbers for g in train_graphs], energies, model.species)
    forces = np.concatenate([g.forces for g in train_graphs])
    with torch.no_grad():
        model.composition.copy_(torch.as_tensor(mu))
        model.scale.fill_(float(np.sqrt(np.mean(forces**2))) or 1.0)
    heads.centre_features(model, train_graphs)
    return model


def resolve_backbone(config: TrainConfig) -> TrainConfig:
    """``config`` with ``model.backbone`` checked against its kind's options and completed with
    their defaults (ConfigError naming ``model.backbone.<option>`` before any work)."""
    spec = resolved_spec(config.model.backbone)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, backbone=spec))


def _resolved_model(model: ModelConfig) -> dict:
    """The ``model`` section as plain data with the backbone's defaults filled in."""
    return {**to_dict(model), "backbone": resolved_spec(model.backbone)}


def skips_training(config: TrainConfig, index: int, stage) -> bool:
    """A named protocol's leading MSE stage is skipped when ``init_model`` gives the trained
    model it would produce (custom stage lists run as written)."""
    return bool(config.init_model) and config.protocol != "custom" and index == 0 \
        and stage.kind == "mse"


def run_init_stage(model, stage, stage_index, data_train, data_val, config: TrainConfig) -> None:
    """Apply a head-initialisation stage (deterministic for the training seed): the kind's
    ``initialise`` of :data:`~shallow_ensembles.training.stages.STAGES`, on features centred as
    ``stage.centring`` says."""
    gen = torch.Generator().manual_seed(config.training.seed * 7919 + stage_index)
    heads.centre_features(model, data_train, weighting=stage.centring)
    STAGES[stage.kind].initialise(model, stage, data_train, data_val, gen, config.loss)


def train(config: TrainConfig, resume: bool = False) -> ShallowEnsemble:
    """Run the training job of ``config``; returns the calibrated model (also saved)."""
    from ..calibration import calibrate

    rank, _ = distributed_info()
    config = resolve_backbone(config)
    run_dir = Path(config.output_dir)
    if resume:
        check_resume(config, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.training.threads:
        torch.set_num_threads(config.training.threads)
    torch.manual_seed(config.training.seed)
    data = load_datasets(config.data, run_dir if rank == 0 else None, resume=resume)
    if rank == 0:
        (run_dir / "resolved_config.yaml").write_text(yaml.safe_dump(to_dict(config),
                                                                     sort_keys=False))
    species = sorted({int(z) for a in data.train + data.validation for z in a.numbers})
    model = None
    if config.init_model:
        model = load_initial_model(config.init_model, config.model.n_members, config.model.dtype)
        check_elements(species, model.species, file=config.data.train_file)
    cutoff = model.cutoff if model is not None else cutoff_of(config.model.backbone)
    train_graphs = graphs_from_atoms(data.train, cutoff)
    val_graphs = graphs_from_atoms(data.validation, cutoff)
    if model is None:
        model = build_model(config, train_graphs, species)
    device = "cuda" if config.training.device == "cuda" or (
        config.training.device == "auto" and torch.cuda.is_available()) else "cpu"
    model = model.to(device)
    trainer = Trainer(model, train_graphs, val_graphs, config, run_dir)
    state = _load_checkpoint(trainer) if resume else None
    if resume and state is None:
        LOG.warning("no checkpoint in %s: starting from scratch", run_dir)
    first = state["stage"] if state is not None else 0
    for k, stage in enumerate(config.resolved_stages()):
        if k < first:
            continue
        if skips_training(config, k, stage):
            LOG.info("stage %d (%s) skipped: init_model %s is a trained model", k, stage.kind,
                     config.init_model)
            continue
        if STAGES[stage.kind].trained:
            trainer.run_stage(k, stage, state if k == first else None)
        else:
            run_init_stage(model, stage, k, train_graphs, val_graphs, config)
        trainer.save_checkpoint({"stage": k + 1, "optimizer": None, "progress": None})
    model = model.cpu()
    if config.calibrate and config.model.n_members > 1:
        calibrate(model, val_graphs)
    if rank == 0:
        provenance = {"protocol": config.protocol, "init_model": config.init_model,
                      "stages": [s.kind for s in config.resolved_stages()],
                      "data_file": str(config.data.train_file),
                      "data_sha256": file_sha256(config.data.train_file),
                      "n_train": len(train_graphs), "n_validation": len(val_graphs)}
        save_model(model, run_dir / "model.pt", provenance)
    return model
