"""The one loader of safetensors artifacts (`ebm.checkpoint.read_artifact`): any kind, checked the same way."""

import json

import pytest
import torch
from safetensors.torch import save as save_tensors
from torch import nn

from ebm import checkpoint, runs
from ebm.checkpoint import Kind, WeightsError, artifact_bytes, model_to_bytes, read_artifact, read_header
from ebm.classifier import ClassifierConfig, MnistClassifier, load_classifier, save_classifier
from ebm.training import TrainConfig, build_model

TINY = TrainConfig(ae_hidden_dim=8, ebm_hidden_dim=8)
PROBE = Kind("test-probe/1", "a probe file", "probe {name} is missing")


def probe_build(header):
    return nn.Linear(*json.loads(header.metadata["shape"]))


def test_a_new_kind_is_a_format_tag_and_a_build_function(tmp_path):
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    data = artifact_bytes(layer, PROBE, {"shape": "[3, 2]", "extra": json.dumps({"note": 1})})
    loaded, header = read_artifact(data, PROBE, probe_build, name="p")
    torch.testing.assert_close(loaded.weight, layer.weight)
    assert header.extra == {"note": 1} and header.shapes == {"weight": (2, 3), "bias": (2,)} and not loaded.training
    with pytest.raises(WeightsError, match=r"^p: tensors do not match the architecture; missing \[\], "
                                           r"unexpected \['bias'\]"):
        read_artifact(data, PROBE, lambda h: nn.Linear(3, 2, bias=False), name="p")
    with pytest.raises(WeightsError, match="^p is not a probe file"):
        read_artifact(model_to_bytes(build_model(TINY)), PROBE, probe_build, name="p")
    with pytest.raises(WeightsError, match="^probe .*nothing.safetensors is missing$"):
        read_artifact(tmp_path / "nothing.safetensors", PROBE, probe_build)


def test_the_header_is_read_without_the_tensors(tmp_path):
    data = model_to_bytes(build_model(TINY), {"dataset": "mnist"})
    header_end = 8 + int.from_bytes(data[:8], "little")
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:header_end + 10])  # the tensors cut short: the listing still reads the header
    assert read_header(path).extra == {"dataset": "mnist"} and runs.read_extra(path) == {"dataset": "mnist"}
    with pytest.raises(WeightsError, match="is not a valid safetensors file"):
        checkpoint.load_model(path)


def test_files_above_the_size_cap_are_refused_before_they_are_read(tmp_path, monkeypatch):
    path = tmp_path / "big.safetensors"
    path.write_bytes(model_to_bytes(build_model(TINY)))
    monkeypatch.setattr(checkpoint, "MAX_FILE_BYTES", 1000)
    with pytest.raises(WeightsError, match=r"big\.safetensors is [\d,]+ bytes, above the 1,000 an artifact may have"):
        checkpoint.load_model(path)
    with pytest.raises(WeightsError, match=r"^upload is [\d,]+ bytes, above the 1,000"):  # bytes in memory, too
        checkpoint.model_from_bytes(path.read_bytes(), name="upload")


@pytest.mark.parametrize("extra,match", [("{not json", "'extra' is not valid JSON"),
                                         ("[1, 2]", "'extra' must be a JSON object, got list")])
def test_a_classifier_with_bad_extra_metadata_is_refused_by_name(tmp_path, extra, match):
    model = MnistClassifier(ClassifierConfig(channels1=2, channels2=2, feature_dim=4))
    metadata = {"format": "mnist-ebm-classifier/1", "config": json.dumps(model.config.__dict__), "extra": extra}
    path = tmp_path / "c.safetensors"
    path.write_bytes(save_tensors(dict(model.state_dict()), metadata=metadata))
    with pytest.raises(WeightsError, match=f"c.safetensors: metadata field {match}"):
        load_classifier(path)


def test_kinds_are_told_apart_by_their_format_tag(tmp_path):
    path = save_classifier(MnistClassifier(ClassifierConfig(channels1=2, channels2=2, feature_dim=4)),
                           tmp_path / "c.safetensors")
    assert runs.read_extra(path) is None  # not a model: the runs list skips it
    with pytest.raises(WeightsError, match="is not an mnist-ebm weights file"):
        checkpoint.load_model(path)
