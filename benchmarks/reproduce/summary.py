"""One table and one figure over every system ``run.py`` has finished.

    python benchmarks/reproduce/summary.py

Reads ``benchmarks/results/<system>.json``; writes ``benchmarks/results/summary.md`` (per
system: the three findings, holds or not and by how much, and the key ratios) and
``summary.png`` (RLL_F calibrated against training time relative to force-NLL from scratch).
"""

from __future__ import annotations

import json

from common import RESULTS, SYSTEMS, finding_line, findings

CHEAP = ("random-heads", "llpr", "llpr-force-rows", "subsample", "mse-committee")


def ttt_ratio(run: dict, scratch: dict, key: str) -> str:
    """Time to target of ``run`` (``key``: own or total) over scratch's, or "never"."""
    if run.get(key) is None or not scratch.get("ttt_own_s"):
        return "never"
    return f"{run[key] / scratch['ttt_own_s']:.2f}"


def key_numbers(rows: dict[str, dict]) -> dict[str, float | str]:
    """The numbers a reader asks for first (two-step vs scratch, energy σ)."""
    s, t, te = rows["force-nll-scratch"], rows["two-step-llpr"], rows["two-step-energy-nll"]
    return {"rll_f_scratch": s["rll_f_cal"], "rll_f_two_step_llpr": t["rll_f_cal"],
            "rll_f_two_step_enll": te["rll_f_cal"],
            "rll_e_scratch": s["rll_e_cal"], "rll_e_two_step_llpr": t["rll_e_cal"],
            "offset_share": max(r["offset_share"] for k, r in rows.items()
                                if k != "mse-committee"),
            "ttt_llpr": f"{ttt_ratio(t, s, 'ttt_own_s')} ({ttt_ratio(t, s, 'ttt_total_s')})",
            "ttt_enll": f"{ttt_ratio(te, s, 'ttt_own_s')} ({ttt_ratio(te, s, 'ttt_total_s')})",
            "rll_f_energy_nll": rows["energy-nll"]["rll_f_cal"],
            "rll_f_best_cheap": max(rows[k]["rll_f_cal"] for k in CHEAP if k in rows)}


def figure(all_rows: dict[str, dict]) -> None:
    """RLL_F cal vs wall time / scratch wall time, one panel per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_rows), figsize=(3.6 * len(all_rows), 3.8),
                             squeeze=False, sharey=False)
    for ax, (system, rows) in zip(axes[0], all_rows.items(), strict=True):
        scratch = rows["force-nll-scratch"]["time_s"]
        for i, (name, row) in enumerate(rows.items()):
            ax.scatter(row["time_s"] / scratch, row["rll_f_cal"], color=f"C{i % 10}", s=36,
                       label=name, marker="*" if name.startswith("two-step") else "o")
        ax.axhline(0, color="k", lw=0.6)
        ax.set(xscale="log", title=system, xlabel="training time / force-NLL scratch")
        values = [row["rll_f_cal"] for row in rows.values()]
        ax.set_ylim(max(min(values) - 5, -100), max(values) + 5)
    axes[0][0].set_ylabel("RLL_F, calibrated (%)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS / "summary.png", dpi=130)
    plt.close(fig)


def main() -> None:
    all_rows = {name: json.loads((RESULTS / f"{name}.json").read_text())
                for name in SYSTEMS if (RESULTS / f"{name}.json").exists()}
    if not all_rows:
        raise SystemExit("no results yet: run `python benchmarks/reproduce/run.py <system>`")
    lines = ["| system | RLL_F scratch | best cheap start | energy NLL | two-step LLPR | "
             "two-step energy NLL | time to target LLPR / E-NLL (with stage 1) | RLL_E scratch "
             "/ two-step LLPR | max offset share E | findings 1 / 2 / 3 (LLPR, energy NLL) |",
             "|---|" + "---|" * 9]
    details = []
    for system, rows in all_rows.items():
        k, f = key_numbers(rows), findings(rows)
        marks = " / ".join({True: "✓", False: "✗", None: "?"}[x["holds"]] for x in f)
        lines.append(f"| {system} | {k['rll_f_scratch']:.1f} | {k['rll_f_best_cheap']:.1f} | "
                     f"{k['rll_f_energy_nll']:.1f} | {k['rll_f_two_step_llpr']:.1f} | "
                     f"{k['rll_f_two_step_enll']:.1f} | {k['ttt_llpr']} / {k['ttt_enll']} | "
                     f"{k['rll_e_scratch']:.1f} / {k['rll_e_two_step_llpr']:.1f} | "
                     f"{k['offset_share']:.3f} | {marks} |")
        details += [f"### {system}", "", *[f"- {finding_line(x)}" for x in f], ""]
    figure(all_rows)
    text = "\n".join([
        "# Do the paper's findings hold here?", "",
        "RLL_F (calibrated, %, test frames) per protocol and system; budgets, splits and full "
        "tables in `<system>.md`. \"best cheap start\": the best of random heads, LLPR (with "
        "or without force rows), subsampling and an MSE committee. Time to target: CPU seconds "
        "until the validation RLL_F first reaches 95 % of the one force NLL from scratch keeps, "
        "as a fraction of scratch's own time to it (fine-tune alone, and with its stage 1 in "
        "parentheses). RLL_E: calibrated energy RLL on the test frames. Max offset share E: "
        "the largest share, over this project's protocols, of the member-energy variance that "
        "is one constant per member (near 1: σ_E is an offset; the MSE committee is left out, "
        "its models differ by constants by construction). "
        "✓ holds, ✗ does not hold, ? cannot be tested (a protocol it compares did not fit the "
        "data: test RMSE 10× the MSE model's in energy or 2× in forces).", "",
        *lines, "", "![summary](summary.png)", "", *details,
        "Command: `python benchmarks/reproduce/summary.py`", ""])
    (RESULTS / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
