"""The stage table: a stage kind or a protocol registered from here needs no edit elsewhere.

A toy initialiser (shrinks the member deviations) and a toy trained kind (every member's energy
MSE with the force NLL of the member forces) are registered, then run by ``train`` from a plain
config: the config validation, the template, the protocol runner, the trainer and the
objectives all read them from the table.
"""

import csv

import pytest
import torch

from conftest import ETHANOL
from shallow_ensembles.config import from_dict
from shallow_ensembles.errors import ConfigError
from shallow_ensembles.training import stages, train
from shallow_ensembles.training.config import StageConfig, TrainConfig

MODEL = {"n_members": 4, "bottleneck": 4, "dtype": "float64",
         "backbone": {"kind": "power-spectrum", "cutoff_A": 4.0, "n_radial": 4, "l_max": 2,
                      "n_channels": 3, "hidden": [12]}}


def shrink(model, stage, train_graphs, validation_graphs, generator, loss):
    """The toy initialiser: member deviations from the mean head halved."""
    with torch.no_grad():
        weight = model.head.weight
        mean = weight.mean(0, keepdim=True)
        weight.copy_(mean + 0.5 * (weight - mean))


@pytest.fixture
def toy_kinds():
    saved = dict(stages.STAGES), dict(stages.PROTOCOLS)
    stages.register_stage(stages.StageKind("toy-shrink", "halve the member deviations",
                                           initialise=shrink))
    stages.register_stage(stages.StageKind(
        "toy-member-force-nll", "every member's energy MSE + force NLL", energy="members",
        member_forces=True, schedule={"epochs": 2}))
    stages.register_protocol("toy", "random-heads", "toy-shrink")
    yield
    for table, entries in zip((stages.STAGES, stages.PROTOCOLS), saved, strict=True):
        table.clear()
        table.update(entries)


def config(tmp_path, name, **fields):
    data = {"data": {"train_file": str(ETHANOL), "n_train": 12, "n_validation": 6, "n_test": 6},
            "model": MODEL, "training": {"batch_size": 4, "threads": 1, "progress": False},
            "output_dir": str(tmp_path / name), **fields}
    return from_dict(TrainConfig, data)


def deviations(model):
    weight = model.head.weight.detach()
    return weight - weight.mean(0, keepdim=True)


def test_a_registered_initialiser_runs_in_a_named_and_a_custom_protocol(toy_kinds, tmp_path):
    heads = train(config(tmp_path, "heads", protocol="custom",
                         stages=[{"kind": "random-heads"}]))
    toy = train(config(tmp_path, "toy", protocol="toy"))
    custom = train(config(tmp_path, "custom", protocol="custom",
                          stages=[{"kind": "random-heads"}, {"kind": "toy-shrink"}]))
    torch.testing.assert_close(deviations(toy), 0.5 * deviations(heads))
    torch.testing.assert_close(deviations(custom), deviations(toy))
    assert toy.provenance["stages"] == ["random-heads", "toy-shrink"]


def test_a_registered_trained_kind_gets_its_loss_and_monitor(toy_kinds, tmp_path):
    cfg = config(tmp_path, "trained", protocol="custom",
                 stages=[{"kind": "toy-member-force-nll"}])  # 2 epochs: the kind's schedule
    train(cfg)
    with open(tmp_path / "trained" / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["kind"] for r in rows] == ["toy-member-force-nll"] * 2
    # member forces → a force NLL (can be negative) and the calibrated validation RLL_F logged
    assert all(r["val_rll_f"] != "" for r in rows)


def test_kinds_are_validated_and_listed_from_the_table(toy_kinds, tmp_path):
    with pytest.raises(ConfigError, match=r"stages\[0\].kind: expected one of .*toy-shrink"):
        config(tmp_path, "bad", protocol="custom", stages=[{"kind": "toy-shrnk"}])
    with pytest.raises(ConfigError, match=r"protocol: expected one of .*'toy'"):
        config(tmp_path, "bad", protocol="toyy")
    with pytest.raises(ConfigError, match=r"stages\[0\].kind: toy-shrink needs model.n_members"):
        config(tmp_path, "bad", protocol="custom", stages=[{"kind": "toy-shrink"}],
               model={**MODEL, "n_members": 1})
    assert config(tmp_path, "ok", protocol="custom",
                  stages=[{"kind": "toy-member-force-nll"}]).stages[0].epochs == 2
    listed = stages.kinds_template()
    assert "toy-shrink: halve the member deviations (no training)" in listed
    assert "toy: random-heads, toy-shrink" in listed


def test_protocol_defaults_come_from_the_table():
    from shallow_ensembles.training.config import protocol_stages

    fine_tune = protocol_stages("two-step-llpr")[-1]
    assert fine_tune.kind == "force-nll"
    assert {k: getattr(fine_tune, k) for k in stages.FINE_TUNE} == dict(stages.FINE_TUNE)
    assert [s.kind for s in protocol_stages("subsample")] == ["mse", "subsample"]
    assert protocol_stages("mse")[0].centring == "frames"  # the kind's own schedule
    assert from_dict(StageConfig, {"kind": "mse"}).centring == "frames"
    assert from_dict(StageConfig, {"kind": "mse", "centring": "atoms"}).centring == "atoms"


def test_a_stage_energy_nll_beta_overrides_the_loss_one(tmp_path):
    """An energy-NLL stage with ``energy_nll_beta: 0.5`` trains exactly as one with the
    global ``loss.energy_nll_beta: 0.5``, and not as the plain NLL."""
    def trained(name, stage_beta, loss_beta):
        stage = {"kind": "energy-nll", "epochs": 1}
        if stage_beta is not None:
            stage["energy_nll_beta"] = stage_beta
        return train(config(tmp_path, name, protocol="custom", stages=[stage],
                            loss={"energy_nll_beta": loss_beta})).state_dict()

    by_stage, by_loss, plain = (trained("stage", 0.5, 0.0), trained("loss", None, 0.5),
                                trained("plain", None, 0.0))
    assert all(torch.equal(by_stage[k], by_loss[k]) for k in by_stage)
    assert not all(torch.equal(by_stage[k], plain[k]) for k in by_stage)
    with pytest.raises(ConfigError, match="energy_nll_beta"):
        config(tmp_path, "bad", protocol="custom",
               stages=[{"kind": "energy-nll", "energy_nll_beta": 2.0}])
