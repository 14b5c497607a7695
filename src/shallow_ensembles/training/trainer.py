"""One training loop for every trained stage: epochs, optimiser, schedule, early stopping,
per-epoch CSV log, atomic checkpoint every epoch and resume; data parallel under ``torchrun``.

Checkpoint (``checkpoint.pt``, loaded with ``weights_only=True``): the stage index and its
completed epochs, model and optimiser states, best validation loss and model of the stage,
plateau state, elapsed time and the log history. A killed run resumed with ``resume=True``
continues from the last completed epoch and reproduces an uninterrupted run exactly (shuffling
is seeded per stage and epoch).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..data.batch import Graph, collate
from ..fileio import atomic_path
from ..metrics import nll_scale, rll
from ..model import ShallowEnsemble
from .config import LossConfig, StageConfig, TrainConfig
from .init import centre_features, solve_shared_last_layer
from .objectives import rescale_spread, stage_loss
from .stages import STAGES

LOG = logging.getLogger(__name__)


class _LossModule(nn.Module):
    """Wraps the model so that torch DDP sees the loss computation as ``forward``."""

    def __init__(self, model, kind, loss_cfg, method):
        super().__init__()
        self.model, self.kind, self.loss_cfg, self.method = model, kind, loss_cfg, method

    def forward(self, batch):
        return stage_loss(self.model, batch, self.kind, self.loss_cfg, training=True,
                          method=self.method)


def distributed_info() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise; initialises the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), world


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class Trainer:
    """Runs the trained stages of a protocol on fixed training and validation graphs."""

    LOG_FIELDS = ("stage", "kind", "epoch", "train_loss", "val_loss", "val_force_term",
                  "val_rmse_e_per_atom", "val_rmse_f", "val_rll_f", "lr", "seconds",
                  "cpu_seconds")
    """``train_log.csv`` columns. ``val_force_term``: the force part of the validation loss (the
    force NLL in force-nll stages); ``val_rll_f``: validation RLL of the force components, %,
    after the NLL-optimal α_F fitted on the same frames (force-nll stages only; else empty);
    ``seconds`` / ``cpu_seconds``: wall and process CPU time of the epoch, validation included."""

    def __init__(self, model: ShallowEnsemble, train: Sequence[Graph], validation: Sequence[Graph],
                 config: TrainConfig, run_dir: str | Path):
        self.model, self.train, self.validation = model, list(train), list(validation)
        self.config, self.cfg = config, config.training
        self.run_dir = Path(run_dir)
        self.rank, self.world = distributed_info()
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        self.history: list[dict] = []

    # --- checkpoint ------------------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        """Write the checkpoint (rank 0 only)."""
        if self.rank == 0:
            atomic_torch_save({**state, "model": self.model.state_dict(),
                               "history": self.history}, self.checkpoint_path)

    def load_checkpoint(self) -> dict | None:
        """The saved state, with the model restored; None if there is no checkpoint."""
        if not self.checkpoint_path.exists():
            return None
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.history = list(state.get("history", []))
        return state

    # --- one stage -----------------------------------------------------------------------------
    def _batches(self, stage_index: int, epoch: int) -> list[list[Graph]]:
        gen = torch.Generator().manual_seed(self.cfg.seed * 100003 + stage_index * 1009 + epoch)
        order = torch.randperm(len(self.train), generator=gen).tolist()
        size = self.cfg.batch_size
        step = size * self.world
        usable = len(order) if self.world == 1 else len(order) // step * step
        batches = []
        for start in range(0, usable, step):
            chunk = order[start:start + step][self.rank * size:(self.rank + 1) * size]
            if chunk:
                batches.append([self.train[i] for i in chunk])
        return batches

    def _lr(self, stage: StageConfig, epoch: int, plateau_factor: float) -> float:
        peak = stage.learning_rate or self.cfg.learning_rate
        if self.cfg.scheduler == "constant":
            return peak
        if self.cfg.scheduler == "plateau":
            return peak * plateau_factor
        warm = self.cfg.warmup_epochs if stage.warmup_epochs is None else stage.warmup_epochs
        if epoch < warm:
            return peak * (epoch + 1) / (warm + 1)
        progress = (epoch - warm) / max(1, stage.epochs - warm)
        low = self.cfg.min_lr_ratio
        return peak * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    def _parameters(self, stage: StageConfig) -> list[nn.Parameter]:
        for name, p in self.model.named_parameters():
            last_layer = name.startswith(("head.", "scale", "shift"))
            p.requires_grad_(stage.trainable == "all" or last_layer)
        return [p for p in self.model.parameters() if p.requires_grad]

    def validate(self, kind: str, loss_cfg: LossConfig) -> dict[str, float]:
        """Mean loss, its parts and RMSEs over the validation graphs; ``rll_f`` (calibrated on
        these frames) when the stage has member forces."""
        sums: dict[str, float] = {}
        n = 0
        residuals, sigmas = [], []
        for start in range(0, len(self.validation), self.cfg.batch_size):
            graphs = self.validation[start:start + self.cfg.batch_size]
            batch = collate(graphs, dtype=self.model.dtype).to(self.device)
            details: dict = {}
            loss, parts = stage_loss(self.model, batch, kind, loss_cfg, training=False,
                                     method=self.cfg.member_forces, details=details)
            for key, value in {"loss": float(loss.detach()), **parts}.items():
                sums[key] = sums.get(key, 0.0) + value * len(graphs)
            n += len(graphs)
            if details:
                residuals.append(details["force_residual"].double().cpu().numpy().ravel())
                sigmas.append(details["force_sigma"].double().cpu().numpy().ravel())
        result = {k: v / n for k, v in sums.items()}
        if residuals:
            r, sigma = np.concatenate(residuals), np.maximum(np.concatenate(sigmas), 1e-12)
            result["rll_f"] = rll(r, nll_scale(r, sigma) * sigma)
        return result

    @property
    def device(self):
        return next(self.model.parameters()).device

    def stage_settings(self, stage: StageConfig) -> tuple[LossConfig, int | None, str]:
        """The stage's loss config (energy weight and β overrides, the anchor's units resolved
        for the stage and the training frames), patience and monitored key."""
        loss = self.config.loss.for_stage(STAGES[stage.kind].member_forces,
                                          (len(g.numbers) for g in self.train))
        if stage.energy_weight is not None:
            loss = dataclasses.replace(loss, energy_weight=stage.energy_weight)
        if stage.energy_nll_beta is not None:
            loss = dataclasses.replace(loss, energy_nll_beta=stage.energy_nll_beta)
        patience = self.cfg.patience if stage.patience is None else stage.patience
        monitor = STAGES[stage.kind].monitor if stage.monitor == "auto" else stage.monitor
        return loss, patience, ("forces" if monitor == "force-nll" else "loss")

    def run_stage(self, stage_index: int, stage: StageConfig, state: dict | None) -> None:
        """Train one stage, resuming from ``state`` when it belongs to this stage.

        Every epoch starts by centring the last-layer features per species on the training
        frames (:func:`~shallow_ensembles.training.init.centre_features`, atoms weighted as
        ``stage.centring`` says), and the stage ends
        with the epoch of the best monitored validation loss, centred once more: the features
        drift within an epoch, and for large structures (whose per-species mean features vary
        little from frame to frame) even a small drift would give each member a constant
        offset. Centring never changes the mean prediction (the shared shift absorbs it). NLL
        stages then solve the shared last layer (mean head and shift) at the optimum of their
        loss with every σ fixed
        (:func:`~shallow_ensembles.training.init.solve_shared_last_layer`, a no-op where
        training reached it).
        """
        loss_cfg, patience, monitor = self.stage_settings(stage)
        if STAGES[stage.kind].uncertainty and loss_cfg.energy_anchor:
            LOG.info("stage %d: energy anchor %s (loss.energy_anchor_scale: %s)", stage_index,
                     loss_cfg.energy_anchor_scale, self.config.loss.energy_anchor_scale)
        params = self._parameters(stage)
        opt_cls = torch.optim.AdamW if self.cfg.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt_cls(params, lr=self.cfg.learning_rate, weight_decay=self.cfg.weight_decay)
        module = _LossModule(self.model, stage.kind, loss_cfg, self.cfg.member_forces)
        if self.world > 1:
            module = nn.parallel.DistributedDataParallel(module)
        progress = {"epoch": 0, "best": math.inf, "bad": 0, "elapsed": 0.0, "plateau": 1.0,
                    "plateau_best": math.inf, "plateau_bad": 0}
        best_model = None
        if state is not None and state.get("stage") == stage_index and state.get("progress"):
            optimizer.load_state_dict(state["optimizer"])
            progress.update(state["progress"])
            best_model = state.get("best_model")
        uncertainty = STAGES[stage.kind].uncertainty
        if progress["epoch"] == 0 and uncertainty:
            centre_features(self.model, self.train, weighting=stage.centring)
            sample = collate(self.train[:16], dtype=self.model.dtype).to(self.device)
            scale = rescale_spread(self.model, sample, stage.kind, loss_cfg)
            LOG.info("stage %d: member spread rescaled by %.3g before training", stage_index, scale)
        bar = None
        if self.cfg.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=stage.epochs, initial=progress["epoch"], leave=False,
                       desc=f"stage {stage_index} {stage.kind}", dynamic_ncols=True)
        try:
            while progress["epoch"] < stage.epochs:
                if stage.max_minutes is not None and progress["elapsed"] > 60 * stage.max_minutes:
                    break
                if patience is not None and progress["bad"] >= patience:
                    LOG.info("stage %d: no better validation %s for %d epochs; keeping epoch %d",
                             stage_index, monitor, patience, progress["epoch"] - patience)
                    break
                row = self._epoch(stage_index, stage, module, optimizer, progress, loss_cfg,
                                  monitor)
                if progress["bad"] == 0:
                    best_model = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                self.save_checkpoint({"stage": stage_index, "optimizer": optimizer.state_dict(),
                                      "progress": progress, "best_model": best_model})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(train=f"{row['train_loss']:.4g}", val=f"{row['val_loss']:.4g}",
                                    rmse_f=f"{row['val_rmse_f']:.4f}")
        finally:
            if bar is not None:
                bar.close()
        if best_model is not None:
            self.model.load_state_dict(best_model)
        for p in self.model.parameters():
            p.requires_grad_(True)
        moved = centre_features(self.model, self.train, weighting=stage.centring)
        LOG.info("stage %d: last-layer features re-centred on the training frames (largest "
                 "move %.3g; the mean prediction is unchanged, member offsets are removed)",
                 stage_index, moved)
        if uncertainty and loss_cfg.uncertainty_loss == "nll":
            delta, shift = solve_shared_last_layer(self.model, self.train, loss_cfg, stage.kind)
            LOG.info("stage %d: shared last layer moved to the optimum of the stage loss with "
                     "σ fixed (|δ w̄| = %.3g of |w̄| = %.3g; Δβ = %s; zero when training had "
                     "reached it)", stage_index, float(delta.norm()),
                     float(self.model.head.weight.detach().mean(0).norm()),
                     ", ".join(f"{z}: {d:+.3g}" for z, d in zip(self.model.species,
                                                               shift.tolist(), strict=True)))

    def _epoch(self, stage_index, stage, module, optimizer, progress, loss_cfg, monitor) -> dict:
        start, cpu_start = time.perf_counter(), time.process_time()
        epoch = progress["epoch"]
        lr = self._lr(stage, epoch, progress["plateau"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        moved = centre_features(self.model, self.train, weighting=stage.centring)
        LOG.debug("stage %d epoch %d: feature centre moved by %.3g", stage_index, epoch, moved)
        self.model.train()
        total, count = 0.0, 0
        for graphs in self._batches(stage_index, epoch):
            batch = collate(graphs, dtype=self.model.dtype).to(self.device)
            optimizer.zero_grad(set_to_none=True)
            loss, _ = module(batch)
            loss.backward()
            if self.cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(
                    [p for p in self.model.parameters() if p.requires_grad], self.cfg.grad_clip)
            optimizer.step()
            total, count = total + float(loss.detach()), count + 1
        self.model.eval()
        val = self.validate(stage.kind, loss_cfg)
        progress["epoch"] = epoch + 1
        progress["elapsed"] += time.perf_counter() - start
        if val[monitor] < progress["best"]:
            progress["best"], progress["bad"] = val[monitor], 0
        else:
            progress["bad"] += 1
        self._plateau(val["loss"], progress)
        row = {"stage": stage_index, "kind": stage.kind, "epoch": epoch + 1,
               "train_loss": total / max(count, 1), "val_loss": val["loss"],
               "val_force_term": val["forces"], "val_rmse_e_per_atom": val["rmse_e_per_atom"],
               "val_rmse_f": val["rmse_f"], "val_rll_f": val.get("rll_f", ""), "lr": lr,
               "seconds": time.perf_counter() - start,
               "cpu_seconds": time.process_time() - cpu_start}
        self.history.append(row)
        self.write_log()
        return row

    def _plateau(self, loss: float, progress: dict) -> None:
        if loss < progress["plateau_best"] - 1e-12:
            progress["plateau_best"], progress["plateau_bad"] = loss, 0
        else:
            progress["plateau_bad"] += 1
            if progress["plateau_bad"] > 5:
                progress["plateau"] *= 0.5
                progress["plateau_bad"] = 0

    def write_log(self) -> None:
        """Rewrite ``train_log.csv`` from the history (rank 0)."""
        if self.rank != 0:
            return
        with open(self.run_dir / "train_log.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.LOG_FIELDS)
            writer.writeheader()
            writer.writerows(self.history)
