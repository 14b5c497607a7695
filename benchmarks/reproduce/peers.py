"""This project next to apax and metatrain on one system: same split, same metric code.

    python benchmarks/reproduce/peers.py water     # after run.py water (it reuses our models)

Makes one virtual environment per peer (``benchmarks/peers/.venv-<peer>``, pinned in
``benchmarks/peers/requirements-<peer>.txt``; metatrain's gets the local ``torch==2.13.0`` first),
trains with the peer's own script for the system's epoch budget (apax: GMNN shallow ensemble with
energy + force NLL; metatrain: SOAP-BPNN, then its LLPR ensemble), scores the peers' validation
and test predictions with ``common.score`` (α from validation, metrics on test), and times each
package's ASE calculator (energy + forces + σ_E, and with member forces) and Langevin MD on the
first test frame. One thread per process. Writes ``benchmarks/results/peers_<system>.md``/.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

from common import (
    OUT,
    RESULTS,
    ROOT,
    SYSTEMS,
    System,
    load_json,
    load_predictions,
    markdown_table,
    prepare_data,
    score,
)

PEERS_DIR = ROOT / "benchmarks" / "peers"
PEERS = ("apax", "metatrain")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "JAX_PLATFORMS": "cpu",
              "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
OURS = {"force-nll-scratch": "shallow-ensembles force-NLL from scratch",
        "two-step-llpr": "shallow-ensembles two-step (LLPR → force NLL)",
        "llpr": "shallow-ensembles LLPR (MSE + last-layer Laplace)"}
TITLES = {"apax": "apax GMNN shallow ensemble, E + F NLL",
          "metatrain": "metatrain SOAP-BPNN + LLPR"}
COLUMNS = (
    ("epochs", "epochs", "d"), ("CPU s/epoch", "s_per_epoch", ".2f"),
    ("train time (CPU s)", "time_s", ".0f"),
    ("RMSE_E (meV/atom)", "rmse_e_meV_atom", ".2f"), ("RMSE_F (meV/Å)", "rmse_f_meV_A", ".1f"),
    ("RLL_E cal", "rll_e_cal", ".1f"), ("RLL_F raw", "rll_f_raw", ".1f"),
    ("RLL_F cal", "rll_f_cal", ".1f"), ("miscal. F", "miscal_f_cal", ".3f"),
    ("ms/call E+F+σ_E", "ms_call", ".1f"), ("ms/call + member F", "ms_call_members", ".1f"),
    ("MD steps/s", "md_steps_per_s", ".1f"),
)


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
    """Run a peer script; returns the JSON object of its last stdout line ({} for train)."""
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


def run_peer(peer: str, system: System, data: dict, epochs: int, name: str = "") -> Path:
    """Train ``peer`` on the system's split unless done; returns its output folder
    (``OUT/<name or system>/peer-<peer>``)."""
    folder = OUT / (name or system.name) / f"peer-{peer}"
    if not (folder / "pred_test.npz").exists():
        call(peer_python(peer), f"{peer}_peer.py", "train", "--train", str(data["train"]),
             "--validation", str(data["validation"]), "--test", str(data["test"]),
             "--out", str(folder), "--epochs", str(epochs), "--members", "8",
             "--batch-size", str(system.batch_size))
    return folder


def our_rows(system: System, steps: int) -> dict[str, dict]:
    """Rows of this project's protocols from ``run.py``'s outputs, with calculator timings."""
    folder = OUT / system.name
    runs, results = load_json(folder / "times.json"), load_json(RESULTS / f"{system.name}.json")
    if "two-step-llpr" not in runs:
        sys.exit(f"no results of run.py for {system.name} yet: run "
                 f"`python benchmarks/reproduce/run.py {system.name}` first")
    times = timings(Path(sys.executable), "ours_peer.py", folder / "two-step-llpr" / "model.pt",
                    folder / "data" / "test.extxyz", steps)
    epochs = {"force-nll-scratch": system.epochs, "two-step-llpr": system.fine_tune_epochs,
              "llpr": system.epochs}
    trained = {"force-nll-scratch": "force-nll-scratch", "two-step-llpr": "two-step-llpr",
               "llpr": "mse"}
    rows = {}
    for name, title in OURS.items():
        rows[title] = {**results[name], **times, "epochs": epochs[name],
                       "s_per_epoch": runs[trained[name]]["cpu_s"] / epochs[name]}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=sorted(SYSTEMS))
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--md-steps", type=int, default=50)
    parser.add_argument("--epochs", type=int, help="peer epochs; default: the system's budget")
    args = parser.parse_args()
    system = SYSTEMS[args.system]
    epochs = args.epochs or system.epochs
    data = prepare_data(system)
    folders = {peer: run_peer(peer, system, data, epochs) for peer in args.peers}
    rows = our_rows(system, args.md_steps)
    for peer, folder in folders.items():
        info = load_json(folder / "train.json")
        row = score(load_predictions(folder / "pred_validation.npz"),
                    load_predictions(folder / "pred_test.npz"))
        time_s = info.get("cpu_s", info["wall_s"])
        row.update(info, time_s=time_s, s_per_epoch=time_s / info["epochs"])
        row.update(timings(peer_python(peer), f"{peer}_peer.py", folder, data["test"],
                           args.md_steps))
        rows[f"{TITLES[peer]} ({info.get('version', '?')})"] = row
    text = "\n".join([
        f"# {system.name}: this project, apax and metatrain",
        "",
        f"Same split as `{system.name}.md` ({system.n_train}/{system.n_validation}/"
        f"{system.n_test} frames), {system.epochs} epochs for our models trained from scratch "
        f"and {epochs} for the peers, "
        "8 members, α fitted on validation and every metric from this project's code on the test "
        "frames. Training time: CPU seconds of the training process(es) (JIT compilation "
        "included). Timings: 1 thread per process, median ms per ASE call on the first test frame "
        "(new positions each call), Langevin MD at 300 K with σ_E every step. Our rows' "
        "calculator timings are the two-step model's (all our rows share one architecture).",
        "",
        markdown_table(rows, COLUMNS),
        "",
        f"Command: `python benchmarks/reproduce/peers.py {system.name}`",
        ""])
    (RESULTS / f"peers_{system.name}.md").write_text(text)
    (RESULTS / f"peers_{system.name}.json").write_text(json.dumps(rows, indent=1, default=str))
    print(text)


if __name__ == "__main__":
    main()
