"""ms per ASE call for this project, apax and metatrain on 192- and 1536-atom water, one run.

    python benchmarks/reproduce/inference.py

Per package and size: energy + forces + σ_E, and the same with member forces (forces σ), median
of ``--repeat`` calls with new positions each call, 1 thread per process; plus Langevin MD steps
per second. Models: ours is ``models/water_two_step.pt``; the peers' come from
``peers.py water`` when it has run, otherwise each peer trains a 1-epoch model on the water
split here (the cost of a call does not depend on how long a model was trained). 1536 atoms is
the 2×2×2 supercell of the first test frame. Writes ``benchmarks/results/inference.md``/.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ase.io import read, write
from common import OUT, RESULTS, ROOT, SYSTEMS, prepare_data, write_report
from peers import PEERS, peer_python, run_peer, timings

from shallow_ensembles import __version__

OUR_MODEL = ROOT / "models" / "water_two_step.pt"


def structures(test_file: Path) -> dict[int, Path]:
    """The first test frame and its 2×2×2 supercell, as files: {n_atoms: path}."""
    atoms = read(test_file, 0)
    folder = OUT / "inference"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for reps in (1, 2):
        big = atoms.repeat((reps,) * 3)
        big.calc = None
        out[len(big)] = folder / f"water_{len(big)}.extxyz"
        write(out[len(big)], big)
    return out


def measure(package: str, version: str, python: Path, script: str, model: Path, files: dict,
            repeat: int, steps: int) -> list[dict]:
    """One record per size: ms per call without/with member forces, MD steps per second."""
    records = []
    for n_atoms, path in files.items():
        md_steps = steps if n_atoms < 1000 else max(5, steps // 8)
        records.append({"package": package, "version": version, "n_atoms": n_atoms,
                        **timings(python, script, model, path, md_steps, repeat)})
        print(records[-1], flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--md-steps", type=int, default=40)
    args = parser.parse_args()
    water = SYSTEMS["water"]
    data = prepare_data(water)
    files = structures(data["test"])
    records = measure("shallow-ensembles", __version__, Path(sys.executable), "ours_peer.py",
                      OUR_MODEL, files, args.repeat, args.md_steps)
    for peer in args.peers:
        folder = OUT / "water" / f"peer-{peer}"
        if not (folder / "pred_test.npz").exists():
            folder = run_peer(peer, water, data, epochs=1, name="inference")
        version = json.loads((folder / "train.json").read_text()).get("version", "")
        records += measure(peer, version, peer_python(peer), f"{peer}_peer.py", folder, files,
                           args.repeat, args.md_steps)
    ours = {r["n_atoms"]: r for r in records if r["package"] == "shallow-ensembles"}
    lines = ["| package | atoms | ms/call E+F+σ_E | ms/call + member F | MD steps/s "
             "| ours / package (E+F+σ_E) | ours / package (member F) |", "|---|" + "---|" * 6]
    for r in records:
        mine = ours[r["n_atoms"]]
        lines.append(f"| {r['package']} {r['version']} | {r['n_atoms']} | {r['ms_call']:.1f} | "
                     f"{r['ms_call_members']:.1f} | {r['md_steps_per_s']:.2f} | "
                     f"{mine['ms_call'] / r['ms_call']:.2f} | "
                     f"{mine['ms_call_members'] / r['ms_call_members']:.2f} |")
    text = "\n".join([
        "# Inference: ms per ASE call on liquid water",
        "",
        "First test frame of the water split (192 atoms) and its 2×2×2 supercell (1536 atoms); "
        f"1 thread per process, median of {args.repeat} calls with new positions each call "
        "(after 3 warm-up calls, so JIT compilation is excluded); MD: ASE Langevin, 300 K, "
        "0.5 fs, σ_E every step. Ratios below 1 mean this project is faster.",
        "",
        *lines,
        "",
        "Command: `python benchmarks/reproduce/inference.py`",
        ""])
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_report("inference", text, records)
    print(text)


if __name__ == "__main__":
    main()
