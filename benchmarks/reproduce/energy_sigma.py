"""How much of the test energy error can any ensemble σ_E rank? Water and ethanol, run.py's split.

    python benchmarks/reproduce/energy_sigma.py water      # or ethanol (after run.py SYSTEM)

Issue 10 asks for a calibrated RLL_E ≥ +20 % on water and ethanol. This script measures what
limits it, on the test frames of ``run.py``'s saved split, with α and every recalibration fitted
on the validation frames (in-sample fits on the test frames are marked as upper bounds):

1. **Deep ensemble**: K independently initialised MSE models (run.py's ``mse`` and
   ``mse-seed1`` … ``mse-seed{K−1}``: same architecture, budget and patience; trained here when
   missing), scored like every row of ``run.py``: RLL_E raw and calibrated, Spearman(|r|, σ_E).
2. **Systematic error**: the per-frame test energy errors e_jk of the K models. Mean pairwise
   Pearson correlation; the share of a member's mean squared error that the deep-ensemble mean
   keeps, MSE(ē) / mean_j MSE(e_j); and the systematic share corrected for finite K,
   mean_k(ē_k² − v_k/K) / mean_jk e_jk² (v_k: variance over the K models, ddof 1). Errors
   shared by independently trained models are invisible to any committee spread.
3. **Realistic σ**: log σ = c₀ + c₁ x fitted by Gaussian NLL, for x = log σ_E (the a·σ^b
   recalibration of our σ and of the deep ensemble's) and for frame properties a model predicts
   (frame mean of our force-NLL σ_F, RMS predicted force, predicted energy per atom).
4. **Error distribution**: bias share mean(r)²/mean(r²), kurtosis about zero
   E[r⁴]/E[r²]² (3 for zero-mean Gaussian errors), max |r| / RMS, Shapiro–Wilk p. For errors
   r = s·z (z standard normal, s a per-frame error scale) a perfect σ = s gets an expected
   RLL = J / (J + 1.27), J = log E[s²] − E[log s²] (1.27 = −E[log z²]); a log-normal s gives
   kurtosis 3·exp(2J) (``ceiling``: the RLL this kurtosis allows; +20 % needs J ≥ 0.32, kurtosis
   ≥ 5.7). Gaussian, homoscedastic errors leave no σ anything to rank: RLL ≤ 0.

RLL (``shallow_ensembles.metrics.rll``): 100 (NLL(σ²) − NLL(RMSE²)) / (NLL(r²) − NLL(RMSE²)),
NLL(v) = mean_k ½[log v_k + r_k²/v_k] over test frames; 0 = a constant σ equal to the test RMSE,
100 = σ_k = |r_k|.

Writes ``benchmarks/results/energy_sigma_<system>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math

import numpy as np
import torch
from common import (
    OUT,
    SYSTEMS,
    committee,
    load_predictions,
    prepare_data,
    score,
    stale,
    write_report,
)
from run import predict_run, train_one

OURS = ("mse", "force-nll-scratch", "two-step-llpr")
"""run.py rows whose energy errors and σ_E are analysed next to the deep ensemble."""
E_LOG_CHI2 = math.log(2) + -1.9635100260214235  # E[log z²], z ~ N(0, 1): ψ(½) + log 2


def deep_ensemble(system, data: dict, k: int) -> tuple[list[str], dict[str, float]]:
    """Names of the K MSE runs (trained into run.py's folders when missing) and their CPU s."""
    names = ["mse"] + [f"mse-seed{s}" for s in range(1, k)]
    times = json.loads((OUT / system.name / "times.json").read_text())
    full = {"epochs": system.epochs, "patience": system.patience}
    for name in names:
        folder = OUT / system.name / name
        if not (folder / "model.pt").exists():
            times[name] = train_one(system, data, name, [{"kind": "mse", **full}])
            predict_run(system, data, name)
            (folder / "cpu.json").write_text(json.dumps(times[name]))
            continue
        if stale(folder / "pred_test.npz", system.n_test):
            predict_run(system, data, name)  # the split's test set changed
        if name not in times:
            times[name] = json.loads((folder / "cpu.json").read_text())
    return names, {n: times[n]["cpu_s"] for n in names}


def error_sharing(errors: np.ndarray) -> dict[str, float]:
    """Systematic vs model-specific parts of per-frame errors ``errors`` (K models, S frames)."""
    k = len(errors)
    pairs = [np.corrcoef(errors[i], errors[j])[0, 1]
             for i, j in itertools.combinations(range(k), 2)]
    mean_err, var = errors.mean(0), errors.var(0, ddof=1)
    member_mse = np.mean(errors**2)
    return {"pair_corr": float(np.mean(pairs)), "pair_corr_min": float(np.min(pairs)),
            "pair_corr_max": float(np.max(pairs)),
            "mean_keeps": float(np.mean(mean_err**2) / member_mse),
            "systematic_share": float(np.mean(mean_err**2 - var / k) / member_mse)}


def nll(r, sigma) -> float:
    """Mean ½[log σ² + r²/σ²] (no 2π)."""
    var = np.maximum(np.square(sigma), 1e-300)
    return float(np.mean(0.5 * (np.log(var) + np.square(r) / var)))


def fit_loglinear(r, x) -> tuple[float, float]:
    """(c₀, c₁) of log σ = c₀ + c₁ x minimising the Gaussian NLL of residuals ``r``."""
    from scipy.optimize import minimize

    r, x = np.asarray(r, float), np.asarray(x, float)
    start = [0.5 * math.log(np.mean(r**2)), 0.0]
    best = minimize(lambda c: nll(r, np.exp(np.clip(c[0] + c[1] * x, -300, 300))), start,
                    method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-12, "maxiter": 4000})
    return float(best.x[0]), float(best.x[1])


def ceiling(kurtosis: float) -> float:
    """Expected RLL (%) of a perfect σ = s when r = s·z with log-normal s of this kurtosis."""
    jensen = max(0.0, 0.5 * math.log(max(kurtosis, 1e-12) / 3))
    return 100 * jensen / (jensen - E_LOG_CHI2)


def distribution(r) -> dict[str, float]:
    """Shape of the per-frame errors ``r`` (eV)."""
    from scipy.stats import shapiro

    def kurtosis(x):  # about zero, not the mean: a constant bias leaves σ nothing to rank
        return float(np.mean(x**4) / np.mean(x**2) ** 2)

    r = np.asarray(r, float)
    rng = np.random.default_rng(0)
    boot = [kurtosis(rng.choice(r, len(r))) for _ in range(2000)]
    kurt = kurtosis(r)
    return {"rmse_meV": 1000 * float(np.sqrt(np.mean(r**2))), "mean_meV": 1000 * float(r.mean()),
            "excess_kurtosis": kurt - 3, "kurtosis_lo": float(np.percentile(boot, 5)) - 3,
            "kurtosis_hi": float(np.percentile(boot, 95)) - 3,
            "bias_share": float(r.mean() ** 2 / np.mean(r**2)),
            "max_over_rms": float(np.abs(r).max() / np.sqrt(np.mean(r**2))),
            "shapiro_p": float(shapiro(r).pvalue), "ceiling_rll": ceiling(kurt)}


def frame_properties(pred: dict, sigma_f_source: dict) -> dict[str, np.ndarray]:
    """Per-frame properties a model predicts (no reference labels)."""
    n = pred["n_atoms"]
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    per_frame = lambda a: np.add.reduceat(a, starts) / n  # noqa: E731
    return {
        "log mean σ_F (force-nll-scratch)": np.log(
            per_frame(np.square(sigma_f_source["forces_sigma"]).mean(1)) ** 0.5),
        "RMS predicted force": per_frame(np.square(pred["forces"]).mean(1)) ** 0.5,
        "predicted energy per atom": pred["energy"] / n,
    }


def realistic_sigma(val: dict, test: dict, val_src: dict, test_src: dict) -> dict[str, dict]:
    """RLL_E (%) on test of log σ = c₀ + c₁ x fitted on validation and (upper bound) on test."""
    from shallow_ensembles.metrics import rll

    rv, rt = val["ref_energy"] - val["energy"], test["ref_energy"] - test["energy"]
    xs_v = {"log σ_E (a·σ^b)": np.log(np.maximum(val["energy_sigma"], 1e-12)),
            **frame_properties(val, val_src)}
    xs_t = {"log σ_E (a·σ^b)": np.log(np.maximum(test["energy_sigma"], 1e-12)),
            **frame_properties(test, test_src)}
    out = {}
    for key, xv in xs_v.items():
        centre, spread = xv.mean(), xv.std() or 1.0  # standardise with validation statistics
        zv, zt = (xv - centre) / spread, (xs_t[key] - centre) / spread
        c_val, c_test = fit_loglinear(rv, zv), fit_loglinear(rt, zt)
        out[key] = {"rll_val_fit": rll(rt, np.exp(c_val[0] + c_val[1] * zt)),
                    "rll_test_fit": rll(rt, np.exp(c_test[0] + c_test[1] * zt)),
                    "slope_val_fit": c_val[1], "slope_test_fit": c_test[1]}
    return out


def analyse(system, names: list[str]) -> dict:
    """Every number of the report, from saved predictions."""
    folder = OUT / system.name
    def load(name):
        return {s: load_predictions(folder / name / f"pred_{s}.npz")
                for s in ("validation", "test")}

    members = {n: load(n) for n in names}
    ours = {n: load(n) for n in OURS}
    de = {s: committee([members[n][s] for n in names]) for s in ("validation", "test")}
    rows = {"deep ensemble": score(de["validation"], de["test"])}
    rows.update({n: score(p["validation"], p["test"]) for n, p in ours.items() if n != "mse"})
    for n, p in members.items():
        rows[n] = {"rmse_e_meV_atom": score(p["validation"], p["test"])["rmse_e_meV_atom"]}
    test = de["test"]
    errors = np.stack([test["ref_energy"] - members[n]["test"]["energy"] for n in names])
    sharing = {"deep ensemble members": error_sharing(errors)}
    mean_err = test["ref_energy"] - test["energy"]
    for n in ("force-nll-scratch", "two-step-llpr"):
        own = ours[n]["test"]["ref_energy"] - ours[n]["test"]["energy"]
        sharing[n] = {"corr_with_de_mean": float(np.corrcoef(own, mean_err)[0, 1]),
                      "mse_ratio_de_mean": float(np.mean(mean_err**2) / np.mean(own**2))}
    src = ours["force-nll-scratch"]
    realistic = {"deep ensemble": realistic_sigma(de["validation"], de["test"],
                                                  src["validation"], src["test"])}
    for n in ("force-nll-scratch", "two-step-llpr"):
        realistic[n] = realistic_sigma(ours[n]["validation"], ours[n]["test"],
                                       src["validation"], src["test"])
    dist = {"deep ensemble mean": distribution(mean_err)}
    dist.update({n: distribution(p["test"]["ref_energy"] - p["test"]["energy"])
                 for n, p in ours.items()})
    dist.update({n: distribution(errors[i]) for i, n in enumerate(names[1:], 1)})
    return {"rows": rows, "sharing": sharing, "realistic": realistic, "distribution": dist,
            "n_test": int(len(mean_err)), "n_validation": int(len(de["validation"]["energy"]))}


def markdown(system, names: list[str], cpu: dict, res: dict) -> str:
    """The report text."""
    k = len(names)
    rows, dist = res["rows"], res["distribution"]
    lines = [f"# {system.name}: what limits the energy uncertainty (RLL_E)", "",
             f"Split of `run.py {system.name}` ({res['n_validation']} validation / "
             f"{res['n_test']} test frames; α and every fit on validation unless marked). Deep "
             f"ensemble: {k} MSE models trained independently (seeds 0–{k - 1}; run.py's `mse` "
             f"and `mse-seed*`, budget and patience of `{system.name}.md`; "
             f"{sum(cpu.values()):.0f} CPU s in all). RLL as in `metrics.rll`: "
             "100 (NLL(σ²) − NLL(RMSE²)) / (NLL(r²) − NLL(RMSE²)), per test frame; 0 = a constant "
             "σ equal to the test RMSE, 100 = σ = |r|. Offset share E: the share of the member-"
             "energy variance that is one constant per member across the test frames (for the "
             "deep ensemble: per model).", "",
             "## 1. Deep ensemble vs our shallow ensembles", "",
             "| method | RMSE_E (meV/atom) | RMSE_F (meV/Å) | RLL_E raw | RLL_E cal | α_E | "
             "Spearman(abs r, σ_E) | offset share E |", "|---|---|---|---|---|---|---|---|"]
    for n in ("deep ensemble", "force-nll-scratch", "two-step-llpr"):
        r = rows[n]
        lines.append(f"| {n} | {r['rmse_e_meV_atom']:.2f} | {r['rmse_f_meV_A']:.1f} | "
                     f"{r['rll_e_raw']:.1f} | {r['rll_e_cal']:.1f} | {r['alpha_e']:.3g} | "
                     f"{r['spearman_e']:.2f} | {r['offset_share']:.2f} |")
    lines += ["", "Deep-ensemble members, test RMSE_E (meV/atom): " + ", ".join(
        f"{n} {rows[n]['rmse_e_meV_atom']:.2f}" for n in names) + ".", "",
        "## 2. How much of the energy error is shared by independently trained models", ""]
    s = res["sharing"]["deep ensemble members"]
    lines += [f"- Per-frame test energy errors of the {k} MSE models: mean pairwise Pearson "
              f"correlation {s['pair_corr']:.2f} (range {s['pair_corr_min']:.2f}–"
              f"{s['pair_corr_max']:.2f}).",
              f"- The deep-ensemble mean keeps {100 * s['mean_keeps']:.0f} % of a member's mean "
              f"squared error; corrected for finite K, the systematic (shared) share is "
              f"{100 * s['systematic_share']:.0f} % and the model-specific share, the only part "
              f"a committee spread can see, {100 * (1 - s['systematic_share']):.0f} %."]
    for n in ("force-nll-scratch", "two-step-llpr"):
        o = res["sharing"][n]
        lines.append(f"- {n}: its errors correlate {o['corr_with_de_mean']:.2f} with the "
                     f"deep-ensemble mean's; MSE(deep-ensemble mean) / its MSE = "
                     f"{o['mse_ratio_de_mean']:.2f}.")
    lines += ["", "## 3. RLL_E a realistic σ reaches (log σ = c₀ + c₁ x, Gaussian-NLL fit)", "",
              "Fitted on validation (honest) and on the test frames themselves (an in-sample "
              "upper bound for this two-parameter family).", "",
              "| σ_E of | x | RLL_E (val fit) | RLL_E (test fit, bound) | c₁ val / test |",
              "|---|---|---|---|---|"]
    for method, props in res["realistic"].items():
        for key, v in props.items():
            lines.append(f"| {method} | {key} | {v['rll_val_fit']:.1f} | {v['rll_test_fit']:.1f}"
                         f" | {v['slope_val_fit']:+.2f} / {v['slope_test_fit']:+.2f} |")
    lines += ["", "## 4. Distribution of the test energy errors (per frame)", "",
              "Ceiling: the expected RLL_E of a perfect σ (the true per-frame error scale) if "
              "the errors are a log-normal scale mixture of zero-mean Gaussians with this "
              "kurtosis (module docstring); zero-mean Gaussian errors (kurtosis − 3 = 0) give 0, "
              "and so does a constant bias (it lowers the kurtosis about zero).", "",
              "| errors of | RMSE (meV) | mean (meV) | mean² / MSE | "
              "E[r⁴]/E[r²]² − 3 (90 % bootstrap) | max abs r / RMS | Shapiro–Wilk p | "
              "ceiling RLL_E |", "|---|---|---|---|---|---|---|---|"]
    for n, d in dist.items():
        lines.append(f"| {n} | {d['rmse_meV']:.1f} | {d['mean_meV']:+.1f} | "
                     f"{d['bias_share']:.2f} | {d['excess_kurtosis']:+.2f} "
                     f"({d['kurtosis_lo']:+.2f} … "
                     f"{d['kurtosis_hi']:+.2f}) | {d['max_over_rms']:.2f} | "
                     f"{d['shapiro_p']:.2f} | {d['ceiling_rll']:.1f} |")
    lines += ["", f"Command: `python benchmarks/reproduce/energy_sigma.py {system.name}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=("water", "ethanol"))
    parser.add_argument("--members", type=int, default=5, help="MSE models in the deep ensemble")
    args = parser.parse_args()
    torch.set_num_threads(1)
    system = SYSTEMS[args.system]
    missing = [n for n in OURS if not (OUT / system.name / n / "pred_test.npz").exists()]
    if missing:
        raise SystemExit(f"run `python benchmarks/reproduce/run.py {system.name}` first "
                         f"(missing: {', '.join(missing)})")
    data = prepare_data(system)
    names, cpu = deep_ensemble(system, data, args.members)
    res = analyse(system, names)
    res["cpu_s"] = cpu
    text = markdown(system, names, cpu, res)
    write_report(f"energy_sigma_{system.name}", text, res)
    print(text)


if __name__ == "__main__":
    main()
