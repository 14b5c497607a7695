"""The active-learning loop: explore with MD walkers → pool candidates → select a diverse batch →
label with the reference → grow the training set → fine-tune → recalibrate → next round.

Files in ``output_dir`` (every file is written atomically; a round's files are its checkpoint):

========================  ========================================================================
file                      content
========================  ========================================================================
resolved_config.yaml      the validated protocol, every default filled in
data/                     start.extxyz (the starting frames), validation.extxyz and test.extxyz
                          (fixed sets), labelled by the reference when ``data.relabel``
round_00/                 train.extxyz, validation.extxyz, training/ (the training run), model.pt,
                          report.json
round_XX/                 md/<walker>/ (run_md outputs), candidates.extxyz (the pool, σ in
                          info/arrays), exploration.json, selected.extxyz, labelled.extxyz,
                          train.extxyz, validation.extxyz (grown), training/, model.pt,
                          report.json (one row of the table, see ``report.py``)
report.csv, report.md     the per-round table
rounds.png                test errors, candidate rate and data size across rounds
model.pt                  the last round's model
summary.yaml              why the loop stopped, and the table
========================  ========================================================================

Rounds: round 0 trains (or copies) the starting model. Round k ≥ 1 runs the walkers with the
model of round k − 1; when their candidate rate is below ``stopping.min_candidate_rate`` the
loop stops there (an exploration-only round). Otherwise the selected frames are labelled,
added to the training set, and the model of round k − 1 is fine-tuned on it and recalibrated.
After ``stopping.max_rounds`` rounds one more exploration measures the last model's candidate
rate (``stopping.explore_final``).

Resume (``resume=True``): the protocol must equal the one in ``resolved_config.yaml`` except
``stopping``, ``threads`` and ``plot``; completed rounds (``report.json`` of kind ``trained``)
are skipped, and an interrupted round continues from its last finished phase (its training run
from its checkpoint).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase.io
import torch
import yaml
from ase import Atoms

from ..config import from_dict, to_dict
from ..data.io import label_frame, read_structures
from ..errors import ConfigError
from ..md.config import MDConfig
from ..model import ShallowEnsemble, load_model
from ..model.config import ModelConfig
from ..training import train
from . import report as rep
from .config import ActiveLearningConfig, load_al_config
from .files import atomic_copy, plain, split_off, split_spec, write_frames, write_json
from .reference import label, make_reference
from .selection import select as choose
from .walkers import run_walkers

LOG = logging.getLogger(__name__)
RESUMABLE_CHANGES = ("stopping", "threads", "plot")
"""Top-level keys that may differ when a run is resumed."""


@dataclass(frozen=True)
class ALResult:
    """How an active-learning run went; also written to ``summary.yaml``."""

    rows: list[dict[str, Any]]
    """One row per round (``report.py`` lists the columns)."""
    stop_reason: str
    """converged, max_rounds, no_candidates, nothing_selected or reference_failed."""
    message: str
    """One line saying why the loop ended."""
    model_file: Path
    """The last round's model."""
    output_dir: Path
    files: dict[str, str] = field(default_factory=dict)
    """Report files by role."""

    @property
    def rounds_trained(self) -> int:
        """Rounds that fine-tuned a model (round 0 not counted)."""
        return sum(row["kind"] == "trained" for row in self.rows)

    def to_dict(self) -> dict[str, Any]:
        """YAML-safe summary."""
        return {"stop_reason": self.stop_reason, "message": self.message,
                "rounds_trained": self.rounds_trained, "model_file": str(self.model_file),
                "files": dict(self.files), "rounds": [plain(r) for r in self.rows]}


def run_active_learning(config: ActiveLearningConfig | dict | str | Path, resume: bool = False,
                        overrides=()) -> ALResult:
    """Run (or resume) the active-learning protocol ``config``; see the module docstring.

    Parameters
    ----------
    config : an :class:`ActiveLearningConfig`, a mapping or a YAML file (validated here)
    resume : continue the run in ``output_dir``, skipping completed rounds
    overrides : ``a.b=value`` strings applied to a YAML file or mapping

    Returns
    -------
    ALResult

    Raises
    ------
    ConfigError naming the dotted key (also: tblite missing for ``reference.kind: xtb``, an
    existing run without ``resume``); DataError for unreadable or unlabelled frames.
    """
    config = load_al_config(config, overrides)
    output = Path(config.output_dir)
    _start(config, output, resume)
    if config.threads:
        torch.set_num_threads(config.threads)
    run = _Run(config, output)
    rows = [run.prepare()]
    model_path, reason = run.round_dir(0) / "model.pt", "max_rounds"
    stopping = config.stopping
    for k in range(1, stopping.max_rounds + 1 + int(stopping.explore_final)):
        row, stop = run.round(k, model_path, final=k > stopping.max_rounds)
        rows.append(row)
        if stop is not None:
            reason = stop
            break
        model_path = run.round_dir(k) / "model.pt"
    return _finish(config, output, rows, reason, model_path)


def _start(config: ActiveLearningConfig, output: Path, resume: bool) -> None:
    """Check a resumed protocol against the saved one; write ``resolved_config.yaml``."""
    resolved = output / "resolved_config.yaml"
    new = yaml.safe_load(yaml.safe_dump(to_dict(config), allow_unicode=True))
    if resolved.exists():
        if not resume:
            raise ConfigError("output_dir", f"{output} holds an active-learning run; resume it "
                              "(--resume) or choose another output_dir")
        old = yaml.safe_load(resolved.read_text()) or {}
        for key, value in new.items():
            if key not in RESUMABLE_CHANGES and old.get(key) != value:
                raise ConfigError(key, f"differs from the run being resumed in {output} (only "
                                  f"{', '.join(RESUMABLE_CHANGES)} may change)")
    output.mkdir(parents=True, exist_ok=True)
    resolved.write_text(yaml.safe_dump(new, sort_keys=False, allow_unicode=True))


class _Run:
    """The phases of one run; each phase returns early when its output file exists."""

    def __init__(self, config: ActiveLearningConfig, output: Path):
        self.config, self.output = config, output
        self.md: MDConfig = config.md_config()
        self._reference = None
        self._test: list[Atoms] | None = None

    # --- helpers ----------------------------------------------------------------------------
    def round_dir(self, k: int) -> Path:
        """``round_XX`` (created)."""
        path = self.output / f"round_{k:02d}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def reference(self):
        """The reference calculator, built on first use."""
        if self._reference is None:
            self._reference = make_reference(self.config.reference)
        return self._reference

    def dataset(self, name: str, spec: str | None) -> list[Atoms]:
        """Labelled frames of ``spec``, cached as ``data/<name>.extxyz`` (relabelled if asked)."""
        if spec is None:
            return []
        cached = self.output / "data" / f"{name}.extxyz"
        if not cached.exists():
            path, index = split_spec(spec)
            relabel = self.config.data.relabel
            frames = read_structures(path, index=index, require_energy=not relabel,
                                     require_forces=not relabel)
            if relabel:
                labelled, failed = label(frames, self.reference, self.config.reference.stress)
                if failed:
                    LOG.warning("%s: the reference failed on frames %s; left out", spec, failed)
                frames = [label_frame(a) for a in labelled]
            write_frames(cached, frames)
        return read_structures(cached)

    @property
    def test(self) -> list[Atoms]:
        """The fixed test frames (empty without ``data.test_file``)."""
        if self._test is None:
            self._test = self.dataset("test", self.config.data.test_file)
        return self._test

    # --- round 0 --------------------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        """Round 0: the starting training and validation sets and model; its report row."""
        d = self.round_dir(0)
        if (d / "report.json").exists():
            return json.loads((d / "report.json").read_text())
        start = time.perf_counter()
        data = self.config.data
        frames = self.dataset("start", data.train_file)
        if data.validation_file is not None:
            train_set, validation = frames, self.dataset("validation", data.validation_file)
        else:
            if len(frames) < 2:
                raise ConfigError("data.validation_file", "null needs at least two starting "
                                  "frames to split off a validation set")
            train_set, validation = split_off(frames, data.validation_fraction, 0, minimum=1)
        _ = self.test  # label the test set before the first model exists
        if not (d / "train.extxyz").exists():
            write_frames(d / "validation.extxyz", validation)
            write_frames(d / "train.extxyz", train_set)
        model = self.initial_model(d)
        row = {"round": 0, "kind": "initial", "n_train": len(train_set),
               "n_validation": len(validation), **rep.model_metrics(model, self.test),
               "seconds": time.perf_counter() - start}
        write_json(d / "report.json", row)
        LOG.info("round 0: %s", _describe(row))
        return row

    def initial_model(self, d: Path) -> ShallowEnsemble:
        """The starting model: copied from ``initial.model_file`` or trained."""
        target = d / "model.pt"
        if not target.exists():
            initial = self.config.initial
            if initial.model_file is not None:
                atomic_copy(Path(initial.model_file), target)
            else:
                config = initial.train_config(str(d / "train.extxyz"), str(d / "training"),
                                              str(d / "validation.extxyz"))
                train(config, resume=(d / "training" / "checkpoint.pt").exists())
                atomic_copy(d / "training" / "model.pt", target)
        return load_model(target)

    # --- rounds 1, 2, ... ---------------------------------------------------------------------
    def round(self, k: int, model_path: Path, final: bool) -> tuple[dict[str, Any], str | None]:
        """Round ``k`` from the model at ``model_path``: its row, and a stop reason or None."""
        d = self.round_dir(k)
        if (d / "report.json").exists():
            row = json.loads((d / "report.json").read_text())
            if row["kind"] == "trained":
                return row, None
        start = time.perf_counter()
        model = load_model(model_path)
        exploration = self.explore(k, model)
        row = {"round": k, "kind": "explored", **{key: exploration[key] for key in (
            "md_steps", "n_candidates", "candidate_rate", "walkers_stopped")}}
        reason = self.stop_reason(exploration, final)
        selected = self.select(k, model) if reason is None else []
        if reason is None and not selected:
            reason = "nothing_selected"
        labelled = self.label(k, selected) if reason is None else []
        if reason is None and not labelled:
            reason = "reference_failed"
        if reason is None:
            row.update(self.train_round(k, model, model_path, labelled), kind="trained",
                       n_selected=len(selected))
        row["seconds"] = time.perf_counter() - start
        write_json(d / "report.json", row)
        LOG.info("round %d: %s%s", k, _describe(row), f"; stop: {reason}" if reason else "")
        return row, reason

    def stop_reason(self, exploration: dict, final: bool) -> str | None:
        """Why the loop stops after this round's exploration, or None."""
        target = self.config.stopping.min_candidate_rate
        if target is not None and exploration["candidate_rate"] < target:
            return "converged"
        if final:
            return "max_rounds"
        if exploration["n_candidates"] == 0:
            return "no_candidates"
        return None

    def explore(self, k: int, model: ShallowEnsemble) -> dict[str, Any]:
        """Run the walkers of round ``k``; pool their candidates into candidates.extxyz."""
        d = self.round_dir(k)
        if (d / "exploration.json").exists():
            return json.loads((d / "exploration.json").read_text())
        pool, records = run_walkers(model, self.md, self.config.walkers,
                                    self.start_structures(), k, d / "md")
        if pool:
            write_frames(d / "candidates.extxyz", pool, labelled=False)
        steps = sum(r["steps_run"] for r in records)
        summary = {"walkers": records, "md_steps": steps, "n_candidates": len(pool),
                   "candidate_rate": len(pool) / max(steps, 1),
                   "walkers_stopped": sum(r["stop_reason"] != "completed" for r in records)}
        write_json(d / "exploration.json", summary)
        return summary

    def start_structures(self) -> list[Atoms]:
        """The walkers' start structures."""
        spec = self.config.walkers.structures
        if spec is None:
            return read_structures(self.output / "data" / "start.extxyz")
        path, index = split_spec(spec)
        return read_structures(path, index=index, require_energy=False, require_forces=False)

    def select(self, k: int, model: ShallowEnsemble) -> list[Atoms]:
        """Choose the frames to label from the pool of round ``k`` (selected.extxyz)."""
        d = self.round_dir(k)
        if (d / "selected.extxyz").exists():
            return ase.io.read(d / "selected.extxyz", ":")
        pool = ase.io.read(d / "candidates.extxyz", ":")
        training = read_structures(self.round_dir(k - 1) / "train.extxyz")
        indices = choose(model, pool, training, self.config.selection)
        chosen = []
        for i in indices:
            frame = pool[i]
            frame.info["al_pool_index"] = int(i)
            chosen.append(frame)
        if chosen:
            write_frames(d / "selected.extxyz", chosen, labelled=False)
        return chosen

    def label(self, k: int, selected: list[Atoms]) -> list[Atoms]:
        """Label the selected frames with the reference (labelled.extxyz)."""
        path = self.round_dir(k) / "labelled.extxyz"
        if path.exists():
            return read_structures(path)
        labelled, failed = label(selected, self.reference, self.config.reference.stress)
        if failed:
            LOG.warning("round %d: the reference failed on selected frames %s", k, failed)
        frames = [label_frame(a) for a in labelled]
        if frames:
            write_frames(path, frames)
        return frames

    def train_round(self, k: int, model: ShallowEnsemble, model_path: Path,
                    labelled: list[Atoms]) -> dict[str, Any]:
        """Grow the data, fine-tune and recalibrate; the report columns of the new model."""
        train_set, validation = self.grow(k, labelled)
        new_model = self.fine_tune(k, model, model_path)
        before = rep.frame_errors(model, labelled)
        after = rep.frame_errors(new_model, labelled)
        return {"n_train": len(train_set), "n_validation": len(validation),
                "n_labelled": len(labelled), **rep.model_metrics(new_model, self.test),
                "selected_forces_rmse_before": before[0], "selected_forces_rmse_after": after[0],
                "selected_sigma_f_before": before[1], "selected_sigma_f_after": after[1]}

    def grow(self, k: int, labelled: list[Atoms]) -> tuple[list[Atoms], list[Atoms]]:
        """Round ``k``'s train.extxyz and validation.extxyz: round k − 1's plus the labels."""
        d, previous = self.round_dir(k), self.round_dir(k - 1)
        if not (d / "train.extxyz").exists():
            new_train, new_validation = labelled, []
            if self.config.data.validation_file is None:
                new_train, new_validation = split_off(labelled,
                                                      self.config.data.validation_fraction, k)
            write_frames(d / "validation.extxyz",
                         read_structures(previous / "validation.extxyz") + new_validation)
            write_frames(d / "train.extxyz",
                         read_structures(previous / "train.extxyz") + new_train)
        return read_structures(d / "train.extxyz"), read_structures(d / "validation.extxyz")

    def fine_tune(self, k: int, model: ShallowEnsemble, model_path: Path) -> ShallowEnsemble:
        """Fine-tune the previous model on round ``k``'s data; α refitted on validation."""
        d = self.round_dir(k)
        target = d / "model.pt"
        if not target.exists():
            config = self.config.fine_tune.train_config(
                from_dict(ModelConfig, model.hyperparameters, "hyperparameters"),
                str(model_path), str(d / "train.extxyz"), str(d / "validation.extxyz"),
                str(d / "training"))
            train(config, resume=(d / "training" / "checkpoint.pt").exists())
            atomic_copy(d / "training" / "model.pt", target)
        return load_model(target)


# --- report -----------------------------------------------------------------------------------
def _describe(row: dict) -> str:
    parts = [f"{row.get('n_train', '-')} train frames"]
    if "candidate_rate" in row:
        parts.append(f"{row['n_candidates']} candidates in {row['md_steps']} steps "
                     f"(rate {row['candidate_rate']:.3f})")
    if "test_forces_rmse_meV_per_A" in row:
        parts.append(f"test F RMSE {row['test_forces_rmse_meV_per_A']:.1f} meV/Å")
    return ", ".join(parts)


_MESSAGES = {
    "converged": "the candidate rate fell below stopping.min_candidate_rate",
    "max_rounds": "stopping.max_rounds rounds done",
    "no_candidates": "the walkers saved no candidates",
    "nothing_selected": "no candidate differs from the training set",
    "reference_failed": "the reference failed on every selected frame",
}


def _finish(config: ActiveLearningConfig, output: Path, rows: list[dict], reason: str,
            model_path: Path) -> ALResult:
    """Tables, plot, final model copy and summary.yaml."""
    csv_path, md_path = rep.write_tables(rows, output)
    files = {"csv": csv_path.name, "markdown": md_path.name}
    if config.plot:
        from ..plots.active_learning import plot_rounds

        plot_rounds(rows, output / "rounds.png", config.stopping.min_candidate_rate)
        files["plot"] = "rounds.png"
    atomic_copy(model_path, output / "model.pt")
    last = rows[-1]
    message = f"round {last['round']}: {_MESSAGES[reason]}"
    if "candidate_rate" in last:
        message += f" (candidate rate {last['candidate_rate']:.4f})"
    result = ALResult(rows, reason, message, output / "model.pt", output, files)
    (output / "summary.yaml").write_text(yaml.safe_dump(result.to_dict(), sort_keys=False,
                                                        allow_unicode=True))
    return result
