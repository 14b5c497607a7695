"""This project next to apax and metatrain on one system: same split, same metric code.

    python benchmarks/reproduce/peers.py ethanol     # after run.py ethanol (it reuses our models)

Makes one virtual environment per peer (``benchmarks/peers/.venv-<peer>``, pinned in
``benchmarks/peers/requirements-<peer>.txt``; metatrain's gets the local ``torch==2.13.0`` first)
and trains each peer with its own script (apax: GMNN shallow ensemble with energy + force NLL;
metatrain: SOAP-BPNN, then its LLPR ensemble) twice on the system's split:

- **equal CPU**: as many epochs as make its training CPU time equal to that of our
  ``force-nll-scratch`` run (``OUT/<system>/times.json``). A peer's cost is a line, setup + CPU s
  per epoch, fitted to its runs: two short probes (``PROBE_EPOCHS``), its converged run, and a
  first equal-CPU run when that missed by more than ``TOLERANCE`` (then it is trained again);
- **converged**: the epochs that ``CONVERGED_CPU_S`` buys (the stated budget), with early
  stopping after ``System.patience`` epochs without a lower validation loss where the peer's
  trainer has it (apax); metatrain's cannot stop early and runs its cosine schedule to the end.

Every run keeps its best validation epoch (``MONITOR``). Everything is scored with
``common.score`` (α from validation, metrics on test), next to our ``force-nll-scratch``,
``two-step-llpr`` and ``llpr`` rows; each package's ASE calculator (energy + forces + σ_E,
and with member forces) and Langevin MD are timed once, on the first test frame, with our
two-step model and each peer's converged model. One thread per process. The peers' runs go to
``OUT/peers/<system>/`` (a fresh ``run.py`` leaves them). Writes
``benchmarks/results/peers_<system>.md``/.json and
``peers_<system>_{rll_vs_time,calibration,convergence}.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import venv
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import (
    OUT,
    RESULTS,
    ROOT,
    SYSTEMS,
    System,
    figures,
    load_json,
    load_predictions,
    markdown_table,
    prepare_data,
    score,
    unfitted,
    write_report,
)

PEERS_DIR = ROOT / "benchmarks" / "peers"
PEERS = ("apax", "metatrain")
EARLY_STOPPING = {"apax"}
"""Peers whose training script can stop on validation patience (``--patience``)."""
PROBE_EPOCHS = (2, 8)
"""Epochs of the two short runs that measure a peer's setup and per-epoch CPU cost."""
CONVERGED_CPU_S = 600.0
"""CPU budget of a peer's converged run (10 CPU minutes)."""
TOLERANCE = 0.15
"""Largest relative difference of a peer's equal-CPU run from our CPU time."""
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "JAX_PLATFORMS": "cpu",
              "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
OURS = {"force-nll-scratch": "shallow-ensembles force-NLL from scratch",
        "two-step-llpr": "shallow-ensembles two-step (LLPR → force NLL)",
        "llpr": "shallow-ensembles LLPR (MSE + last-layer Laplace)"}
TRAINED = {"force-nll-scratch": "force-nll-scratch", "two-step-llpr": "two-step-llpr",
           "llpr": "mse"}
"""The run whose training log and CPU time count as each of our protocols' own."""
STAGE_1 = {"two-step-llpr": "mse"}
"""The trained stage a protocol stands on (its epochs are shown before the ``+``)."""
MONITOR = {"apax": "validation loss (E + F NLL)",
           "metatrain": "validation RMSE_E × RMSE_F (rmse_prod)"}
"""What each peer's trainer keeps its best epoch by (:func:`validation_curve`)."""
TITLES = {"apax": "apax GMNN shallow ensemble, E + F NLL",
          "metatrain": "metatrain SOAP-BPNN + LLPR"}
COLUMNS = (
    ("epochs", "epochs_text", ""), ("CPU s/epoch", "s_per_epoch", ".2f"),
    ("train time (CPU s)", "time_s", ".0f"),
    ("RMSE_E (meV/atom)", "rmse_e_meV_atom", ".2f"), ("RMSE_F (meV/Å)", "rmse_f_meV_A", ".1f"),
    ("RLL_E cal", "rll_e_cal", ".1f"), ("RLL_F raw", "rll_f_raw", ".1f"),
    ("RLL_F cal", "rll_f_cal", ".1f"), ("miscal. F", "miscal_f_cal", ".3f"),
    ("ms/call E+F+σ_E", "ms_call", ".1f"), ("ms/call + member F", "ms_call_members", ".1f"),
    ("MD steps/s", "md_steps_per_s", ".1f"),
)
METRICS = (("RMSE_E", "rmse_e_meV_atom", min, ".2f", False),
           ("RMSE_F", "rmse_f_meV_A", min, ".1f", False),
           ("RLL_E cal", "rll_e_cal", max, ".1f", True),
           ("RLL_F cal", "rll_f_cal", max, ".1f", True))
"""(name, row key, which is better, format, whether it judges the uncertainty) of the metrics
the verdict compares; an uncertainty metric only counts for models that fit the data."""


def peer_python(peer: str) -> Path:
    """The peer's virtual environment's python, created and installed on first use."""
    folder = PEERS_DIR / f".venv-{peer}"
    python, marker = folder / "bin" / "python", folder / ".installed"
    if marker.exists():
        return python
    print(f"creating {folder} (one time; packages from the registry)", flush=True)
    venv.create(folder, with_pip=True, clear=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    if peer == "metatrain":  # the local CPU build; any other torch would pull CUDA packages
        subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["-r", str(PEERS_DIR / f"requirements-{peer}.txt")], check=True)
    marker.write_text("ok\n")
    return python


def call(python: Path, script: str, *args: str) -> dict:
    """Run a peer script; returns the JSON object of its last stdout line ({} if none)."""
    env = {**os.environ, **ONE_THREAD}
    command = [str(python), str(PEERS_DIR / script), *args]
    done = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def timings(python: Path, script: str, model: Path, structure: Path, steps: int,
            repeat: int = 20) -> dict:
    """ms per ASE call (median of ``repeat``) without and with member forces, and MD steps
    per second over ``steps`` steps."""
    base = ["--model", str(model), "--structure", str(structure)]
    infer = [*base, "--repeat", str(repeat)]
    return {"ms_call": call(python, script, "infer", *infer)["ms_per_call"],
            "ms_call_members": call(python, script, "infer", *infer,
                                    "--member-forces")["ms_per_call"],
            "md_steps_per_s": call(python, script, "md", *base, "--steps",
                                   str(steps))["steps_per_s"]}


def peer_data(system: System, data: dict[str, Path]) -> dict[str, Path]:
    """Copies of the split's files beside the peers' runs (``OUT/peers/<system>/data``), so
    that a fresh ``run.py`` (which removes ``OUT/<system>``) cannot pull them away mid-run."""
    folder = OUT / "peers" / system.name / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for path in data.values():
        if not (folder / path.name).exists():
            shutil.copy(path, folder / path.name)
    return {key: folder / path.name for key, path in data.items()}


def run_peer(peer: str, system: System, data: dict, epochs: int, name: str = "",
             patience: int | None = None) -> Path:
    """Train ``peer`` for at most ``epochs`` on the system's split unless done (``patience``:
    stop after that many epochs without a lower validation loss); returns its output folder
    (``OUT/peers/<name or system>/<peer>-<epochs>ep[-patience<n>]``)."""
    run = f"{peer}-{epochs}ep" + (f"-patience{patience}" if patience else "")
    folder = OUT / "peers" / (name or system.name) / run
    if not (folder / "pred_test.npz").exists():
        stop = ["--patience", str(patience)] if patience else []
        print(f"training {run}", flush=True)
        call(peer_python(peer), f"{peer}_peer.py", "train", "--train", str(data["train"]),
             "--validation", str(data["validation"]), "--test", str(data["test"]),
             "--out", str(folder), "--epochs", str(epochs), "--members", "8",
             "--batch-size", str(system.batch_size), *stop)
    return folder


def peer_run(peer: str, system: System, data: dict, epochs: int,
             patience: int | None = None) -> dict:
    """:func:`run_peer`, then its ``train.json`` with ``folder`` and ``time_s`` (CPU s)."""
    folder = run_peer(peer, system, data, epochs, patience=patience)
    info = load_json(folder / "train.json")
    return {**info, "folder": folder, "time_s": info.get("cpu_s", info["wall_s"])}


def epochs_for(cpu_s: float, runs: list[dict]) -> int:
    """Epochs whose training costs ``cpu_s`` on the least-squares line (setup + CPU s per
    epoch) through the ``runs``' (epochs, CPU s)."""
    per_epoch, setup = np.polyfit([r["epochs"] for r in runs], [r["time_s"] for r in runs], 1)
    return max(1, round((cpu_s - setup) / per_epoch))


def probes_and_converged(peer: str, system: System, data: dict) -> list[dict]:
    """The peer's probe runs and, last, its converged run (``CONVERGED_CPU_S``, with early
    stopping where the peer has it)."""
    runs = [peer_run(peer, system, data, e) for e in PROBE_EPOCHS]
    patience = system.patience if peer in EARLY_STOPPING else None
    return [*runs, peer_run(peer, system, data, epochs_for(CONVERGED_CPU_S, runs), patience)]


def train_peer(peer: str, system: System, data: dict, target_s: float) -> dict[str, dict]:
    """The peer's equal-CPU run (CPU time within ``TOLERANCE`` of ``target_s`` where one
    correction allows) and its converged run: {"equal CPU": info, "converged": info}."""
    runs = probes_and_converged(peer, system, data)
    equal = peer_run(peer, system, data, epochs_for(target_s, runs))
    if abs(equal["time_s"] / target_s - 1) > TOLERANCE:
        runs.append(equal)
        equal = peer_run(peer, system, data, epochs_for(target_s, runs))
    return {"equal CPU": equal, "converged": runs[len(PROBE_EPOCHS)]}


def validation_curve(peer: str, folder: Path) -> list[float]:
    """Per epoch, the validation quantity by which the peer keeps its best epoch (``MONITOR``):
    apax's ``val_loss`` (``log.csv``), metatrain's product of the validation RMSEs
    (``rmse_prod``, from the SOAP-BPNN stage's ``train.csv``)."""
    if peer == "apax":
        with open(folder / "models" / "apax" / "log.csv") as handle:
            return [float(row["val_loss"]) for row in csv.DictReader(handle)]
    log = sorted(folder.glob("soap_bpnn/outputs/*/*/train.csv"))[-1]
    with open(log) as handle:
        rows = list(csv.DictReader(handle))[1:]  # the first row holds the units
    keys = [k for k in rows[0] if k.startswith("validation") and "RMSE" in k]
    return [float(np.prod([float(row[k]) for k in keys])) for row in rows]


def peer_rows(peer: str, runs: dict[str, dict], data: dict,
              steps: int) -> tuple[dict[str, dict], dict[str, dict]]:
    """Table rows of the peer's runs (calculator timings of its converged model on both) and
    their test predictions, by row name."""
    times = timings(peer_python(peer), f"{peer}_peer.py", runs["converged"]["folder"],
                    data["test"], steps)
    rows, tests = {}, {}
    for kind, info in runs.items():
        name = f"{TITLES[peer]} ({info.get('version', '?')}), {kind}"
        validation, tests[name] = (load_predictions(info["folder"] / f"pred_{s}.npz")
                                   for s in ("validation", "test"))
        curve = validation_curve(peer, info["folder"])
        rows[name] = {**score(validation, tests[name]), **times, "kind": kind, "peer": peer,
                      "time_s": info["time_s"], "epochs": info["epochs"],
                      "epochs_text": str(info["epochs"]), "version": info.get("version"),
                      "max_epochs": info.get("max_epochs", info["epochs"]),
                      "s_per_epoch": info["time_s"] / info["epochs"],
                      "best_epoch": 1 + int(np.argmin(curve)), "folder": info["folder"]}
    return rows, tests


def epochs_run(system: System, name: str) -> int:
    """Epochs in a run's ``train_log.csv`` (lines − 1)."""
    log = OUT / system.name / name / "train_log.csv"
    return len(log.read_text().splitlines()) - 1


def our_rows(system: System, steps: int) -> tuple[dict[str, dict], dict[str, dict]]:
    """Rows of this project's protocols from ``run.py``'s outputs (epochs as trained, CPU s per
    epoch of the run that trained them), with calculator timings; and their test predictions."""
    folder = OUT / system.name
    runs, results = load_json(folder / "times.json"), load_json(RESULTS / f"{system.name}.json")
    if "two-step-llpr" not in results:
        sys.exit(f"no results of run.py for {system.name} yet: run "
                 f"`python benchmarks/reproduce/run.py {system.name}` first")
    times = timings(Path(sys.executable), "ours_peer.py", folder / "two-step-llpr" / "model.pt",
                    folder / "data" / "test.extxyz", steps)
    rows, tests = {}, {}
    for name, title in OURS.items():
        epochs = epochs_run(system, TRAINED[name])
        stage_1 = STAGE_1.get(name)
        text = f"{epochs_run(system, stage_1)} + {epochs}" if stage_1 else str(epochs)
        rows[title] = {**results[name], **times, "epochs": epochs, "epochs_text": text,
                       "s_per_epoch": runs[TRAINED[name]]["cpu_s"] / epochs}
        tests[title] = load_predictions(folder / name / "pred_test.npz")
    return rows, tests


def ahead(title: str, rows: dict[str, dict], ours: set[str], reference: dict) -> str:
    """One Markdown sentence: the best of ``rows`` on each metric of ``METRICS`` (its value,
    then the others'), and on how many of them one of ``ours`` is ahead. Rows that did not fit
    the data (``common.unfitted`` against our MSE model's row ``reference``) are left out of
    the uncertainty metrics."""
    bad = unfitted({"mse": reference, **rows})
    parts, mine = [], []
    for label, key, better, fmt, uncertainty in METRICS:
        names = [n for n in rows if not (uncertainty and n in bad)]
        best = better(names, key=lambda name, key=key: rows[name][key])
        others = ", ".join(f"{rows[n][key]:{fmt}}" for n in names if n != best)
        parts.append(f"{label}: {best} ({rows[best][key]:{fmt}}; others {others})")
        mine += [label] if best in ours else []
    skipped = (f" Left out of the RLL metrics: {', '.join(bad)}, which did not fit the data "
               "(test RMSE above 10× in energy or 2× in forces that of our MSE model: "
               f"{reference['rmse_e_meV_atom']:.2f} meV/atom, {reference['rmse_f_meV_A']:.1f} "
               "meV/Å)." if bad else "")
    return (f"**{title}** best per metric: " + "; ".join(parts)
            + f". This project is ahead on {len(mine)} of {len(METRICS)} metrics"
            + (f" ({', '.join(mine)})." if mine else ".") + skipped)


def verdict(system: System, ours: dict[str, dict], peers: dict[str, dict],
            target_s: float) -> list[str]:
    """Markdown sentences: who is ahead at equal CPU time and when converged."""
    reference = load_json(RESULTS / f"{system.name}.json")["mse"]
    scratch = OURS["force-nll-scratch"]
    equal = {scratch: ours[scratch],
             **{n: r for n, r in peers.items() if r["kind"] == "equal CPU"}}
    converged = {**ours, **{n: r for n, r in peers.items() if r["kind"] == "converged"}}
    return [ahead(f"At equal CPU time ({target_s:.0f} CPU s: our force NLL from scratch and "
                  "each peer's equal-CPU run)", equal, {scratch}, reference), "",
            ahead("Converged (our three rows and each peer's converged run)", converged,
                  set(ours), reference), ""]


def budget_lines(system: System, peers: dict[str, dict], target_s: float) -> list[str]:
    """Markdown on how each peer's two runs were budgeted and where they stopped."""
    lines = []
    for name, row in peers.items():
        if row["kind"] == "equal CPU":
            lines.append(f"- {name}: {row['epochs']} epochs, {row['time_s']:.0f} CPU s "
                         f"({100 * (row['time_s'] / target_s - 1):+.0f} % vs ours), best "
                         f"{MONITOR[row['peer']]} at epoch {row['best_epoch']}.")
            continue
        stop = (f"early stopping after {system.patience} epochs without a lower validation "
                "loss" if row["peer"] in EARLY_STOPPING else
                "metatrain cannot stop early: fixed epochs, cosine schedule to zero")
        lines.append(f"- {name}: {row['epochs']} of at most {row['max_epochs']} epochs ({stop}), "
                     f"{row['time_s']:.0f} CPU s, "
                     f"best {MONITOR[row['peer']]} at epoch {row['best_epoch']}.")
    return lines


def convergence_figure(system: System, peers: dict[str, dict]) -> Path:
    """Each peer's monitored validation quantity per epoch (``MONITOR``), both runs, one
    panel per peer; the first epochs' transient is cut off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({row["peer"] for row in peers.values()})
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.2), squeeze=False)
    for ax, peer in zip(axes[0], names, strict=True):
        tops, bottoms = [], []
        for row in (row for row in peers.values() if row["peer"] == peer):
            curve = np.asarray(validation_curve(peer, Path(row["folder"])))
            ax.plot(np.arange(1, len(curve) + 1), curve, label=row["kind"])
            tops.append(np.quantile(curve, 0.9))
            bottoms.append(curve.min())
        pad = 0.05 * (max(tops) - min(bottoms))
        ax.set(xlabel="epoch", ylabel=MONITOR[peer], title=f"{system.name}: {peer}",
               ylim=(min(bottoms) - pad, max(tops) + pad))
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = RESULTS / f"peers_{system.name}_convergence.png"
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def report(system: System, rows: dict[str, dict], peers: dict[str, dict],
           tests: dict[str, dict], target_s: float) -> str:
    """Write ``peers_<system>.md``/.json and the figures; returns the Markdown."""
    figs = figures(replace(system, name=f"peers_{system.name}"), rows, tests, RESULTS)
    figs.append(convergence_figure(system, peers))
    text = "\n".join([
        f"# {system.name}: this project, apax and metatrain",
        "",
        f"Same split as `{system.name}.md` ({system.n_train}/{system.n_validation}/"
        f"{system.n_test} frames), batch {system.batch_size}, 8 members, α fitted on validation "
        "and every metric from this project's code on the test frames. Our full stages run "
        f"until {system.patience} epochs without a better validation loss (at most "
        f"{system.epochs}); epochs as trained (two-step: MSE stage + fine-tune; LLPR: its MSE "
        "model). Each peer is trained twice: at **equal CPU** time to our force-NLL-from-scratch "
        f"run ({target_s:.0f} CPU s; epochs from the peer's measured setup + CPU s per epoch) "
        f"and **converged** (a budget of {CONVERGED_CPU_S:.0f} CPU s turned into epochs the same "
        "way). Training time: CPU seconds of the training process(es) (one thread; setup and "
        "JIT compilation included; metatrain: both `mtt train` processes, SOAP-BPNN and LLPR; "
        "our two-step and LLPR rows include their stage 1). Every run keeps its best validation "
        "epoch (ours: validation loss; apax: validation loss; metatrain: product of the "
        "validation RMSEs). Calculator timings: 1 thread per process, median ms per ASE call "
        "on the first test frame (new positions each call), Langevin MD at 300 K with σ_E every "
        "step; measured once per package, with our two-step model and each peer's converged "
        "model, and shown on every row of that package (same architecture).",
        "",
        markdown_table(rows, COLUMNS),
        "",
        *verdict(system, {n: r for n, r in rows.items() if n not in peers}, peers,
                 target_s),
        "Peer runs:",
        "",
        *budget_lines(system, peers, target_s),
        "",
        *[f"![{f.stem}]({f.name})" for f in figs],
        "",
        f"Command: `python benchmarks/reproduce/peers.py {system.name}`",
        ""])
    write_report(f"peers_{system.name}", text, rows)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=sorted(SYSTEMS))
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--md-steps", type=int, default=50)
    args = parser.parse_args()
    system = SYSTEMS[args.system]
    data = peer_data(system, prepare_data(system))
    for peer in args.peers:  # what does not depend on our CPU time first
        probes_and_converged(peer, system, data)
    target_s = load_json(OUT / system.name / "times.json").get("force-nll-scratch", {})
    if not target_s:
        sys.exit(f"run `python benchmarks/reproduce/run.py {system.name}` first")
    target_s = target_s["cpu_s"]
    runs = {peer: train_peer(peer, system, data, target_s) for peer in args.peers}
    rows, tests = our_rows(system, args.md_steps)
    peers = {}
    for peer, peer_runs in runs.items():
        more, more_tests = peer_rows(peer, peer_runs, data, args.md_steps)
        peers.update(more)
        tests.update(more_tests)
    print(report(system, {**rows, **peers}, peers, tests, target_s))


if __name__ == "__main__":
    main()
