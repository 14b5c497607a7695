"""Model files: round trip, atomic writes, clear errors for bad files."""

import pytest
import torch

from conftest import tiny_model
from shallow_ensembles import load_model, save_model
from shallow_ensembles.data import Batch
from shallow_ensembles.errors import ModelFileError


def test_round_trip_gives_identical_predictions(tmp_path, ethanol_frames):
    model = tiny_model(frames=ethanol_frames[:3])
    model.alpha_energy.fill_(1.7)
    model.alpha_forces.fill_(0.8)
    path = save_model(model, tmp_path / "m.pt", provenance={"protocol": "test"})
    loaded = load_model(path)
    batch = Batch.from_atoms(ethanol_frames[:3], model.cutoff)
    a = model.predict(batch, member_forces=True, calibrated=True)
    b = loaded.predict(batch, member_forces=True, calibrated=True)
    for key in ("energy_ensemble", "forces", "forces_ensemble"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert loaded.provenance["protocol"] == "test"
    assert loaded.provenance["torch_version"] == torch.__version__
    assert float(loaded.alpha_energy) == pytest.approx(1.7)
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="not a torch file"):
        load_model(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(ModelFileError, match="not a shallow-ensembles model file"):
        load_model(tmp_path / "foreign.pt")
    path = save_model(tiny_model(), tmp_path / "ok.pt")
    data = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated.pt"):
        load_model(tmp_path / "truncated.pt")
