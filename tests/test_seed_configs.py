"""The reference ("seed project") configurations in experiments/: documented, valid, and runnable.

Fast checks: the README table, the queue block and the per-experiment YAML files
agree, and every configuration, applied to params.yaml exactly as ``dvc exp run -S``
applies it, passes crackcls.config validation.

Slow (e2e) checks: the two configurations that take code paths the default
params never reach run through the stages in-process at a tiny size: the 70/30
split (no validation split at all) and ResNet50 with fine-tuning.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import REPO_ROOT, TINY_PARAMS, committed_file_text, committed_params, deep_merge, pretrained_params, run_pipeline_in_process, write_params

from crackcls.tracking import store
from crackcls.config import load_config

EXPERIMENTS = REPO_ROOT / "experiments"
README = EXPERIMENTS / "README.md"
NO_VAL = "mnv2-split70-30"
FINE_TUNE = "resnet50-128px-finetune"


def parse_dvc_line(line: str) -> tuple[str, list[str], bool]:
    """``dvc exp run [--queue] -n NAME -S k=v ...`` → (name, ["k=v", ...], queued)."""
    words = shlex.split(line)
    assert words[:3] == ["dvc", "exp", "run"], line
    name, overrides, queued = None, [], False
    rest = iter(words[3:])
    for word in rest:
        if word == "--queue":
            queued = True
        elif word in ("-n", "--name"):
            name = next(rest)
        elif word in ("-S", "--set-param"):
            overrides.append(next(rest))
        else:
            raise AssertionError(f"unexpected argument {word!r} in: {line}")
    assert name, f"no -n NAME in: {line}"
    return name, overrides, queued


def table_rows() -> dict[str, tuple[str, list[str]]]:
    """name → (what it reproduces, overrides) from the README's markdown table."""
    rows = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|") or "dvc exp run" not in line:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"expected | name | reproduces | command |: {line}"
        name_cell, what, command_cell = cells
        command = re.fullmatch(r"`([^`]+)`", command_cell)
        assert command, f"the command cell must be one `code span`: {line}"
        name, overrides, queued = parse_dvc_line(command.group(1))
        assert not queued
        assert name_cell == f"`{name}`", f"the name column and -n disagree: {line}"
        assert name not in rows, f"{name} listed twice"
        rows[name] = (what, overrides)
    return rows


def queue_lines() -> dict[str, list[str]]:
    """name → overrides for every ``dvc exp run --queue`` line of the README's code blocks."""
    text = README.read_text(encoding="utf-8")
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("dvc exp run --queue"):
            name, overrides, queued = parse_dvc_line(line)
            assert queued and name not in found
            found[name] = overrides
    return found


def overrides_as_dict(overrides: list[str]) -> dict[str, object]:
    """``k=v`` strings → {dotted key: YAML-typed value}, as DVC/Hydra type them for these values."""
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        assert sep and key and value, item
        parsed[key] = yaml.safe_load(value)
    return parsed


def flatten(prefix: str, value) -> dict[str, object]:
    return store.flatten(prefix, value)


def seed_yaml(name: str) -> dict:
    return yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text(encoding="utf-8"))


def apply_like_dvc(tmp_path: Path, overrides: list[str]) -> Path:
    """params.yaml with the overrides applied by DVC's own ``-S`` code (Hydra override grammar)."""
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    params.write_text(committed_file_text("params.yaml"))
    apply_overrides(params, overrides)
    return params


SEEDS = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def test_the_five_seed_configurations_are_documented():
    rows = table_rows()
    assert len(rows) == 5
    assert sorted(rows) == SEEDS, "every table row needs experiments/<name>.yaml and vice versa"
    assert queue_lines().keys() == rows.keys(), "the queue block must queue exactly the table's experiments"
    text = README.read_text(encoding="utf-8")
    assert "dvc queue start" in text and "dvc queue status" in text
    for name, (what, _) in rows.items():
        assert what, f"{name}: say what it reproduces"


@pytest.mark.parametrize("name", SEEDS)
def test_table_queue_block_and_yaml_agree(name):
    _, overrides = table_rows()[name]
    assert queue_lines()[name] == overrides
    assert overrides_as_dict(overrides) == flatten("", seed_yaml(name))
    header = (EXPERIMENTS / f"{name}.yaml").read_text(encoding="utf-8")
    assert f"# dvc exp run -n {name} {' '.join('-S ' + o for o in overrides)}\n" in header


@pytest.mark.parametrize("name", SEEDS)
def test_configuration_applies_to_params_yaml_and_validates(name, tmp_path):
    _, overrides = table_rows()[name]
    params_file = apply_like_dvc(tmp_path, overrides)
    config = load_config(params_file)
    applied = flatten("", config.model_dump(mode="json"))
    for key, value in overrides_as_dict(overrides).items():
        assert key in applied, f"{key} is not a params.yaml key"
        assert applied[key] == value, f"{key}: {applied[key]!r} != {value!r}"
    # the YAML form, deep-merged, gives the same params as DVC's -S
    merged = deep_merge(committed_params(), seed_yaml(name))
    assert yaml.safe_load(params_file.read_text()) == merged


def test_no_validation_split_is_what_the_70_30_configuration_asks_for():
    _, overrides = table_rows()[NO_VAL]
    split = overrides_as_dict(overrides)
    assert (split["data.split.train"], split["data.split.val"], split["data.split.test"]) == (0.7, 0, 0.3)


def tiny(name: str, **extra) -> dict:
    """A seed configuration shrunk to test size: tiny images and epochs, untrained backbone."""
    return deep_merge(deep_merge(TINY_PARAMS, seed_yaml(name)), {"model": {"image_size": 48}, **extra})


def history_rows(project: Path) -> list[dict[str, str]]:
    with open(project / "reports/train_history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def pretrained_no_val(project: Path, **extra) -> dict:
    """The 70/30 configuration on its own backbone with a weights file: the path ImageNet weights take."""
    weights = pretrained_params(project.parent / "weights", "mobilenet_v2", 48)
    return deep_merge(tiny(NO_VAL, **extra), weights)


@pytest.mark.e2e
def test_70_30_configuration_trains_and_evaluates_without_a_validation_split(tiny_project):
    write_params(tiny_project, pretrained_no_val(tiny_project))
    results = run_pipeline_in_process(tiny_project)
    assert results["features"]["feature_cache"] is True and results["features"]["val_images"] == 0

    split = json.loads((tiny_project / "reports/split.json").read_text())
    assert split["val"]["total"] == 0
    assert split["train"]["total"] == 56 and split["test"]["total"] == 24
    rows = history_rows(tiny_project)
    assert rows and not any(k.startswith("val_") for k in rows[0])
    metrics = json.loads((tiny_project / "reports/metrics.json").read_text())
    assert metrics["n"] == 24

    store.configure_uri_only()
    run = mlflow.get_run(results["train"]["run_id"])
    assert run.data.params["data.split.val"] == "0.0"
    assert "loss" in run.data.metrics and "test_f1" in run.data.metrics
    assert "val_loss" not in run.data.metrics


@pytest.mark.e2e
def test_70_30_split_with_images_instead_of_the_feature_cache(tiny_project):
    write_params(tiny_project, pretrained_no_val(tiny_project, train={"feature_cache": False}))
    results = run_pipeline_in_process(tiny_project)
    assert results["features"] == {"feature_cache": False}
    assert json.loads((tiny_project / "reports/split.json").read_text())["val"]["total"] == 0
    assert not any(k.startswith("val_") for k in history_rows(tiny_project)[0])
    assert (tiny_project / "reports/metrics.json").is_file()


@pytest.mark.e2e
def test_70_30_split_from_scratch_early_stops_on_the_training_loss(tiny_project):
    """No validation split on the from-scratch path: early stopping and the logged metrics use the training loss."""
    write_params(tiny_project, tiny(NO_VAL, model={"backbone": "compact_cnn", "image_size": 48}))
    results = run_pipeline_in_process(tiny_project)
    assert results["features"] == {"feature_cache": False}
    rows = history_rows(tiny_project)
    assert rows and {row["phase"] for row in rows} == {"scratch"}
    assert not any(k.startswith("val_") for k in rows[0])
    store.configure_uri_only()
    run = mlflow.get_run(results["train"]["run_id"])
    assert run.data.metrics["batchnorm_recalibration_images"] > 0 and "val_loss" not in run.data.metrics


@pytest.mark.e2e
def test_resnet50_fine_tune_configuration_runs_both_phases(tiny_project):
    weights = pretrained_params(tiny_project.parent / "weights", "resnet50", 48)
    write_params(tiny_project, deep_merge(tiny(FINE_TUNE, train={"epochs": 2, "fine_tune_epochs": 1}), weights))
    results = run_pipeline_in_process(tiny_project)

    phases = [row["phase"] for row in history_rows(tiny_project)]
    assert phases.count("fine_tune") == 1 and phases[-1] == "fine_tune"
    assert phases.count("frozen") >= 1
    assert results["train"]["epochs_trained"] == len(phases)

    store.configure_uri_only()
    run = mlflow.get_run(results["train"]["run_id"])
    assert run.data.params["model.backbone"] == "resnet50"
    assert run.data.params["model.fine_tune_layers"] == "30"
    assert 0 < int(run.data.params["fine_tune_layers_unfrozen"]) <= 30
    assert "test_f1" in run.data.metrics
    losses = store.client().get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(1, len(phases) + 1)), "epochs are stepped across both phases"
