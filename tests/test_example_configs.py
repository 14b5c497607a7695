"""Every training protocol has an example config in examples/configs/, and every example
config parses (the train configs with their data file found relative to the config)."""

from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from shallow_ensembles.config import from_dict
from shallow_ensembles.training.config import TrainConfig, load_train_config
from shallow_ensembles.training.stages import PROTOCOLS

CONFIGS = sorted((ROOT / "examples" / "configs").glob("*.yaml"))
TRAIN_CONFIGS = [p for p in CONFIGS if "protocol" in yaml.safe_load(p.read_text())]


def test_every_protocol_has_an_example_config():
    shipped = {yaml.safe_load(p.read_text())["protocol"] for p in TRAIN_CONFIGS}
    assert set(PROTOCOLS) <= shipped, sorted(set(PROTOCOLS) - shipped)


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_train_config_parses_and_finds_its_data(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # paths must resolve from the config's folder, not from here
    data = yaml.safe_load(path.read_text())
    target = (path.parent / data["data"]["train_file"].partition("@")[0]).resolve()
    if ROOT.resolve() in target.parents:  # shipped data: found from the config's folder
        config = load_train_config(path)
        assert Path(config.data.train_file).resolve() == target and target.is_file()
    else:  # data outside the repository (not in a fresh clone): the schema still holds
        config = from_dict(TrainConfig, data)
    kinds = [stage.kind for stage in config.resolved_stages()]
    assert tuple(kinds) == tuple(kind for kind, _ in PROTOCOLS[config.protocol])


@pytest.mark.parametrize("path", [p for p in CONFIGS if p not in TRAIN_CONFIGS],
                         ids=lambda p: p.name)
def test_active_learning_config_parses(path):
    from shallow_ensembles.active_learning.config import load_al_config

    assert load_al_config(path).data.train_file
