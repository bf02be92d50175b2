"""The team tracking server: ``make server`` on a real PostgreSQL, with logins and proxied artifacts.

A throwaway PostgreSQL cluster (initdb / pg_ctl on 127.0.0.1 in a temporary folder)
holds the runs, the registry and the users; ``make server`` runs MLflow's basic-auth
app on it with artifacts proxied to a local folder. A tiny project then trains and
evaluates against ``http://127.0.0.1:<port>`` as a team member would, through
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, and ``crackcls promote``,
``crackcls predict`` and ``mlflow models serve`` fetch the model from the server.
Skips when PostgreSQL or its Python driver is not installed.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from conftest import (
    BIN_DIR,
    REPO_ROOT,
    TINY_PARAMS,
    build_tiny_project,
    free_port,
    local_server,
    run_pipeline_in_process,
    subprocess_env,
    use_project_store,
)

from crackcls.tracking import teamserver
from crackcls.tracking.serving import encode_file

MODEL = "crackcls"
STARTUP_TIMEOUT_S = 180
DB_USER, DB_PASSWORD = "mlflow", "db-password-for-tests"
ADMIN_PASSWORD = "admin-password-for-tests"
TRAINER, TRAINER_PASSWORD = "trainer", "trainer-password-for-tests"
VIEWER, VIEWER_PASSWORD = "viewer", "viewer-password-for-tests"
IMAGES = [*sorted((REPO_ROOT / "sample" / "mendeley" / "Positive").glob("*.jpg"))[:2], *sorted((REPO_ROOT / "sample" / "mendeley" / "Negative").glob("*.jpg"))[:2]]


def postgres_bin() -> Path | None:
    """Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


def _as_cluster_owner(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the ``postgres`` (or ``nobody``) user then."""
    if os.geteuid() != 0:
        return args
    import pwd

    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["runuser", "-u", user, "--", *args]
    pytest.skip("running as root with no postgres or nobody user for the cluster")


def _run(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None, timeout: int = 300):
    result = subprocess.run(args, cwd=cwd, env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def postgres() -> Iterator[tuple[str, str]]:
    """A fresh cluster on 127.0.0.1 with databases ``mlflow`` and ``mlflow_auth``; their URIs."""
    pg_bin = postgres_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL is not installed (initdb not found)")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is not installed")
    pytest.importorskip("flask_wtf", reason="Flask-WTF, needed by MLflow's basic-auth app, is not installed")
    # Not pytest's tmp_path: that is private to the current user, and the cluster runs as another.
    root = Path(tempfile.mkdtemp(prefix="crackcls-pg-"))
    root.chmod(0o777)
    data, port = root / "data", free_port()
    (root / "pwfile").write_text(DB_PASSWORD + "\n")
    (root / "pwfile").chmod(0o644)
    _run(_as_cluster_owner([str(pg_bin / "initdb"), "-D", str(data), "-U", DB_USER, "--pwfile", str(root / "pwfile"),
                            "--auth", "scram-sha-256", "-E", "UTF8", "--no-sync"]))  # fmt: skip
    options = f"-h 127.0.0.1 -p {port} -k {root} -F"
    pg_ctl = _as_cluster_owner([str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(root / "postgres.log")])
    _run([*pg_ctl, "-o", options, "-w", "start"])
    try:
        env = {**subprocess_env(), "PGPASSWORD": DB_PASSWORD}
        for name in ("mlflow", "mlflow_auth"):
            _run([str(pg_bin / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER, name], env=env)
        base = f"postgresql://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{port}"
        yield f"{base}/mlflow", f"{base}/mlflow_auth"
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Team:
    url: str
    project: Path
    artifacts: Path
    train_info: dict

    def env(self, user: str | None = TRAINER, password: str | None = TRAINER_PASSWORD) -> dict[str, str]:
        env = {**subprocess_env(), "MLFLOW_TRACKING_URI": self.url}
        if user:
            env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password or "")
        return env


def _login(patch: pytest.MonkeyPatch, url: str, user: str, password: str) -> None:
    patch.setenv("MLFLOW_TRACKING_URI", url)
    patch.setenv("MLFLOW_TRACKING_USERNAME", user)
    patch.setenv("MLFLOW_TRACKING_PASSWORD", password)


@pytest.fixture(scope="module")
def team(postgres, tmp_path_factory) -> Iterator[Team]:
    """``make server`` on the cluster; users made by the admin; the tiny pipeline run by the trainer."""
    backend, auth_db = postgres
    root = tmp_path_factory.mktemp("team")
    project = build_tiny_project(root / "project", per_class=20)
    artifacts, port = root / "artifacts", free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**subprocess_env(), "MLFLOW_FLASK_SERVER_SECRET_KEY": "secret-key-for-tests",
           "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD}  # fmt: skip
    command = ["make", "-f", str(REPO_ROOT / "Makefile"), "server", f"BACKEND={backend}", f"ARTIFACTS={artifacts}",
               f"AUTH_DB={auth_db}", f"PORT={port}", "WORKERS=1"]  # fmt: skip
    if shutil.which("make") is None:
        pytest.skip("make is needed")
    with local_server(command, project, env, f"{url}/health", root / "server.log", STARTUP_TIMEOUT_S):
        with pytest.MonkeyPatch.context() as patch:
            from mlflow.server import get_app_client

            _login(patch, url, "admin", ADMIN_PASSWORD)
            users = get_app_client("basic-auth", tracking_uri=url)
            users.create_user(TRAINER, TRAINER_PASSWORD)
            users.create_user(VIEWER, VIEWER_PASSWORD)

            use_project_store(patch, project)
            _login(patch, url, TRAINER, TRAINER_PASSWORD)
            info = run_pipeline_in_process(project)["train"]
        yield Team(url, project, artifacts, info)


@pytest.fixture(scope="module")
def promoted(team) -> str:
    """``crackcls promote`` run by the trainer against the server; its output.

    In this process (TensorFlow is loaded already); ``predict`` and ``serve`` below run
    as separate processes.
    """
    from crackcls import cli

    output = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(output):
        use_project_store(patch, team.project)
        _login(patch, team.url, TRAINER, TRAINER_PASSWORD)
        with pytest.raises(SystemExit) as exited:
            cli.main(["promote"])
    assert exited.value.code == 0, output.getvalue()
    return output.getvalue()


@pytest.mark.e2e
def test_the_run_is_on_the_server_with_its_artifacts_proxied(team, monkeypatch):
    from mlflow.tracking import MlflowClient

    _login(monkeypatch, team.url, VIEWER, VIEWER_PASSWORD)
    client = MlflowClient(tracking_uri=team.url, registry_uri=team.url)
    run = client.get_run(team.train_info["run_id"])
    assert team.train_info["tracking_uri"] == team.url
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    assert run.data.params["model.image_size"] == "48"
    assert run.data.params["data.sources"] == "mendeley"
    for key in ("loss", "accuracy", "training_time_s", "test_f1", "test_accuracy", "test_roc_auc"):
        assert key in run.data.metrics, key
    assert not (team.project / "mlflow.db").exists() and not (team.project / "mlruns").exists()

    # The confusion matrix, downloaded through the server's artifact proxy.
    listed = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in listed
    png = client.download_artifacts(run.info.run_id, "evaluation/confusion_matrix.png", str(team.project / "dl"))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # and it is stored in the server's artifact folder, not anywhere on the client
    assert list(team.artifacts.rglob("confusion_matrix.png"))


@pytest.mark.e2e
def test_registered_version_aliases_promote_predict(team, promoted, monkeypatch):
    from mlflow.tracking import MlflowClient

    _login(monkeypatch, team.url, TRAINER, TRAINER_PASSWORD)
    client = MlflowClient(tracking_uri=team.url, registry_uri=team.url)
    version = client.get_model_version_by_alias(MODEL, "challenger")
    assert str(version.version) == team.train_info["registered_model_version"] == "1"
    assert version.run_id == team.train_info["run_id"]
    assert version.tags["backbone"] == TINY_PARAMS["model"]["backbone"]

    assert "PROMOTED" in promoted, promoted
    aliases = client.get_registered_model(MODEL).aliases
    assert aliases["challenger"] == aliases["champion"] == "1"
    assert client.get_model_version(MODEL, "1").tags["promotion_decision"] == "promoted"

    # Anyone with read access predicts with the champion, fetched from the server.
    predicted = _run(
        [str(BIN_DIR / "crackcls"), "predict", *map(str, IMAGES), "--model", f"models:/{MODEL}@champion", "--format", "csv"],
        cwd=team.project, env=team.env(VIEWER, VIEWER_PASSWORD),
    )  # fmt: skip
    rows = predicted.stdout.strip().splitlines()
    assert rows[0].startswith("path,label,crack_probability")
    assert len(rows) == 1 + len(IMAGES)
    assert all(row.split(",")[1] in ("crack", "no_crack") for row in rows[1:])


@pytest.mark.e2e
def test_models_serve_downloads_the_champion_from_the_server(team, promoted, tmp_path):
    port = free_port()
    command = [str(BIN_DIR / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion", "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with local_server(command, tmp_path, team.env(VIEWER, VIEWER_PASSWORD), f"{url}/ping", tmp_path / "serve.log", STARTUP_TIMEOUT_S):
        response = requests.post(f"{url}/invocations", json={"dataframe_records": [{"image": encode_file(IMAGES[0])}]}, timeout=60)
    assert response.status_code == 200, response.text
    (row,) = response.json()["predictions"]
    assert row["error"] is None and row["label"] in ("crack", "no_crack")


@pytest.mark.e2e
def test_logins_are_required_and_permissions_hold(team, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    api = f"{team.url}/api/2.0/mlflow/registered-models/get"
    assert requests.get(api, params={"name": MODEL}, timeout=30).status_code == 401
    assert requests.get(api, params={"name": MODEL}, auth=(TRAINER, "wrong-password-123"), timeout=30).status_code == 401
    assert requests.get(api, params={"name": MODEL}, auth=(VIEWER, VIEWER_PASSWORD), timeout=30).status_code == 200

    alias = f"{team.url}/api/2.0/mlflow/registered-models/alias"
    move = {"name": MODEL, "alias": "champion", "version": "1"}
    refused = requests.post(alias, json=move, auth=(VIEWER, VIEWER_PASSWORD), timeout=30)
    assert refused.status_code == 403, refused.text
    allowed = requests.post(alias, json={**move, "alias": "reviewed"}, auth=(TRAINER, TRAINER_PASSWORD), timeout=30)
    assert allowed.status_code == 200, allowed.text

    # the same refusal through the MLflow client, logged in with the standard variables
    _login(monkeypatch, team.url, VIEWER, VIEWER_PASSWORD)
    with pytest.raises(MlflowException, match="403"):
        MlflowClient(tracking_uri=team.url, registry_uri=team.url).set_registered_model_alias(MODEL, "champion", "1")


def test_make_server_needs_a_secret_key_and_writes_the_auth_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    monkeypatch.delenv(teamserver.SECRET_KEY_VAR, raising=False)
    args = ["--backend", "sqlite:///x.db", "--artifacts", "art", "--auth-db", "postgresql://u:p@h/auth"]
    with pytest.raises(SystemExit) as stopped:
        teamserver.main(args)
    assert stopped.value.code == 2 and teamserver.SECRET_KEY_VAR in capsys.readouterr().err
    assert teamserver.artifacts_destination("art") == str(tmp_path.resolve() / "art")
    assert teamserver.artifacts_destination("s3://bucket/crackcls") == "s3://bucket/crackcls"
    config = teamserver.auth_config("postgresql://u:p@h/auth")
    assert "database_uri = postgresql://u:p@h/auth" in config and "default_permission = READ" in config
    assert "password" not in config  # the admin password comes from the environment only
