"""``crackcls export`` and the ONNX Runtime path: every format, parity with Keras, drift, no TensorFlow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import REPO_ROOT, SHARED_SAMPLE, build_mosaic, subprocess_env, trained_tiny_project, use_project_store

from crackcls.util.errors import CrackclsError

CHALLENGER = "models:/crackcls@challenger"
# Modules `predict --runtime onnx` on a model file must never import: together some 200 MB and seconds of start-up.
HEAVY = ("tensorflow", "keras", "mlflow", "pandas", "sklearn", "pyarrow", "requests")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    """A tiny trained project whose @challenger is exported to models/export (and logged to its run)."""
    from crackcls.jobs import export

    with trained_tiny_project(tmp_path_factory, "export") as project:
        yield project, export.run(CHALLENGER)


@pytest.fixture
def project(exported: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> Path:
    use_project_store(monkeypatch, exported[0])
    return exported[0]


def parity_images(limit: int = 400) -> tuple[np.ndarray, np.ndarray, str]:
    """Shared real images when present (the model never saw them), else the bundled sample's."""
    from crackcls.data.images import SkipReport, load_batch

    root = SHARED_SAMPLE if (SHARED_SAMPLE / "Positive").is_dir() else REPO_ROOT / "sample" / "mendeley"
    files, labels = [], []
    for label in ("Positive", "Negative"):
        found = sorted((root / label).glob("*.jpg"))[-limit // 2 :]
        files += found
        labels += [label == "Positive"] * len(found)
    images, kept = load_batch(files, 48, SkipReport())
    assert len(kept) == len(files)
    return images, np.array(labels), root.name


def test_export_writes_every_format_with_its_companions_and_logs_them(project, exported):
    result = exported[1]
    folder = project / "models" / "export"
    assert set(result["files"]) == {"saved_model", "onnx", "litert", "litert_int8"}
    for info in result["files"].values():
        assert (folder / info["path"]).exists() and info["bytes"] > 0 and len(info["sha256"]) == 64
    assert (folder / "model.decision.json").is_file() and (folder / "model.familiarity.npz").is_file()
    sidecar = json.loads((folder / "export.json").read_text())
    assert sidecar["input"] == {**sidecar["input"], "name": "image", "dtype": "uint8", "shape": [None, 48, 48, 3]}
    assert "bicubic" in sidecar["input"]["preprocessing"].lower() and sidecar["temperature_folded"] is True
    assert sidecar["litert_int8"]["mode"] in ("full", "weights") and sidecar["litert_int8"]["validation_images"] > 0
    assert sidecar["parity"]["onnx"]["max_abs_difference"] <= 1e-4
    assert sidecar["parity"]["litert_int8"]["label_agreement"] >= 0.995
    # int8 holds int8 weights: a quarter of the float file, give or take the graph
    assert result["files"]["litert_int8"]["bytes"] < 0.4 * result["files"]["litert"]["bytes"]

    version = mlflow.MlflowClient().get_model_version_by_alias("crackcls", "challenger")
    assert result["logged_to_run"] == version.run_id and result["tagged_version"] == str(version.version)
    assert set(version.tags["export_formats"].split(",")) == set(result["files"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(version.run_id, "export")}
    assert {"export/model.onnx", "export/export.json", "export/model.int8.tflite"} <= artifacts
    onnx_flavour = mlflow.pyfunc.load_model(f"runs:/{version.run_id}/onnx_model")
    assert "onnx" in onnx_flavour.metadata.flavors


def test_every_export_answers_as_the_keras_model_on_real_images(project):
    from crackcls.model import export
    from crackcls.model.inference import load_model_file

    model = load_model_file(project / "models" / "model.keras")
    images, labels, where = parity_images()
    checks = export.parity(model, project / "models" / "export", images, labels, 0.5)
    assert set(checks) == {"saved_model", "onnx", "litert", "litert_int8"}, where
    for fmt in ("saved_model", "onnx", "litert"):
        assert checks[fmt].max_abs_difference <= export.FLOAT_TOLERANCE, (fmt, where)
        assert checks[fmt].label_agreement == 1.0
    assert checks["onnx"].familiarity_max_abs_difference < 1e-3  # the same features, so the same familiarity
    assert checks["litert_int8"].label_agreement >= export.INT8_LABEL_AGREEMENT, where
    assert abs(checks["litert_int8"].accuracy_export - checks["litert_int8"].accuracy_keras) <= 0.005


def test_a_drifting_export_fails_and_leaves_the_previous_folder(project, monkeypatch):
    import onnx
    from onnx import numpy_helper

    from crackcls.jobs import export as export_job
    from crackcls.model import export

    real_write_onnx = export.write_onnx

    def drifting(model, target):  # noqa: ANN001, ANN202 - one weight nudged, as a broken converter would
        real_write_onnx(model, target)
        graph = onnx.load(str(target))
        weight = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
        onnx.save(graph, str(target))
        return target

    before = (project / "models" / "export" / "model.onnx").read_bytes()
    monkeypatch.setattr(export, "write_onnx", drifting)
    with pytest.raises(export.ExportDrift, match="onnx: max"):
        export_job.run(CHALLENGER, formats=("onnx",), log=False)
    assert (project / "models" / "export" / "model.onnx").read_bytes() == before
    assert not [p for p in (project / "models").iterdir() if p.name.startswith(".export.")]


def _predict_in_fresh_process(project: Path, args: list[str]) -> dict:
    """``crackcls predict`` in its own interpreter; its rows, and which heavy modules it ever imported."""
    code = (
        "import json, sys\n"
        "from crackcls.jobs import predict\n"
        f"result = predict.run({args!r}, model_spec='models/model.keras', runtime='onnx')\n"
        "rows = [[p.path, p.label, p.crack_probability, p.familiarity] for p in result.predictions]\n"
        "print(json.dumps({'rows': rows, 'skipped': result.skipped.skipped, 'shift': result.shift.p_value,\n"
        f"                  'imported': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=project, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_predict_on_onnx_runtime_gives_the_keras_answers_without_tensorflow(project, tmp_path):
    from crackcls.jobs import predict

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for path in sorted((REPO_ROOT / "sample" / "mendeley" / "Positive").glob("*.jpg"))[:15] + sorted(
        (REPO_ROOT / "sample" / "mendeley" / "Negative").glob("*.jpg")
    )[:15]:
        shutil.copy(path, inbox / path.name)
    (inbox / "notes.jpg").write_text("not a picture\n")
    (inbox / "empty.jpg").write_bytes(b"")
    onnx = _predict_in_fresh_process(project, [str(inbox)])
    assert onnx["imported"] == []  # a model file needs neither TensorFlow nor MLflow, nor what MLflow pulls in
    keras_result = predict.run([str(inbox)], "models/model.keras", runtime="keras")
    keras_rows = [[p.path, p.label, p.crack_probability, p.familiarity] for p in keras_result.predictions]
    assert [r[:2] for r in onnx["rows"]] == [r[:2] for r in keras_rows]
    assert np.allclose([r[2] for r in onnx["rows"]], [r[2] for r in keras_rows], atol=1e-4)
    assert np.allclose([r[3] for r in onnx["rows"]], [r[3] for r in keras_rows], atol=1e-3)
    assert sorted(map(tuple, onnx["skipped"])) == sorted(keras_result.skipped.skipped)
    assert onnx["shift"] == pytest.approx(keras_result.shift.p_value, rel=0.05, abs=1e-6)


def test_scan_on_onnx_runtime_matches_keras(project, tmp_path):
    from PIL import Image

    from crackcls.jobs import scan

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(build_mosaic(REPO_ROOT / "sample" / "mendeley", 3, 4, [(1, 1), (1, 2)], seed=5)).save(photos / "a.jpg", quality=95)
    Image.fromarray(build_mosaic(REPO_ROOT / "sample" / "mendeley", 2, 3, [], seed=6)).save(photos / "b.png")
    by_runtime = {runtime: scan.run([str(photos)], "models/model.keras", runtime=runtime) for runtime in ("keras", "onnx")}
    keras_scans, onnx_scans = (sorted(by_runtime[r].scans, key=lambda s: s.path) for r in ("keras", "onnx"))
    assert [s.verdict for s in onnx_scans] == [s.verdict for s in keras_scans]
    for k, o in zip(keras_scans, onnx_scans):
        assert k.grid.count == o.grid.count == (12 if k.path.endswith("a.jpg") else 6)
        assert np.allclose(k.probabilities, o.probabilities, atol=1e-4) and k.crack_tiles == o.crack_tiles
        assert np.allclose(k.familiarity, o.familiarity, atol=1e-3)
    assert by_runtime["onnx"].model.endswith("(ONNX Runtime)")


def test_the_onnx_runtime_without_an_export_says_how_to_make_one(project, tmp_path):
    from crackcls.jobs import predict

    lonely = tmp_path / "lonely.keras"
    shutil.copy(project / "models" / "model.keras", lonely)
    with pytest.raises(CrackclsError, match="crackcls export"):
        predict.run([str(REPO_ROOT / "sample" / "mendeley" / "Positive")], str(lonely), runtime="onnx")
    with pytest.raises(CrackclsError, match="--explain needs the Keras model"):
        predict.run([str(REPO_ROOT / "sample" / "mendeley" / "Positive")], "models/model.keras", explain_dir=str(tmp_path), runtime="onnx")
    not_onnx = tmp_path / "fake.onnx"
    not_onnx.write_bytes(b"not a graph")
    with pytest.raises(CrackclsError, match="cannot load ONNX model"):
        predict.run([str(REPO_ROOT / "sample" / "mendeley" / "Positive")], str(not_onnx))


def test_onnx_runtime_is_the_default_only_where_an_export_of_that_very_model_exists(project):
    from crackcls.jobs import predict

    images = [str(REPO_ROOT / "sample" / "mendeley" / "Positive")]
    assert predict.runtime_for("models/model.keras", None) == "onnx"  # export.json names this file's sha256
    assert predict.runtime_for(CHALLENGER, None) == "onnx"  # its run holds export/model.onnx
    assert predict.runtime_for("models/model.keras", None, explain=True) == "keras"  # Grad-CAM needs Keras
    assert predict.run(images, CHALLENGER).model == f"{CHALLENGER} (ONNX Runtime)"

    sidecar = project / "models" / "export" / "export.json"
    kept = sidecar.read_text()
    stale = json.loads(kept)
    stale["source_sha256"] = "0" * 64  # as if the model had been retrained since the export
    sidecar.write_text(json.dumps(stale))
    try:
        assert predict.runtime_for("models/model.keras", None) == "keras"
        assert predict.run(images, "models/model.keras").model == "models/model.keras"
        with pytest.raises(CrackclsError, match="made from another model file"):
            predict.run(images, "models/model.keras", runtime="onnx")
    finally:
        sidecar.write_text(kept)


def test_a_label_flip_counts_as_drift_unless_the_keras_probability_sits_on_the_threshold():
    from crackcls.model.export import LABEL_TIE_MARGIN, same_labels

    keras_prob = np.array([0.505, 0.495, 0.6, 0.3, 0.9])
    export_prob = np.array([0.499, 0.501, 0.45, 0.55, 0.91])  # every one but the last crosses 0.5
    assert same_labels(export_prob, keras_prob, 0.5).tolist() == [True, True, False, False, True]
    assert not same_labels(np.array([0.49]), np.array([0.5 + 2 * LABEL_TIE_MARGIN]), 0.5).any()
