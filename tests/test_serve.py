"""``mlflow models serve`` on the registered version: base64 images in, the same answers as ``crackcls predict``."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import (
    BIN_DIR,
    REPO_ROOT,
    build_mosaic,
    free_port,
    local_server,
    trained_tiny_project,
    subprocess_env,
    use_project_store,
)

from crackcls.jobs import predict
from crackcls.tracking.serving import encode_file

MODEL_URI = "models:/crackcls@challenger"
# The command the README shows, verbatim but for the port.
CURL = (
    "curl -s http://127.0.0.1:PORT/invocations -H 'Content-Type: application/json' "
    r'-d "{\"dataframe_records\": [{\"image\": \"$(base64 -w0 sample/mendeley/Positive/00047.jpg)\"}]}"'
)
STARTUP_TIMEOUT_S = 120
IMAGES = [
    *sorted((REPO_ROOT / "sample" / "mendeley" / "Positive").glob("*.jpg"))[:3],
    *sorted((REPO_ROOT / "sample" / "mendeley" / "Negative").glob("*.jpg"))[:3],
]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with trained_tiny_project(tmp_path_factory, "serve") as project:
        yield project


@pytest.fixture(scope="module")
def server(project: Path) -> Iterator[str]:
    """The registered @challenger behind ``mlflow models serve``; stopped (with its workers) afterwards."""
    port = free_port()
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    command = [str(BIN_DIR / "mlflow"), "models", "serve", "-m", MODEL_URI, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with local_server(command, project, env, f"{url}/ping", project / "serve.log", STARTUP_TIMEOUT_S):
        yield url


def invoke(url: str, payload: dict) -> requests.Response:
    return requests.post(f"{url}/invocations", json=payload, timeout=60)


def test_served_model_matches_crackcls_predict(project, server, monkeypatch):
    response = invoke(server, {"dataframe_split": {"columns": ["image"], "data": [[encode_file(f)] for f in IMAGES]}})
    assert response.status_code == 200, response.text
    served = response.json()["predictions"]

    use_project_store(monkeypatch, project)
    expected = predict.run([str(f) for f in IMAGES], MODEL_URI).predictions
    assert len(served) == len(expected) == len(IMAGES)
    for row, local in zip(served, expected):
        assert row["error"] is None
        assert row["label"] == local.label
        assert row["crack_probability"] == pytest.approx(local.crack_probability, abs=1e-4)
        assert row["threshold"] == local.threshold == 0.5
        assert row["familiarity"] == pytest.approx(local.familiarity, rel=1e-4)
        assert row["unfamiliar"] is local.unfamiliar


def test_an_unreadable_image_gets_an_error_row_not_a_failed_request(server):
    garbage = os.urandom(2048)
    payload = {
        "dataframe_records": [
            {"image": encode_file(IMAGES[0])},
            {"image": base64.b64encode(garbage).decode()},
            {"image": "this is not base64!"},
        ]
    }
    response = invoke(server, payload)
    assert response.status_code == 200, response.text
    good, random_bytes, not_base64 = response.json()["predictions"]
    assert good["error"] is None and good["label"] in ("crack", "no_crack")
    assert random_bytes == {
        "label": None, "crack_probability": None, "threshold": 0.5, "familiarity": None, "unfamiliar": None,
        "error": "not an image", "set_shift": None, "set_shift_p_value": None, "set_shift_median_ratio": None,
    }  # three images are too few for the set-level shift test
    assert not_base64["error"] == "not base64" and not_base64["label"] is None


def test_a_batch_request_carries_the_set_level_shift_test_of_crackcls_predict(project, server, monkeypatch):
    batch = sorted((REPO_ROOT / "sample" / "mendeley" / "Negative").glob("*.jpg"))[-24:]  # not trained on
    response = invoke(server, {"dataframe_records": [{"image": encode_file(f)} for f in batch]})
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    use_project_store(monkeypatch, project)
    local = predict.run([str(f) for f in batch], MODEL_URI).shift
    assert local is not None and local.tested
    assert {row["set_shift"] for row in rows} == {local.shifted}
    assert all(row["set_shift_p_value"] == pytest.approx(local.p_value, rel=1e-3) for row in rows)


def test_threshold_can_be_set_per_request(server):
    image = {"image": encode_file(IMAGES[0])}
    base = invoke(server, {"dataframe_records": [image]}).json()["predictions"][0]
    for threshold, label in ((0.0, "crack"), (1.0, "crack" if base["crack_probability"] >= 1.0 else "no_crack")):
        row = invoke(server, {"dataframe_records": [image], "params": {"threshold": threshold}}).json()["predictions"][0]
        assert row["threshold"] == threshold and row["label"] == label


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_documented_curl_command_works(project, server):
    command = CURL.replace("PORT", server.rsplit(":", 1)[1])
    done = subprocess.run(["bash", "-c", command], cwd=project, capture_output=True, text=True, timeout=60, check=True)
    (row,) = json.loads(done.stdout)["predictions"]
    assert row["label"] in ("crack", "no_crack") and 0.0 <= row["crack_probability"] <= 1.0


def test_registered_version_is_the_pyfunc_beside_the_keras_flavour(project, monkeypatch):
    """The registry serves the pyfunc; the run also holds the Keras flavour and the evaluation gallery."""
    use_project_store(monkeypatch, project)
    import mlflow
    from mlflow.models import Model

    from crackcls.tracking import store
    from crackcls.tracking.registry import load_model

    info = json.loads((project / "models/run.json").read_text())
    store.configure_uri_only()
    version = store.client().get_model_version_by_alias("crackcls", "challenger")
    assert version.run_id == info["run_id"]
    served = Model.load(mlflow.artifacts.download_artifacts(f"{MODEL_URI}/MLmodel"))
    assert set(served.flavors) == {"python_function"}
    assert served.flavors["python_function"]["artifacts"]["keras_model"]["path"].endswith(".keras")
    assert [c.name for c in served.signature.inputs.inputs] == ["image"]
    keras_flavour = Model.load(mlflow.artifacts.download_artifacts(f"runs:/{info['run_id']}/model/MLmodel"))
    assert "keras" in keras_flavour.flavors

    for spec in (MODEL_URI, f"models:/crackcls/{version.version}", f"runs:/{info['run_id']}/model"):
        model, run_id = load_model(spec)  # promotion and `crackcls evaluate` load through here
        assert run_id == info["run_id"] and model.input_shape == (None, 48, 48, 3)

    assert (project / "reports/error_gallery.png").read_bytes()[:4] == b"\x89PNG"
    logged = {a.path for a in store.client().list_artifacts(info["run_id"], "evaluation")}
    assert "evaluation/error_gallery.png" in logged


def test_a_whole_photo_is_scanned_when_the_request_asks(project, server, monkeypatch, tmp_path):
    """``"params": {"scan": true}``: the photo verdict and regions, the same as ``crackcls scan`` with that model."""
    from PIL import Image

    from crackcls.tracking.registry import load_model
    from crackcls.jobs.scan import scan_paths
    from crackcls.photos.scan import settings_for

    photo = tmp_path / "mosaic.jpg"
    Image.fromarray(build_mosaic(REPO_ROOT / "sample" / "mendeley", 3, 4, [(0, 1), (1, 1), (1, 2)], seed=1)).save(photo, quality=95)
    payload = {"dataframe_records": [{"image": encode_file(photo)}, {"image": "not base64!"}], "params": {"scan": True}}
    response = invoke(server, payload)
    assert response.status_code == 200, response.text
    served, bad = response.json()["predictions"]
    assert bad["error"] == "not base64" and bad["regions"] is None

    use_project_store(monkeypatch, project)
    model, _ = load_model(MODEL_URI)
    (local,), _ = scan_paths(model, [photo], settings_for(model), 32)  # the model's fitted rule, as served
    assert served["error"] is None and served["tiles"] == 12 == local.tiles
    assert served["label"] == local.verdict and served["crack_tiles"] == local.crack_tiles
    assert served["crack_probability"] == pytest.approx(local.score, abs=1e-4)
    assert json.loads(served["regions"]) == [r.as_dict() for r in local.regions]

    plain = invoke(server, {"dataframe_records": [{"image": encode_file(photo)}]}).json()["predictions"][0]
    assert "regions" not in plain  # without the parameter: one squashed image, as before
