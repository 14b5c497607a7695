"""Training protocols end to end on a real subset: resume, DDP, two-step gain, config errors."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import ETHANOL, ROOT
from shallow_ensembles import load_model
from shallow_ensembles.cli import main
from shallow_ensembles.config import from_dict
from shallow_ensembles.errors import ConfigError
from shallow_ensembles.training.config import TrainConfig

SMALL_MODEL = {"n_members": 4, "hidden": [24, 24], "bottleneck": 6, "n_radial": 5,
               "n_channels": 4, "cutoff_A": 4.0, "dtype": "float64"}


def write_config(tmp_path, name, **overrides):
    cfg = {
        "data": {"train_file": str(ETHANOL), "n_train": 28, "n_validation": 12, "n_test": 20},
        "model": SMALL_MODEL,
        "protocol": "two-step-llpr",
        "stages": [{"kind": "mse", "epochs": 12}, {"kind": "llpr"},
                   {"kind": "force-nll", "epochs": 4, "learning_rate": 0.001}],
        "training": {"batch_size": 4, "threads": 1, "progress": False, "learning_rate": 0.005},
        "output_dir": str(tmp_path / name),
    }
    for key, value in overrides.items():
        cfg[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def states_equal(a, b, atol=0.0):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.allclose(sa[k], sb[k], rtol=0, atol=atol) for k in sa)


def run_cli(args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "shallow_ensembles.cli", *args], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def test_resume_after_sigkill_continues_identically(tmp_path):
    stages = [{"kind": "mse", "epochs": 40}, {"kind": "llpr"},
              {"kind": "force-nll", "epochs": 3, "learning_rate": 0.001}]
    full = write_config(tmp_path, "full", stages=stages)
    killed = write_config(tmp_path, "killed", stages=stages)
    assert main(["train", str(full)]) == 0
    proc = run_cli(["train", str(killed)])
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model.pt").exists(), "the run finished before the kill"
    state = torch.load(checkpoint, weights_only=True)
    assert state["stage"] == 0 or state["stage"] < 3
    assert main(["train", str(killed), "--resume"]) == 0
    a, b = load_model(tmp_path / "full" / "model.pt"), load_model(tmp_path / "killed" / "model.pt")
    assert states_equal(a, b)
    rows = (tmp_path / "killed" / "train_log.csv").read_text().splitlines()
    assert len(rows) == 1 + 40 + 3


def test_ddp_two_processes_match_one(tmp_path):
    one = write_config(tmp_path, "one")
    two = write_config(tmp_path, "two", training={"batch_size": 2, "threads": 1,
                                                   "progress": False, "learning_rate": 0.005})
    assert main(["train", str(one)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "shallow_ensembles.cli", "train", str(two)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    a, b = load_model(tmp_path / "one" / "model.pt"), load_model(tmp_path / "two" / "model.pt")
    # The two runs differ only in the order of float64 gradient sums (all-reduce over two
    # processes vs one sum), ~1e-16 relative per step. After 16 epochs the parameters agree to
    # ~3e-9 relative to each tensor's scale (measured), so 1e-6 of that scale leaves room for
    # other BLAS/thread layouts. The calibration factors α = sqrt(mean r²/σ²) are ratios of
    # small residuals of large energies fitted on 12 frames: they amplify those differences
    # (4e-7 relative measured, 2.4e-7 absolute reported on another machine), hence 1e-5.
    sa, sb = a.state_dict(), b.state_dict()
    for key in sa:
        rtol = 1e-5 if key.startswith("alpha") else 1e-6
        scale = float(sa[key].abs().max()) if sa[key].numel() else 0.0
        diff = float((sa[key] - sb[key]).abs().max()) if sa[key].numel() else 0.0
        assert diff <= rtol * max(scale, 1e-12), f"{key}: max |diff| {diff:.3g}, scale {scale:.3g}"


def test_two_step_improves_force_rll_over_stage_one(tmp_path):
    from shallow_ensembles.calibration import predict_dataset
    from shallow_ensembles.data import graphs_from_atoms
    from shallow_ensembles.evaluation import compute_metrics
    from shallow_ensembles.training import load_datasets

    mse = {"kind": "mse", "epochs": 60}
    stage1 = write_config(tmp_path, "stage1", protocol="llpr", stages=[mse, {"kind": "llpr"}])
    two = write_config(tmp_path, "two", stages=[
        mse, {"kind": "llpr"},
        {"kind": "force-nll", "epochs": 10, "learning_rate": 0.001, "warmup_epochs": 0}])
    assert main(["train", str(stage1)]) == 0 and main(["train", str(two)]) == 0
    cfg = from_dict(TrainConfig, yaml.safe_load(two.read_text()))
    test = graphs_from_atoms(load_datasets(cfg.data).test, 4.0)
    rll = {}
    for name in ("stage1", "two"):
        model = load_model(tmp_path / name / "model.pt")
        m = compute_metrics(predict_dataset(model, test), float(model.alpha_energy),
                            float(model.alpha_forces))
        rll[name] = m["calibrated"]["forces"]["rll"]
    assert rll["two"] > rll["stage1"] + 5, rll


def test_config_errors_name_the_key(tmp_path, capsys):
    path = write_config(tmp_path, "bad", training={"batch_sise": 4})
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "training.batch_sise: unknown option (did you mean 'batch_size'?)" in err
    with pytest.raises(ConfigError, match=r"stages\[0\].kind: force-nll needs model.n_members"):
        from_dict(TrainConfig, {"data": {"train_file": "x"}, "protocol": "force-nll-scratch",
                                "model": {"n_members": 1}})
    bad_backbone = write_config(tmp_path, "bad_backbone", model={"l_max": 5})
    assert main(["train", str(bad_backbone)]) == 2
    assert "model.backbone.l_max: expected 0 to 3, got 5" in capsys.readouterr().err
    assert not (tmp_path / "bad_backbone").exists()  # refused before any work
    assert main(["train", "--print-defaults"]) == 0
    template = capsys.readouterr().out
    assert "batch_size: 4" in template and "# Structures per optimisation step" in template
    assert from_dict(TrainConfig, {**yaml.safe_load(template), "data": {"train_file": "x"}})


def test_cli_calibrate_and_evaluate(tmp_path, capsys):
    path = write_config(tmp_path, "run", protocol="energy-nll",
                        stages=[{"kind": "energy-nll", "epochs": 3}])
    assert main(["train", str(path)]) == 0
    model_path = tmp_path / "run" / "model.pt"
    assert (tmp_path / "run" / "train_log.csv").exists()
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 1000
    assert main(["calibrate", str(model_path), str(ETHANOL), "--output",
                 str(tmp_path / "cal.pt")]) == 0
    assert main(["evaluate", str(tmp_path / "cal.pt"), str(ETHANOL), "--output",
                 str(tmp_path / "eval")]) == 0
    import json
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for label in ("calibrated", "raw"):
        for q in ("energy", "forces"):
            assert {"rmse", "mae", "nll", "rll", "miscalibration_area", "spearman"} <= set(
                metrics[label][q])
    assert (tmp_path / "eval" / "forces.png").stat().st_size > 10000
    assert "| calibrated | forces |" in (tmp_path / "eval" / "report.md").read_text()
    assert main(["evaluate", str(tmp_path / "missing.pt"), str(ETHANOL), "--output",
                 str(tmp_path / "e2")]) == 2
