"""Active learning end to end with a cheap reference (EMT on a Cu13 cluster), the selection
against a brute-force farthest-point sampling, the tblite reference, config errors and resume."""

from __future__ import annotations

import sys

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron

from conftest import ETHANOL, ROOT, tiny_model
from shallow_ensembles.active_learning import (
    ActiveLearningConfig,
    ReferenceConfig,
    farthest_point_sampling,
    highest_sigma,
    label,
    load_al_config,
    make_reference,
    run_active_learning,
    structure_features,
)
from shallow_ensembles.calibration import predict_dataset
from shallow_ensembles.cli import main
from shallow_ensembles.config import from_dict, template
from shallow_ensembles.data import Batch, graphs_from_atoms, read_structures
from shallow_ensembles.errors import ConfigError
from shallow_ensembles.model import load_model

torch.set_num_threads(1)

N_SELECT = 3
ROUND_FILES = ("md", "exploration.json", "candidates.extxyz", "selected.extxyz",
               "labelled.extxyz", "train.extxyz", "validation.extxyz", "model.pt", "report.json")


def cu_frames(n: int, seed: int, rattle: float = 0.08) -> list:
    """Rattled Cu13 icosahedra labelled with EMT."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = Icosahedron("Cu", 2)
        atoms.center()
        atoms.rattle(rattle, rng=rng)
        atoms.calc = EMT()
        atoms.get_forces()
        frames.append(atoms)
    return frames


def al_config(folder, max_rounds: int) -> dict:
    """A small EMT active-learning protocol: every MD frame is a candidate."""
    return {
        "output_dir": str(folder / "run"),
        "data": {"train_file": str(folder / "start.extxyz"),
                 "validation_file": str(folder / "validation.extxyz"),
                 "test_file": str(folder / "test.extxyz")},
        "reference": {"kind": "import", "path": "ase.calculators.emt.EMT"},
        "initial": {"model": {"cutoff_A": 3.5, "n_radial": 4, "n_channels": 3, "hidden": [16, 16],
                              "bottleneck": 4, "n_members": 4, "dtype": "float64"},
                    "stages": [{"kind": "mse", "epochs": 40}, {"kind": "llpr"},
                               {"kind": "force-nll", "epochs": 3, "learning_rate": 0.001}],
                    "training": {"learning_rate": 0.01, "progress": False, "batch_size": 3}},
        "walkers": {"temperatures_K": [300, 900], "seeds": [0], "steps": 30},
        "md": {"dynamics": {"kind": "langevin", "timestep_fs": 2.0, "temperature_K": 300,
                            "friction_per_fs": 0.02},
               "levels": {"forces_lo_eV_per_A": 1e-6},
               "actions": [{"kind": "save", "level": "candidate", "min_spacing_steps": 3}],
               "logging": {"trajectory_interval": 0, "plot": False}},
        "selection": {"kind": "farthest_point", "n": N_SELECT},
        "fine_tune": {"stages": [{"kind": "mse", "epochs": 20}, {"kind": "llpr"},
                                 {"kind": "force-nll", "epochs": 3, "learning_rate": 0.001}],
                      "training": {"learning_rate": 0.005, "progress": False, "batch_size": 3}},
        "stopping": {"max_rounds": max_rounds, "min_candidate_rate": None,
                     "explore_final": False},
        "threads": 1,
    }


def snapshot(folder):
    """(mtime_ns, bytes) of every file under ``folder``."""
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def al_run(tmp_path_factory):
    """One round, then a resumed run to two rounds."""
    folder = tmp_path_factory.mktemp("al")
    ase.io.write(folder / "start.extxyz", cu_frames(6, 0))
    ase.io.write(folder / "validation.extxyz", cu_frames(4, 1))
    ase.io.write(folder / "test.extxyz", cu_frames(8, 2, rattle=0.15))
    first = run_active_learning(al_config(folder, max_rounds=1))
    before = {k: snapshot(folder / "run" / f"round_{k:02d}") for k in (0, 1)}
    second = run_active_learning(al_config(folder, max_rounds=2), resume=True)
    return folder, first, second, before


def positions(frames):
    return [f.positions for f in frames]


def manual_features(model, frames):
    """Mean last-layer features per structure, computed directly, (S, d)."""
    batch = Batch.from_atoms(frames, model.cutoff, dtype=model.dtype)
    with torch.no_grad():
        g = model.last_layer_features(batch).numpy()
    index = batch.structure.numpy()
    return np.stack([g[index == s].mean(0) for s in range(len(frames))])


def brute_force_fps(pool, reference, n):
    """Farthest-point sampling from the full distance matrix."""
    points = np.vstack([reference, pool]) if len(reference) else pool
    distances = np.linalg.norm(pool[:, None, :] - points[None, :, :], axis=-1)
    known = list(range(len(reference)))
    picked = []
    for _ in range(n):
        columns = known + [len(reference) + p for p in picked]
        d = distances[:, columns].min(axis=1) if columns else \
            np.linalg.norm(pool - pool.mean(0), axis=1)
        best = int(np.argmax(d))
        if columns and d[best] <= 1e-12:
            break
        picked.append(best)
    return picked


# --- the loop ------------------------------------------------------------------------------------
def test_rounds_write_their_files_and_grow_by_exactly_the_labelled_frames(al_run):
    folder, _, result, _ = al_run
    run = folder / "run"
    assert result.rounds_trained == 2 and result.stop_reason == "max_rounds"
    for name in ("report.csv", "report.md", "rounds.png", "summary.yaml", "model.pt",
                 "resolved_config.yaml"):
        assert (run / name).exists(), name
    assert (run / "rounds.png").stat().st_size > 5000
    assert (run / "model.pt").read_bytes() == (run / "round_02" / "model.pt").read_bytes()
    emt = EMT()
    for k in (1, 2):
        d = run / f"round_{k:02d}"
        for name in ROUND_FILES:
            assert (d / name).exists(), f"round {k}: {name}"
        selected = ase.io.read(d / "selected.extxyz", ":")
        labelled = read_structures(d / "labelled.extxyz")
        previous = read_structures(run / f"round_{k - 1:02d}" / "train.extxyz")
        grown = read_structures(d / "train.extxyz")
        assert len(selected) == len(labelled) == N_SELECT
        assert len(grown) == len(previous) + N_SELECT
        np.testing.assert_allclose(np.array(positions(grown)),
                                   np.array(positions(previous + labelled)))
        np.testing.assert_allclose(np.array(positions(labelled)), np.array(positions(selected)))
        for frame in labelled:  # labels are the reference's (an independent EMT call)
            atoms = frame.copy()
            atoms.calc = emt
            assert frame.info["REF_energy"] == pytest.approx(atoms.get_potential_energy(),
                                                             abs=1e-6)
            np.testing.assert_allclose(frame.arrays["REF_forces"], atoms.get_forces(),
                                       atol=1e-6)  # extxyz keeps 8 decimals of positions
        # the fixed validation set does not grow
        assert len(read_structures(d / "validation.extxyz")) == 4


def test_candidate_rate_counts_saved_frames_per_md_step(al_run):
    folder, _, result, _ = al_run
    for row in result.rows[1:]:
        d = folder / "run" / f"round_{row['round']:02d}"
        steps = sum(yaml.safe_load(s.read_text())["steps_run"]
                    for s in (d / "md").glob("*/summary.yaml"))
        saved = sum(len(ase.io.read(f, ":")) for f in (d / "md").glob("*/candidates.extxyz"))
        assert row["md_steps"] == steps == 2 * 30
        assert row["n_candidates"] == saved == len(ase.io.read(d / "candidates.extxyz", ":"))
        assert row["candidate_rate"] == pytest.approx(saved / steps)


def test_retraining_lowers_the_errors(al_run):
    folder, _, result, _ = al_run
    run = folder / "run"
    for k in (1, 2):
        labelled = graphs_from_atoms(read_structures(run / f"round_{k:02d}" / "labelled.extxyz"),
                                     3.5)
        rmse = {}
        for name, path in (("before", run / f"round_{k - 1:02d}" / "model.pt"),
                           ("after", run / f"round_{k:02d}" / "model.pt")):
            pred = predict_dataset(load_model(path), labelled, member_forces=False)
            rmse[name] = float(np.sqrt(np.mean((pred["forces"] - pred["ref_forces"]) ** 2)))
        assert rmse["after"] < 0.7 * rmse["before"], (k, rmse)
        row = result.rows[k]
        assert row["selected_forces_rmse_before"] == pytest.approx(1e3 * rmse["before"])
        assert row["selected_forces_rmse_after"] == pytest.approx(1e3 * rmse["after"])
    test_rmse = [row["test_forces_rmse_meV_per_A"] for row in result.rows]
    assert test_rmse[2] < test_rmse[0], test_rmse


def test_selected_frames_are_the_farthest_point_sampling_of_the_pool(al_run):
    folder, _, _, _ = al_run
    run = folder / "run"
    for k in (1, 2):
        d = run / f"round_{k:02d}"
        model = load_model(run / f"round_{k - 1:02d}" / "model.pt")
        pool = ase.io.read(d / "candidates.extxyz", ":")
        train = read_structures(run / f"round_{k - 1:02d}" / "train.extxyz")
        expected = brute_force_fps(manual_features(model, pool), manual_features(model, train),
                                   N_SELECT)
        chosen = [f.info["al_pool_index"] for f in ase.io.read(d / "selected.extxyz", ":")]
        assert chosen == expected
        assert len(set(chosen)) == N_SELECT


def test_resume_skips_completed_rounds(al_run, capsys):
    folder, first, second, before = al_run
    run = folder / "run"
    for k in (0, 1):
        after = snapshot(run / f"round_{k:02d}")
        assert after == before[k], f"round {k} was touched by the resumed run"
    assert second.rows[:2] == first.rows[:2]
    assert (run / "round_02" / "model.pt").exists()
    # a finished run resumed again through the CLI only rebuilds the report
    config_path = folder / "al.yaml"
    config_path.write_text(yaml.safe_dump(al_config(folder, max_rounds=2)))
    everything = snapshot(run / "round_02")
    assert main(["active-learn", str(config_path), "--resume"]) == 0
    assert "| 2 | trained | 12 |" in capsys.readouterr().out
    assert snapshot(run / "round_02") == everything
    # without --resume the run is not overwritten; a changed protocol is refused
    assert main(["active-learn", str(config_path)]) == 2
    assert "output_dir: " in capsys.readouterr().err
    changed = al_config(folder, max_rounds=2)
    changed["selection"]["n"] = 5
    with pytest.raises(ConfigError, match=r"^selection: differs from the run being resumed"):
        run_active_learning(changed, resume=True)


def test_relabel_growing_validation_and_highest_sigma(tmp_path):
    from ase.calculators.lj import LennardJones

    frames = cu_frames(6, 7)
    for atoms in frames:  # labels of another method, to be replaced by the reference's
        atoms.calc = LennardJones(sigma=2.3, epsilon=0.4, rc=5.0)
        atoms.get_forces()
    ase.io.write(tmp_path / "start.extxyz", frames)
    config = al_config(tmp_path, max_rounds=1)
    config["data"] = {"train_file": f"{tmp_path / 'start.extxyz'}@0:6", "relabel": True,
                      "validation_fraction": 0.34}
    config["selection"] = {"kind": "highest_sigma", "n": N_SELECT, "min_distance": 0.0}
    config["initial"].update(protocol="llpr",
                             stages=[{"kind": "mse", "epochs": 5}, {"kind": "llpr"}])
    config["fine_tune"]["stages"] = [{"kind": "mse", "epochs": 2}, {"kind": "llpr"}]
    config["plot"] = False
    result = run_active_learning(config)
    run = tmp_path / "run"
    train0 = read_structures(run / "round_00" / "train.extxyz")
    validation0 = read_structures(run / "round_00" / "validation.extxyz")
    assert (len(train0), len(validation0)) == (4, 2)
    for frame in train0 + validation0:
        atoms = frame.copy()
        atoms.calc = EMT()
        assert frame.info["REF_energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
    # one of the three new labels joins the validation set
    assert len(read_structures(run / "round_01" / "train.extxyz")) == 6
    assert len(read_structures(run / "round_01" / "validation.extxyz")) == 3
    assert result.rows[1]["n_train"] == 6 and result.rows[1]["n_validation"] == 3
    pool = ase.io.read(run / "round_01" / "candidates.extxyz", ":")
    sigma = np.array([f.info["max_forces_uncertainty"] for f in pool])
    chosen = [f.info["al_pool_index"] for f in ase.io.read(run / "round_01" / "selected.extxyz",
                                                            ":")]
    assert chosen == np.argsort(-sigma, kind="stable")[:N_SELECT].tolist()
    assert not (run / "rounds.png").exists()


# --- selection -----------------------------------------------------------------------------------
def test_structure_features_are_per_structure_means_and_sums():
    frames = cu_frames(3, 5)
    model = tiny_model(species=(29,), frames=frames)
    np.testing.assert_allclose(structure_features(model, frames), manual_features(model, frames),
                               atol=1e-12)
    np.testing.assert_allclose(structure_features(model, frames, "sum"),
                               13 * manual_features(model, frames), atol=1e-11)


def test_farthest_point_sampling_matches_brute_force_and_skips_duplicates():
    rng = np.random.default_rng(3)
    distinct = rng.normal(size=(12, 5))
    pool = np.vstack([distinct, distinct[[2, 7, 7]]])  # three duplicates
    reference = rng.normal(size=(4, 5))
    for ref in (reference, np.zeros((0, 5))):
        picked = farthest_point_sampling(pool, 8, ref if len(ref) else None)
        assert picked == brute_force_fps(pool, ref, 8)
        assert len({tuple(pool[i]) for i in picked}) == len(picked) == 8
    picked = farthest_point_sampling(pool, 50, reference)  # more than the distinct points
    assert len(picked) == 12
    assert len({tuple(pool[i]) for i in picked}) == 12
    # a pool point equal to a reference point is never picked
    assert 0 not in farthest_point_sampling(np.vstack([reference[:1], distinct]), 12, reference)


def test_highest_sigma_takes_the_largest_and_skips_near_duplicates():
    features = np.array([[0.0, 0.0], [0.01, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    sigma = np.array([5.0, 4.0, 3.0, 1.0, 2.0])
    assert highest_sigma(sigma, features, 3) == [0, 1, 2]
    assert highest_sigma(sigma, features, 3, min_distance=0.1) == [0, 2, 4]


# --- references ----------------------------------------------------------------------------------
def test_xtb_reference_matches_a_direct_tblite_call():
    tblite = pytest.importorskip("tblite.ase")
    frame = ase.io.read(ETHANOL, index=0)
    frame.info["md_step"] = 7
    (labelled,), failed = label([frame], make_reference(ReferenceConfig(kind="xtb")))
    assert failed == []
    direct = frame.copy()
    direct.calc = tblite.TBLite(method="GFN2-xTB", verbosity=0)
    energy, forces = direct.get_potential_energy(), direct.get_forces()
    assert labelled.get_potential_energy() == pytest.approx(energy, abs=1e-8)
    np.testing.assert_allclose(labelled.get_forces(), forces, atol=1e-8)
    assert abs(energy - frame.get_potential_energy()) > 100  # not the file's DFT label
    assert labelled.info["md_step"] == 7


def test_missing_tblite_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "tblite.ase", None)
    with pytest.raises(ConfigError, match=r"reference.kind: .*pip install"):
        make_reference(ReferenceConfig(kind="xtb"))


def test_import_reference_errors_name_the_key():
    assert isinstance(make_reference(ReferenceConfig(kind="import",
                                                     path="ase.calculators.emt.EMT")), EMT)
    with pytest.raises(ConfigError, match="reference.path: module 'ase.calculators.emt' has no"):
        make_reference(ReferenceConfig(kind="import", path="ase.calculators.emt.EMTT"))
    with pytest.raises(ConfigError, match="reference.path: cannot import module"):
        make_reference(ReferenceConfig(kind="import", path="no_such_module.Calc"))
    with pytest.raises(ConfigError, match="reference.kwargs: rejected"):  # needs atoms
        make_reference(ReferenceConfig(kind="import",
                                       path="ase.calculators.singlepoint.SinglePointCalculator"))
    with pytest.raises(ConfigError, match="reference.path: ase.Atoms built a Atoms, not an ASE"):
        make_reference(ReferenceConfig(kind="import", path="ase.Atoms"))


# --- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"selection": {"nn": 3}}, "selection.nn: unknown option (did you mean 'n'?)"),
    ({"selection": {"kind": "random"}}, "selection.kind: expected one of"),
    ({"md": {"dynamics": {"kind": "langevin", "temperature_K": 300}, "actions": [
        {"kind": "save"}]}}, "md.dynamics.friction_per_fs: required for kind 'langevin'"),
    ({"md": {"actions": [{"kind": "log"}]}}, "md.actions: needs a save action"),
    ({"md": {"actions": [{"kind": "save", "patience_steps": 0}]}},
     "md.actions[0].patience_steps: expected >= 1"),
    ({"initial": {"stages": [{"kind": "llpr"}, {"kind": "mse"}, {"kind": "force-nll"}]}},
     r"initial.stages[0].kind: protocol two-step-llpr expects 'mse'"),
    ({"initial": {"protocol": "mse", "model": {"n_members": 1}}},
     "fine_tune.stages[1].kind: llpr needs model.n_members >= 2"),
    ({"reference": {"kind": "import"}}, "reference.path: required for kind 'import'"),
    ({"walkers": {"steps": 0}}, "walkers.steps: expected >= 1"),
    ({"stopping": {"min_candidate_rate": 2}}, "stopping.min_candidate_rate: expected 0 to 1"),
    ({"data": {"train_file": ""}}, "data.train_file: required"),
    ({"md": "missing_protocol.yaml"}, "md: missing_protocol.yaml: no such file"),
])
def test_config_errors_name_the_dotted_key(change, message):
    base = {"data": {"train_file": "x.extxyz"},
            "md": {"actions": [{"kind": "save"}]}}
    for key, value in change.items():
        base[key] = value
    with pytest.raises(ConfigError) as err:
        load_al_config(base)
    assert message in str(err.value)


def test_cli_reports_config_errors_and_prints_defaults(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"train_file": "x"}, "md": {"actions": [
        {"kind": "save"}]}, "selection": {"nn": 3}}))
    assert main(["active-learn", str(bad)]) == 2
    assert "selection.nn: unknown option (did you mean 'n'?)" in capsys.readouterr().err
    assert main(["active-learn", "--print-defaults"]) == 0
    text = capsys.readouterr().out
    assert "min_candidate_rate: 0.01" in text and "# Frames labelled per round" in text
    data = yaml.safe_load(text)
    data.update({"data": {"train_file": "x"}, "md": {"actions": [{"kind": "save"}]}})
    assert isinstance(from_dict(ActiveLearningConfig, data), ActiveLearningConfig)
    assert template(ActiveLearningConfig) in text
    protocol = ROOT / "md_protocols" / "nvt_water_300K.yaml"  # md as a protocol file
    config = load_al_config({"data": {"train_file": "x"}, "md": str(protocol)})
    assert config.md_config().dynamics.kind == "langevin"
