"""The MLflow UI, as a user sees it: the runs table first, params, metrics, data, the registered model.

A tiny pipeline run fills a project store; ``mlflow ui`` serves it on 127.0.0.1;
headless Chromium renders the React pages (``--virtual-time-budget`` lets the
SPA fetch and render before ``--dump-dom``) and takes a screenshot of each into
the test's tmp dir. Skipped when Chromium is not installed (CI installs Debian's
``chromium``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import BIN_DIR, TINY_PARAMS, deep_merge, free_port, local_server, run_pipeline_in_process, subprocess_env, write_params

from crackcls.tracking import store


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)"),
]

SERVER_START_TIMEOUT_S = 120
MODEL = "crackcls"


class _Text(HTMLParser):
    """The visible text of a DOM dump (scripts and styles dropped)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):  # type: ignore[override]
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):  # type: ignore[override]
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data):  # type: ignore[override]
        if not self._skip:
            self.parts.append(data)


def visible_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return " ".join(" ".join(parser.parts).replace("\xa0", " ").split())


def render(url: str, screenshot: Path, profile: Path, expect: list[str], attempts: int = 3) -> str:
    """Render ``url`` in headless Chromium; the page text once it shows every ``expect`` string."""
    text = ""
    for attempt in range(1, attempts + 1):
        budget_ms = 15000 * attempt
        args = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage",
            # the page may only reach the local server
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            f"--user-data-dir={profile}-{attempt}", f"--virtual-time-budget={budget_ms}",
            "--window-size=1400,1000", f"--screenshot={screenshot}", "--dump-dom", url,
        ]  # fmt: skip
        result = subprocess.run(args, capture_output=True, text=True, timeout=120 + budget_ms // 1000)
        text = visible_text(result.stdout)
        if all(s in text for s in expect):
            return text
    missing = [s for s in expect if s not in text]
    raise AssertionError(f"{url} does not show {missing} after {attempts} tries; page text: {text[:3000]}")


@pytest.fixture
def ui_store(tiny_project) -> dict:
    """A store with two tiny training runs: v1 aliased @champion, v2 (registered last) @challenger."""
    from crackcls.config import load_config
    from crackcls.stages import evaluate, train

    first = run_pipeline_in_process(tiny_project)["train"]
    write_params(tiny_project, deep_merge(TINY_PARAMS, {"train": {"epochs": 1}}))
    config = load_config(tiny_project / "params.yaml")
    second = train.run(config, tiny_project)  # the feature cache does not depend on epochs
    evaluate.run(config, tiny_project)
    store.configure_uri_only()
    client = store.client()
    client.set_registered_model_alias(MODEL, "champion", first["registered_model_version"])
    return {"project": tiny_project, "champion": first, "challenger": second, "run": client.get_run(first["run_id"])}


@pytest.fixture
def ui_server(ui_store, tmp_path):
    project = ui_store["project"]
    port = free_port()
    env = subprocess_env()
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    args = [
        str(BIN_DIR / "mlflow"), "ui",
        "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}",
        "--default-artifact-root", str(project / "mlruns"),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with local_server(args, project, env, f"{base}/health", tmp_path / "mlflow-ui.log", SERVER_START_TIMEOUT_S):
        yield base


def test_ui_shows_runs_params_metrics_and_the_registered_model(ui_store, ui_server, tmp_path):
    champion, challenger, run = ui_store["champion"], ui_store["challenger"], ui_store["run"]
    experiment_id, run_id, run_name = champion["experiment_id"], champion["run_id"], run.info.run_name
    assert run_name == "compact_cnn-48px"
    profile = tmp_path / "chromium"

    # What `make ui` links to: the training-runs table, not MLflow 3's GenAI overview.
    first_view = render(
        store.runs_url(ui_server, experiment_id),
        tmp_path / "ui_first.png",
        profile,
        ["Runs - Experiment", run_name, "2 matching runs", "Dataset", "data/split/train.csv"],
    )
    assert first_view.startswith(f"Runs - Experiment {experiment_id}"), first_view[:300]  # the page title
    assert "Token Usage" not in first_view and "Detect Issues" not in first_view
    assert store.client().get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"

    runs_page = render(
        f"{ui_server}/#/experiments/{experiment_id}/runs", tmp_path / "ui.png", profile, [run_name, "2 matching runs"]
    )
    assert runs_page.count(run_name) >= 2
    assert "tests" in runs_page  # the experiment's name (TINY_PARAMS)

    run_page = render(
        f"{ui_server}/#/experiments/{experiment_id}/runs/{run_id}",
        tmp_path / "ui_run.png",
        profile,
        ["model.backbone", "compact_cnn", "model.image_size", "test_f1", "test_roc_auc", "val_loss"],
    )
    assert run_id in run_page
    assert f"train.epochs {TINY_PARAMS['train']['epochs']}" in run_page
    assert f"{MODEL} v{champion['registered_model_version']}" in run_page  # the run links its registered version

    v1, v2 = champion["registered_model_version"], challenger["registered_model_version"]
    models_page = render(
        f"{ui_server}/#/models/{MODEL}",
        tmp_path / "ui_model.png",
        profile,
        [MODEL, f"Version {v1}", f"Version {v2}", "@ champion", "@ challenger"],
    )
    # each alias sits on its own version's row (versions are listed newest first)
    assert models_page.index(f"Version {v2}") < models_page.index("@ challenger") < models_page.index(f"Version {v1}")
    assert models_page.index(f"Version {v1}") < models_page.index("@ champion")
    assert "backbone : compact_cnn" in models_page  # the version tag set at registration

    for png in ("ui_first.png", "ui.png", "ui_run.png", "ui_model.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG", png
    print(f"screenshots in {tmp_path}")
