"""params.yaml validation: one clear error naming the key and the allowed values."""

from __future__ import annotations


import pytest
import yaml

from conftest import committed_file_text
from crackcls.config import Config, ConfigError, load_config, parse_config
from crackcls.model.settings import BACKBONES


def test_repository_params_are_valid(tmp_path):
    (tmp_path / "params.yaml").write_text(committed_file_text("params.yaml"))
    config = load_config(tmp_path / "params.yaml")
    assert [source.name for source in config.data.sources] == ["mendeley", "sdnet2018"]
    assert config.data.sources[1].parents.match("7001-115").group("parent") == "7001"
    assert config.data.split.train == pytest.approx(0.70)
    assert config.model.backbone == "mobilenet_v2"
    assert config.registry.promote_metric == "f1"


def test_defaults_match_the_documented_ones():
    config = parse_config({})
    assert (config.data.split.train, config.data.split.val, config.data.split.test) == (0.70, 0.15, 0.15)
    assert config.data.max_per_class is None
    assert config.model.weights == "imagenet"
    assert config.model.fine_tune_layers == 0


@pytest.mark.parametrize(
    ("params", "fragments"),
    [
        ({"model": {"backbone": "vgg16"}}, ["model.backbone", "'vgg16'", *BACKBONES]),
        ({"train": {"epochs": 0}}, ["train.epochs", "greater than 0"]),
        ({"train": {"epochs": -3}}, ["train.epochs"]),
        ({"data": {"split": {"train": 0.8, "val": 0.15, "test": 0.15}}}, ["data.split", "sum to 1"]),
        ({"model": {"image_size": 16}}, ["model.image_size", "between"]),
        ({"model": {"image_size": 5000}}, ["model.image_size"]),
        ({"model": {"weights": "no/such/file.h5"}}, ["model.weights", "no/such/file.h5"]),
        ({"registry": {"promote_metric": "speed"}}, ["registry.promote_metric", "f1", "roc_auc"]),
        ({"data": {"sources": ["/no/such/folder"]}}, ["data.sources.0", "/no/such/folder", "Positive/"]),
        ({"data": {"source": "sample"}}, ["data.source", "now data.sources", "sources: [sample]"]),
        ({"data": {"sources": []}}, ["data.sources", "at least 1"]),
        ({"data": {"sources": ["sample", "sample"]}}, ["data.sources", "mendeley listed twice"]),
        ({"data": {"sources": [{"name": "Site A", "path": "sample/mendeley"}]}}, ["data.sources.0.name", "lower-case"]),
        ({"data": {"sources": [{"name": "a", "path": "sample/mendeley", "parent_pattern": "(x"}]}}, ["regular expression"]),
        ({"data": {"sources": [{"name": "a", "path": "sample/mendeley", "parent_pattern": "^(.+)-"}]}}, ["(?P<parent>"]),
        ({"data": {"sources": [{"name": "a", "kind": "mendeley", "path": "x"}]}}, ["takes no path"]),
        ({"data": {"download": {"mendeley": {"sha256": "abc"}}}}, ["data.download.mendeley.sha256", "64 hexadecimal"]),
        ({"data": {"download": {"sdnet2018": {"md5": "abc"}}}}, ["data.download.sdnet2018.md5", "32 hexadecimal"]),
        ({"train": {"balance": "equal"}}, ["train.balance", "source_class"]),
        ({"train": {"precision": "fp8"}}, ["train.precision", "mixed_bfloat16"]),
        ({"model": {"compact": {"stem_stride": 3}}}, ["model.compact.stem_stride"]),
        ({"model": {"compact": {"filters": [32, 2048]}}}, ["model.compact.filters", "between 4 and 1024"]),
        ({"model": {"dropout": 1.5}}, ["model.dropout"]),
        ({"train": {"epocs": 3}}, ["train.epocs", "unknown key"]),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(params, fragments):
    with pytest.raises(ConfigError) as caught:
        parse_config(params)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message  # one line, not a pydantic dump


def test_folder_source_needs_both_class_folders_with_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos" / "Positive").mkdir(parents=True)
    (tmp_path / "photos" / "Negative").mkdir()
    (tmp_path / "photos" / "Positive" / "a.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="Negative.*zero images"):
        parse_config({"data": {"sources": ["photos"]}})
    (tmp_path / "photos" / "Negative" / "b.png").write_bytes(b"x")
    (source,) = parse_config({"data": {"sources": ["photos"]}}).data.sources
    assert (source.name, source.kind, source.path, source.parents) == ("photos", "folder", "photos", None)


def test_short_forms_name_the_bundled_samples_and_sdnet_parents(monkeypatch):
    from conftest import REPO_ROOT

    monkeypatch.chdir(REPO_ROOT)
    mendeley, sdnet = parse_config({"data": {"sources": ["sample", "sdnet2018-sample"]}}).data.sources
    assert (mendeley.name, mendeley.path, mendeley.parents) == ("mendeley", "sample/mendeley", None)
    assert (sdnet.name, sdnet.path) == ("sdnet2018", "sample/sdnet2018")
    assert sdnet.parents.match("027-22_2").group("parent") == "027"
    # a mapping for the public set without a pattern still splits by parent
    (full,) = parse_config({"data": {"sources": [{"name": "sdnet2018", "kind": "sdnet2018"}]}}).data.sources
    assert full.parents.match("7001-1").group("parent") == "7001"


def test_weights_file_is_accepted_when_it_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "backbone.weights.h5").write_bytes(b"h5")
    assert parse_config({"model": {"weights": "backbone.weights.h5"}}).model.weights == "backbone.weights.h5"


def test_load_config_reports_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "params.yaml")


def test_config_is_frozen_and_round_trips_through_yaml():
    config = parse_config({"train": {"epochs": 7}})
    with pytest.raises(Exception):
        config.train.epochs = 8  # type: ignore[misc]
    dumped = yaml.safe_load(yaml.safe_dump(config.model_dump(mode="json")))
    assert Config.model_validate(dumped) == config
