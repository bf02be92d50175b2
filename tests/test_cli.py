"""The ``crackcls`` command as a terminal user meets it: help text and the MLflow UI link."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import subprocess_env

from crackcls import cli
from crackcls.tracking import store


def help_text(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_is_plain_text_with_every_command_and_examples(capsys):
    text = help_text(capsys=capsys)
    assert "``" not in text and ":func:" not in text  # no reStructuredText markup
    assert text.startswith("usage: crackcls [-h] <command> ...")
    for command in ("stage", "evaluate", "promote", "predict", "scan", "ui-link"):
        assert f"\n    {command} " in text, command
    assert "examples:\n  crackcls predict photos/" in text  # kept as written, not re-wrapped
    assert "crackcls <command> --help" in text


@pytest.mark.parametrize("command", ["predict", "scan", "evaluate", "promote", "stage", "ui-link"])
def test_command_help_is_plain_text(command, capsys):
    text = help_text(command, capsys=capsys)
    assert text.startswith(f"usage: crackcls {command}")
    assert "``" not in text


def test_help_does_not_load_tensorflow():
    code = "import sys\nfrom crackcls import cli\ncli.build_parser().format_help()\nprint('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_ui_link_opens_the_training_runs_and_tags_the_experiment(tiny_project, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["ui-link", "--base", "http://127.0.0.1:5123/"])
    assert exited.value.code == 0
    link = capsys.readouterr().out.strip()
    experiment = store.client().get_experiment_by_name("tests")  # TINY_PARAMS' experiment
    assert link == f"http://127.0.0.1:5123/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_experiment_from_before_the_tag_gets_it(tiny_project):
    store.configure_uri_only()
    experiment_id = store.client().create_experiment("older")
    assert store.configure("older") == experiment_id
    assert store.client().get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
