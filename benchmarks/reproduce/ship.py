"""Copy a system's two-step model from ``run.py`` into ``models/`` with its model card.

    python benchmarks/reproduce/ship.py water ethanol
    python benchmarks/reproduce/ship.py batio3 --protocol two-step-energy-nll

Writes ``models/<system>_two_step.pt`` (the calibrated ``two-step-llpr`` model, or the
``--protocol`` given: α_E and α_F were fitted on the validation frames at the end of training)
and ``models/<system>_two_step.md`` (data, split, protocol, budget, test metrics raw and
calibrated, α, valid elements).
"""

from __future__ import annotations

import argparse
import shutil

from common import OUT, RESULTS, ROOT, SYSTEMS, System, load_json
from run import epochs_trained

VALID_FOR = {
    "water": "H and O; liquid water near ambient density and 300 K (the training frames)",
    "batio3": "Ba, Ti and O; the BaTiO3 3×3×3 supercells of the training data (PBE, distorted "
              "perovskite near its equilibrium volume); other phases, surfaces or defects are "
              "extrapolation",
    "ethanol": "H, C and O; an isolated ethanol molecule in the rMD17 conformations "
               "(PBE/def2-SVP); "
               "not for condensed phases or other molecules",
    "carbon": "C; the amorphous and crystalline cells of the training data",
}
MAX_BYTES = 5_000_000


STAGE_ONE = {"two-step-llpr": "MSE ({mse} epochs, patience {patience}), heads sampled from the "
                              "last-layer Laplace posterior",
             "two-step-energy-nll": "energy NLL + mean-force MSE ({enll} epochs, patience "
                                    "{patience})"}


def card(system: System, name: str, size: int, protocol: str) -> str:
    """Markdown model card from the results of ``run.py``."""
    from shallow_ensembles import load_model

    row = load_json(RESULTS / f"{system.name}.json")[protocol]
    model = load_model(ROOT / "models" / name)
    cal = (f"α_E = {float(model.alpha_energy):.3g}, α_F = {float(model.alpha_forces):.3g} "
           "(stored in the file; fitted on the validation frames)")
    table = [
        "| | |", "|---|---|",
        f"| data | {', '.join(f'`../shared/data/{f}`' for f in system.files)}: {system.title} "
        "(sources and licences in that folder's README) |",
        f"| split | {system.n_train} train / {system.n_validation} validation / {system.n_test} "
        f"test frames, seed 0: `benchmarks/results/{system.name}_split.json` |",
        f"| architecture | built-in power-spectrum backbone, cutoff {model.cutoff:g} Å, "
        f"M = {model.n_members} members, {str(model.dtype).removeprefix('torch.')}; "
        f"{size / 1e3:.0f} kB |",
        f"| protocol | `{protocol}`: " + STAGE_ONE[protocol].format(
            mse=epochs_trained(system, "mse"), enll=epochs_trained(system, "energy-nll"),
            patience=system.patience) + ", then the package's fine-tune of all parameters with "
        f"energy + force NLL ({epochs_trained(system, protocol)} epochs, lr 5e-4, early "
        "stopping on the "
        f"validation force NLL); batch {system.batch_size}, peak lr {system.learning_rate}, "
        "halved after 5 epochs without validation improvement |",
        f"| budget | {row['time_s']:.0f} CPU s of training (1 torch thread), stage 1 included |",
        f"| calibration | {cal} |",
        f"| valid for | {VALID_FOR[system.name]} |",
    ]
    metrics = [
        "| quantity | RMSE | RLL raw | RLL calibrated | NLL calibrated | miscalibration area |",
        "|---|---|---|---|---|---|",
        f"| energy | {row['rmse_e_meV_atom']:.2f} meV/atom | {row['rll_e_raw']:.1f} | "
        f"{row['rll_e_cal']:.1f} | {row['nll_e_cal']:.2f} | {row['miscal_e_cal']:.3f} |",
        f"| forces (components) | {row['rmse_f_meV_A']:.1f} meV/Å | {row['rll_f_raw']:.1f} | "
        f"{row['rll_f_cal']:.1f} | {row['nll_f_cal']:.2f} | {row['miscal_f_cal']:.3f} |",
        "",
        f"Energy σ on the test frames: offset share {row['offset_share']:.3f} (the share of the "
        "member-energy variance that is one constant per member: σ_E follows the structure when "
        f"it is small), coefficient of variation of σ_E {row['sigma_e_cv']:.2f}, Spearman "
        f"ρ(|error_E|, σ_E) {row['spearman_e']:.2f}.",
    ]
    return "\n".join([
        f"# `{name}` — {system.title}, two-step shallow ensemble (`{protocol}`)", "", *table,
        "",
        f"Test metrics ({system.n_test} frames; σ with ddof = 1; RLL in %, 100 = oracle, 0 = a "
        "constant error bar equal to the RMSE; NLL in eV units per structure / per component):",
        "", *metrics, "",
        f"Made by `python benchmarks/reproduce/run.py {system.name}` then "
        f"`python benchmarks/reproduce/ship.py {system.name}`; the protocol comparison on the "
        f"same split is `benchmarks/results/{system.name}.md`.", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("systems", nargs="+", choices=sorted(SYSTEMS))
    parser.add_argument("--protocol", choices=sorted(STAGE_ONE), default="two-step-llpr",
                        help="which two-step model to ship")
    args = parser.parse_args()
    for name in args.systems:
        system = SYSTEMS[name]
        source = OUT / name / args.protocol / "model.pt"
        size = source.stat().st_size
        if size > MAX_BYTES:
            raise SystemExit(f"{source} is {size / 1e6:.1f} MB, over the 5 MB limit of models/")
        target = f"{name}_two_step.pt"
        shutil.copyfile(source, ROOT / "models" / target)
        (ROOT / "models" / f"{name}_two_step.md").write_text(
            card(system, target, size, args.protocol))
        print(f"models/{target} ({size / 1e3:.0f} kB) and models/{name}_two_step.md written")


if __name__ == "__main__":
    main()
