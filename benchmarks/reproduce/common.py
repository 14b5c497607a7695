"""What the reproduction and peer scripts share: systems, fixed splits, metrics and figures.

Every method (each protocol of this project and each peer) hands over its predictions on the
validation and test frames as one dictionary of numpy arrays (the keys of
``shallow_ensembles.calibration.predict_dataset``: ``energy_ensemble`` (S, M) eV, ``energy``,
``energy_sigma``, ``ref_energy``, ``n_atoms`` (S,), ``forces``, ``forces_sigma``, ``ref_forces``
(N, 3) eV/Å; σ with ddof=1 over the members). α_E and α_F are then fitted on the validation
predictions with this project's ``scale_factor`` (NLL-optimal) and every metric on the test
predictions comes from ``shallow_ensembles.evaluation.compute_metrics``: one metric code for all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "benchmarks" / "out" / "reproduce"
PRED_KEYS = ("energy_ensemble", "energy", "energy_sigma", "ref_energy", "n_atoms", "numbers",
             "forces", "forces_sigma", "ref_forces")


@dataclass(frozen=True)
class System:
    """One data set and the budget every protocol gets on it (1 torch thread).

    Every full training stage (MSE, energy NLL, force NLL from scratch, committee members) runs
    until its validation loss has not improved for ``patience`` epochs (the best epoch is kept),
    at most ``epochs`` epochs: the stated budget. Fine-tunes use the package's defaults
    (``shallow_ensembles.training.stages.FINE_TUNE``: early stopping on the validation force NLL).
    """

    name: str
    title: str
    files: tuple[str, ...]
    n_train: int
    n_validation: int
    n_test: int
    epochs: int
    """Most epochs of a full training stage (the budget cap)."""
    patience: int = 20
    """Epochs without validation improvement that end a full stage (converged)."""
    batch_size: int = 4
    learning_rate: float = 2e-3

    @property
    def fine_tune_epochs(self) -> int:
        """Most epochs of the two-step fine-tune (the package default)."""
        from shallow_ensembles.training.stages import FINE_TUNE

        return FINE_TUNE["epochs"]


SYSTEMS = {s.name: s for s in (
    System("water", "liquid water, 64 H2O (192 atoms), PBC",
           ("water_64H2O_deepmd_example.extxyz",), 60, 20, 320, epochs=120, patience=15),
    System("batio3", "BaTiO3 3×3×3 supercell (135 atoms), PBC",
           ("batio3_allegropol_pbe.extxyz",), 40, 10, 23, epochs=120, patience=15),
    System("carbon", "amorphous (64 atoms) and crystalline (4 atoms) carbon, PBC",
           ("carbon_gap17_amorphous_reduced_20.extxyz", "carbon_gap17_reduced_100.extxyz"),
           60, 20, 40, epochs=300),
    System("ethanol", "ethanol molecule (9 atoms), rMD17 geometries",
           ("ethanol_rmd17_train_pbe.extxyz",), 200, 50, 200, epochs=300, batch_size=8),
)}


def prepare_data(system: System, results: Path = RESULTS, seed: int = 0) -> dict[str, Path]:
    """Write the fixed split of ``system`` as three extxyz files (and ``split.json``).

    The files of a multi-file system are concatenated in order before splitting. The same
    files feed every protocol and every peer. Returns {"train", "validation", "test"} → path.
    The split draws train, validation and test from the front of one seeded permutation, so a
    larger ``n_test`` keeps the training and validation frames (and every trained model): the
    files are rewritten when the saved split differs, and :func:`stale` predictions redone.
    """
    from ase.io import read, write

    from shallow_ensembles.data.split import load_split, make_split, save_split

    folder = OUT / system.name / "data"
    paths = {k: folder / f"{k}.extxyz" for k in ("train", "validation", "test")}
    saved = load_split(folder / "split.json") if (folder / "split.json").exists() else None
    sizes = (system.n_train, system.n_validation, system.n_test)
    if saved is not None and all(p.exists() for p in paths.values()) and sizes == (
            len(saved.train), len(saved.validation), len(saved.test)):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    frames = [a for f in system.files for a in read(SHARED_DATA / f, ":")]
    split = make_split(len(frames), *sizes, seed)
    if saved is not None and (saved.train, saved.validation) != (split.train, split.validation):
        raise RuntimeError(f"{folder}: the new split changes the training or validation "
                           "frames; rerun with --fresh")
    save_split(split, folder / "split.json")
    results.mkdir(parents=True, exist_ok=True)
    save_split(split, results / f"{system.name}_split.json")
    for key, path in paths.items():
        write(path, [frames[i] for i in getattr(split, key)], format="extxyz")
    return paths


def save_predictions(path: Path, pred: dict[str, np.ndarray]) -> None:
    """Write one prediction dictionary (see the module docstring) as ``.npz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: pred[k] for k in PRED_KEYS if k in pred})


def stale(path: Path, n_frames: int) -> bool:
    """Whether the predictions ``path`` are missing or cover another number of structures
    than ``n_frames`` (the split's, e.g. ``System.n_test``)."""
    if not path.exists():
        return True
    with np.load(path) as data:
        return len(data["energy"]) != n_frames


def load_predictions(path: Path) -> dict[str, np.ndarray]:
    """Read a ``.npz`` written by :func:`save_predictions` (or a peer script)."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def committee(preds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Predictions of a committee whose members are the mean predictions of ``preds``."""
    energies = np.stack([p["energy"] for p in preds], axis=1)
    forces = np.stack([p["forces"] for p in preds])
    out = {k: preds[0][k] for k in ("ref_energy", "n_atoms", "numbers", "ref_forces")}
    out.update(energy_ensemble=energies, energy=energies.mean(1),
               energy_sigma=energies.std(1, ddof=1), forces=forces.mean(0),
               forces_sigma=forces.std(0, ddof=1))
    return out


def score(validation: dict, test: dict) -> dict[str, float]:
    """α fitted on ``validation``; test metrics raw and calibrated (one row of a table)."""
    from shallow_ensembles.calibration import scale_factor
    from shallow_ensembles.evaluation import compute_metrics
    from shallow_ensembles.metrics import spearman

    alpha_e = scale_factor(validation["ref_energy"] - validation["energy"],
                           validation["energy_sigma"])
    alpha_f = scale_factor(validation["ref_forces"] - validation["forces"],
                           validation["forces_sigma"])
    m = compute_metrics(test, alpha_e, alpha_f)
    cal, raw = m["calibrated"], m["raw"]
    return {
        "rmse_e_meV_atom": 1000 * cal["energy_per_atom"]["rmse"],
        "rmse_f_meV_A": 1000 * cal["forces"]["rmse"],
        "rll_e_raw": raw["energy"]["rll"], "rll_e_cal": cal["energy"]["rll"],
        "rll_f_raw": raw["forces"]["rll"], "rll_f_cal": cal["forces"]["rll"],
        "nll_e_cal": cal["energy"]["nll"], "nll_f_cal": cal["forces"]["nll"],
        "miscal_e_cal": cal["energy"]["miscalibration_area"],
        "miscal_f_cal": cal["forces"]["miscalibration_area"],
        "alpha_e": alpha_e, "alpha_f": alpha_f,
        "offset_share": m["energy_offset_share"],
        "spearman_e": spearman(np.abs(test["ref_energy"] - test["energy"]), test["energy_sigma"]),
        "sigma_e_cv": float(np.std(test["energy_sigma"]) / np.mean(test["energy_sigma"])),
    }


COLUMNS = (
    ("time (CPU s)", "time_s", ".0f"), ("RMSE_E (meV/atom)", "rmse_e_meV_atom", ".2f"),
    ("RMSE_F (meV/Å)", "rmse_f_meV_A", ".1f"), ("RLL_E raw", "rll_e_raw", ".1f"),
    ("RLL_E cal", "rll_e_cal", ".1f"), ("RLL_F raw", "rll_f_raw", ".1f"),
    ("RLL_F cal", "rll_f_cal", ".1f"), ("NLL_E cal", "nll_e_cal", ".2f"),
    ("NLL_F cal", "nll_f_cal", ".2f"), ("miscal. E", "miscal_e_cal", ".3f"),
    ("miscal. F", "miscal_f_cal", ".3f"), ("α_E", "alpha_e", ".3g"), ("α_F", "alpha_f", ".3g"),
    ("offset share E", "offset_share", ".3f"), ("Spearman E", "spearman_e", ".2f"),
    ("epochs", "epochs", "d"),
)


def markdown_table(rows: dict[str, dict], columns=COLUMNS) -> str:
    """A Markdown table with one row per method (missing values print as –)."""
    lines = ["| method | " + " | ".join(c[0] for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for name, row in rows.items():
        cells = [format(row[key], fmt) if row.get(key) is not None else "–"
                 for _, key, fmt in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figures(system: System, rows: dict[str, dict], tests: dict[str, dict],
            results: Path = RESULTS) -> list[Path]:
    """RLL_F (calibrated and raw) against training time, and force calibration curves (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shallow_ensembles.metrics import calibration_curve

    results.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (name, row) in enumerate(rows.items()):
        color = f"C{i % 10}"
        ax.scatter(row["time_s"], row["rll_f_cal"], color=color, s=40, label=name)
        ax.scatter(row["time_s"], row["rll_f_raw"], facecolors="none", edgecolors=color, s=40)
        ax.plot([row["time_s"]] * 2, [row["rll_f_raw"], row["rll_f_cal"]], color=color, lw=0.8)
    ax.axhline(0, color="k", lw=0.6)
    values = [r[k] for r in rows.values() for k in ("rll_f_raw", "rll_f_cal")]
    ax.set(xscale="log", xlabel="training time (CPU s, 1 thread)",
           ylabel="RLL_F (%): filled calibrated, open raw", title=f"{system.name}: RLL_F vs cost",
           ylim=(max(min(values) - 5, -150), max(values) + 10))
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    first = results / f"{system.name}_rll_vs_time.png"
    fig.savefig(first, dpi=130)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    for i, (name, test) in enumerate(tests.items()):
        residual = (test["ref_forces"] - test["forces"]).ravel()
        expected, observed = calibration_curve(residual,
                                               rows[name]["alpha_f"] * test["forces_sigma"].ravel())
        ax.plot(expected, observed, color=f"C{i % 10}", label=name)
    ax.set(xlabel="expected fraction in interval", ylabel="observed fraction",
           title=f"{system.name}: force calibration (test, α_F)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    second = results / f"{system.name}_calibration.png"
    fig.savefig(second, dpi=130)
    plt.close(fig)
    return [first, second]


def findings(rows: dict[str, dict]) -> list[dict]:
    """The paper's three findings checked on one system's rows (``run.py`` names).

    Each entry: ``finding`` (1–3), ``claim``, ``holds`` (True, False, or None when a protocol
    it compares did not fit the data: see :func:`unfitted`), ``detail`` (the numbers).
    """
    out = _findings(rows)
    bad = unfitted(rows)
    for f in out:
        failed = [n for n in f.pop("compares") if n in bad]
        if failed:
            f["holds"] = None
            f["detail"] += f"; but {', '.join(failed)} did not fit the data ({bad[failed[0]]})"
    return out


def unfitted(rows: dict[str, dict]) -> dict[str, str]:
    """Protocols whose test RMSE is far worse than the single MSE model's (10× in energy or
    2× in forces): their uncertainty metrics say nothing about calibration. name → reason."""
    ref = rows["mse"]
    out = {}
    for name, row in rows.items():
        reasons = []
        if row["rmse_e_meV_atom"] > 10 * ref["rmse_e_meV_atom"]:
            reasons.append(f"RMSE_E {row['rmse_e_meV_atom']:.1f} vs "
                           f"{ref['rmse_e_meV_atom']:.1f} meV/atom")
        if row["rmse_f_meV_A"] > 2 * ref["rmse_f_meV_A"]:
            reasons.append(f"RMSE_F {row['rmse_f_meV_A']:.0f} vs {ref['rmse_f_meV_A']:.0f} meV/Å")
        if reasons:
            out[name] = " and ".join(reasons) + " for MSE"
    return out


def _findings(rows: dict[str, dict]) -> list[dict]:
    """:func:`findings` before the fit check; ``compares`` names the protocols it rests on."""
    s, e = rows["force-nll-scratch"], rows["energy-nll"]
    others = {k: rows[k]["rll_f_cal"] for k in ("random-heads", "llpr", "llpr-force-rows",
                                                "subsample", "mse-committee") if k in rows}
    best = max(others, key=others.get)
    margin = s["rll_f_cal"] - others[best]
    out = [dict(finding=1, claim="NLL training calibrates better than random heads, LLPR "
                "(with or without force rows), subsampling or an MSE committee", holds=margin > 0,
                compares=("force-nll-scratch",),
                detail=f"RLL_F cal {s['rll_f_cal']:.1f} (force NLL from scratch) vs "
                       f"{others[best]:.1f} for the best of the others ({best}): {margin:+.1f}")]
    gap = s["rll_f_cal"] - e["rll_f_cal"]
    out.append(dict(finding=2, claim="energy-only objectives leave σ_F miscalibrated",
                    holds=gap > 5, compares=("force-nll-scratch", "energy-nll"),
                    detail=f"RLL_F cal {e['rll_f_cal']:.1f} (energy NLL) vs {s['rll_f_cal']:.1f}"
                           f" (force NLL), {-gap:+.1f}; miscalibration area F "
                           f"{e['miscal_f_cal']:.3f} vs {s['miscal_f_cal']:.3f}; α_F "
                           f"{e['alpha_f']:.2f} vs {s['alpha_f']:.2f}"))
    for name in ("two-step-llpr", "two-step-energy-nll"):
        r = rows[name]
        d = r["rll_f_cal"] - s["rll_f_cal"]
        own, total = r.get("ttt_own_s"), r.get("ttt_total_s")
        reached = own is not None
        ref = s.get("ttt_own_s") or s["time_s"]
        timing = (f"reaches 95 % of scratch's final validation RLL_F after {own:.0f} CPU s of "
                  f"fine-tune = {own / ref:.2f} × scratch's time to the same target "
                  f"({total / ref:.2f} × with its stage 1)" if reached else
                  "never reaches 95 % of scratch's final validation RLL_F")
        accurate, ref_accurate = r.get("ttt_accurate_own_s"), s.get("ttt_accurate_own_s")
        if accurate is not None and ref_accurate:
            timing += (f"; at scratch's accuracy {accurate:.0f} CPU s = "
                       f"{accurate / ref_accurate:.2f} × scratch's "
                       f"({r['ttt_accurate_total_s'] / ref_accurate:.2f} × with stage 1)")
        elif "ttt_accurate_own_s" in r:
            timing += "; never at scratch's accuracy"
        out.append(dict(finding=3, claim=f"{name} reaches scratch calibration at ≤ 20 % of "
                        "scratch's time (time to 95 % of scratch's final validation RLL_F)",
                        holds=reached and own / ref <= 0.2, compares=("force-nll-scratch", name),
                        detail=f"{timing}; test RLL_F cal {d:+.1f} vs scratch"))
    return out


def learning_curve(log: Path) -> list[dict]:
    """Epochs of the force-NLL stage in a ``train_log.csv``: cumulative CPU s and validation
    RLL_F (calibrated on the validation frames), and whether the epoch was kept (the best
    monitored validation force NLL)."""
    import csv

    with open(log) as handle:
        rows = [r for r in csv.DictReader(handle) if r["kind"] == "force-nll"]
    cpu, curve = 0.0, []
    for r in rows:
        cpu += float(r["cpu_seconds"])
        curve.append({"cpu_s": cpu, "rll_f": float(r["val_rll_f"]),
                      "force_nll": float(r["val_force_term"]), "rmse_f": float(r["val_rmse_f"])})
    if curve:
        best = min(range(len(curve)), key=lambda k: curve[k]["force_nll"])
        curve[best]["kept"] = True
    return curve


def time_to_target(curve: list[dict], target: float, rmse_cap: float = float("inf")
                   ) -> float | None:
    """CPU s of the first epoch whose validation RLL_F reaches ``target`` (and whose validation
    force RMSE is at most ``rmse_cap``, eV/Å); None if none does."""
    return next((c["cpu_s"] for c in curve if c["rll_f"] >= target and c["rmse_f"] <= rmse_cap),
                None)


def finding_line(f: dict) -> str:
    """One Markdown sentence for an entry of :func:`findings`."""
    verdict = {True: "holds", False: "does not hold", None: "cannot be tested"}[f["holds"]]
    return f"**Finding {f['finding']}** ({f['claim']}): {verdict} — {f['detail']}."


def write_report(stem: str, text: str, data, results: Path = RESULTS) -> None:
    """Write ``<stem>.md`` (``text``) and ``<stem>.json`` (``data``) into ``results``."""
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stem}.md").write_text(text)
    (results / f"{stem}.json").write_text(json.dumps(data, indent=1, default=str))


def load_json(path: Path) -> dict:
    """The JSON object in ``path``, or {} when it does not exist yet."""
    return json.loads(path.read_text()) if path.exists() else {}
