"""Figures of a training run: loss curves per stage from ``train_log.csv`` (PNG)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def training_curves(log_csv: str | Path, output: str | Path) -> Path:
    """Training and validation loss per epoch, one panel per stage, from ``train_log.csv``."""
    with open(log_csv) as handle:
        rows = list(csv.DictReader(handle))
    stages = sorted({int(r["stage"]) for r in rows})
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(4.5 * max(1, len(stages)), 3.6),
                             squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=False):
        sel = [r for r in rows if int(r["stage"]) == stage]
        epochs = [int(r["epoch"]) for r in sel]
        ax.plot(epochs, [float(r["train_loss"]) for r in sel], label="train")
        ax.plot(epochs, [float(r["val_loss"]) for r in sel], label="validation")
        ax.set_title(f"stage {stage}: {sel[0]['kind']}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if all(float(r["train_loss"]) > 0 for r in sel):
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(output)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
