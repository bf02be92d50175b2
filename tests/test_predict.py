"""``crackcls predict`` on a tiny trained project: inputs, formats, thresholds, skips, models, --explain."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO_ROOT, trained_tiny_project, use_project_store

from crackcls import cli
from crackcls.tracking import store
from crackcls.util.errors import CrackclsError
from crackcls.jobs import predict

CHALLENGER = "models:/crackcls@challenger"
KERAS_FILE = "models/model.keras"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One pipeline run (model registered as @challenger, no @champion) shared by this module."""
    with trained_tiny_project(tmp_path_factory, "predict") as project:
        yield project


@pytest.fixture
def project(trained: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_project_store(monkeypatch, trained)
    return trained


@pytest.fixture
def odd_files(tmp_path: Path) -> Path:
    """Two good photos (same name, different folders) and two files named .jpg that are not images."""
    folder = tmp_path / "inbox"
    (folder / "nested" / "deeper").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "sample" / "mendeley" / "Positive" / "00047.jpg", folder / "photo.jpg")
    shutil.copy(REPO_ROOT / "sample" / "mendeley" / "Negative" / "00254.jpg", folder / "nested" / "deeper" / "photo.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a picture\n")
    return folder


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        cli.main(["predict", *argv])
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def probabilities(result: predict.PredictResult) -> dict[str, float]:
    return {p.path: p.crack_probability for p in result.predictions}


def test_files_folders_and_globs_are_expanded_once_each(project):
    result = predict.run(["sample/mendeley/Positive/00047.jpg", "sample", "sample/mendeley/Negative/*.jpg"], KERAS_FILE)
    paths = [p.path for p in result.predictions]
    assert len(paths) == 80 and len(set(paths)) == 80  # the folder holds 40 + 40; duplicates collapse
    assert paths[0] == "sample/mendeley/Positive/00047.jpg"
    assert {p.label for p in result.predictions} <= {"crack", "no_crack"}
    for p in result.predictions:
        assert 0.0 <= p.crack_probability <= 1.0 and p.threshold == 0.5
        assert p.label == ("crack" if p.crack_probability >= 0.5 else "no_crack")

    recursive = predict.run(["sample/**/*.jpg"], KERAS_FILE)
    assert [p.path for p in recursive.predictions] == sorted(paths)


def test_missing_inputs_and_bad_options_are_clear_errors(project):
    with pytest.raises(CrackclsError, match="no such file or folder"):
        predict.run(["sample/nope.jpg"], KERAS_FILE)
    with pytest.raises(CrackclsError, match="matches no files"):
        predict.run(["sample/*.heic"], KERAS_FILE)
    with pytest.raises(CrackclsError, match="between 0 and 1"):
        predict.run(["sample"], KERAS_FILE, threshold=1.5)


def test_formats_and_output_file(project, odd_files, capsys, tmp_path):
    code, out, err = run_cli(capsys, str(odd_files), "--model", KERAS_FILE)
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["path", "label", "crack_probability", "threshold", "familiarity", "unfamiliar"]
    assert len(lines) == 2
    assert "2 images predicted with models/model.keras" in err

    code, out, _ = run_cli(capsys, str(odd_files), "--model", KERAS_FILE, "--format", "json")
    rows = json.loads(out)
    assert [Path(r["path"]).relative_to(odd_files).as_posix() for r in rows] == ["nested/deeper/photo.jpg", "photo.jpg"]
    assert set(rows[0]) == {"path", "label", "crack_probability", "threshold", "familiarity", "unfamiliar"}

    code, out, _ = run_cli(capsys, str(odd_files), "--model", KERAS_FILE, "--format", "csv")
    from_csv = list(csv.DictReader(io.StringIO(out)))
    assert [r["path"] for r in from_csv] == [r["path"] for r in rows]
    for as_csv, as_json in zip(from_csv, rows):
        assert float(as_csv["crack_probability"]) == pytest.approx(as_json["crack_probability"], abs=1e-6)
        assert as_csv["label"] == as_json["label"]

    target = tmp_path / "out" / "predictions.json"  # the suffix picks the format
    code, out, err = run_cli(capsys, str(odd_files), "--model", KERAS_FILE, "--output", str(target))
    assert code == 0 and out == "" and f"wrote 2 predictions to {target}" in err
    assert json.loads(target.read_text()) == rows
    assert sorted(p.name for p in target.parent.iterdir()) == ["predictions.json"]  # no temporary left behind


def test_unreadable_files_are_skipped_with_reasons(project, odd_files, capsys):
    result = predict.run([str(odd_files)], KERAS_FILE)
    assert len(result.predictions) == 2
    assert result.skipped.by_reason() == {"empty file": 1, "not an image": 1}
    summary = predict.summary(result)
    assert "skipped 2 unreadable files (1 empty file, 1 not an image)" in summary
    assert f"{odd_files / 'empty.jpg'}: empty file" in summary and f"{odd_files / 'notes.jpg'}: not an image" in summary

    code, out, err = run_cli(capsys, str(odd_files / "empty.jpg"), str(odd_files / "notes.jpg"), "--model", KERAS_FILE)
    assert code == 1 and "0 images predicted" in err and "skipped 2" in err


def test_threshold_changes_labels(project):
    baseline = predict.run(["sample/mendeley/Positive"], KERAS_FILE)
    probs = sorted(probabilities(baseline).values())
    middle = (probs[len(probs) // 2 - 1] + probs[len(probs) // 2]) / 2
    assert probs[0] < middle < probs[-1]
    split = predict.run(["sample/mendeley/Positive"], KERAS_FILE, threshold=middle)
    assert probabilities(split) == probabilities(baseline)
    labels = [p.label for p in split.predictions]
    assert labels.count("crack") == labels.count("no_crack") == 20
    assert {p.threshold for p in split.predictions} == {middle}
    assert {p.label for p in predict.run(["sample/mendeley/Positive"], KERAS_FILE, threshold=0.0).predictions} == {"crack"}


def test_explain_writes_one_overlay_per_readable_image(project, odd_files, capsys, tmp_path):
    out_dir = tmp_path / "gradcam"
    code, out, err = run_cli(capsys, str(odd_files), "--model", KERAS_FILE, "--explain", str(out_dir), "--format", "json")
    assert code == 0
    rows = json.loads(out)
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == ["photo-2_gradcam.png", "photo_gradcam.png"]  # same name twice: no overwrite
    assert sorted(Path(r["explanation"]).name for r in rows) == written
    for name in written:
        assert (out_dir / name).read_bytes()[:4] == b"\x89PNG"


def test_registry_and_file_models_agree(project):
    from_registry = predict.run(["sample/mendeley/Negative"], CHALLENGER)
    from_file = predict.run(["sample/mendeley/Negative"], KERAS_FILE, batch_size=7)
    assert from_registry.model == CHALLENGER
    assert probabilities(from_registry).keys() == probabilities(from_file).keys()
    for path, probability in probabilities(from_registry).items():
        assert probability == pytest.approx(probabilities(from_file)[path], abs=1e-5)


def test_default_model_is_the_champion(project, capsys, monkeypatch, tmp_path):
    with pytest.raises(CrackclsError, match=r"no @champion version .*crackcls promote.*--model"):
        predict.run(["sample/mendeley/Positive/00047.jpg"])
    code, out, err = run_cli(capsys, "sample/mendeley/Positive/00047.jpg")
    assert code == 2 and err.startswith("error: registered model 'crackcls' has no @champion")

    store.configure_uri_only()
    client = store.client()
    client.set_registered_model_alias("crackcls", "champion", "1")
    try:
        champion = predict.run(["sample/mendeley/Positive"])
        assert champion.model == "models:/crackcls@champion"
        assert probabilities(champion) == pytest.approx(probabilities(predict.run(["sample/mendeley/Positive"], CHALLENGER)), abs=1e-5)

        # Outside a project (no params.yaml), the default name "crackcls" and threshold 0.5 apply.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        image = shutil.copy(project / "sample/mendeley/Positive/00047.jpg", elsewhere / "x.jpg")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
        monkeypatch.chdir(elsewhere)
        outside = predict.run(["x.jpg"])
        assert outside.model == "models:/crackcls@champion" and outside.predictions[0].threshold == 0.5
        assert outside.predictions[0].crack_probability == pytest.approx(
            probabilities(champion)["sample/mendeley/Positive/00047.jpg"], abs=1e-5
        )
        assert Path(image).exists()
    finally:
        client.delete_registered_model_alias("crackcls", "champion")
