"""MLflow wiring: one store per project, absolute paths, git provenance.

Default store: ``sqlite:///<project>/mlflow.db`` with artifacts under
``<project>/mlruns``. ``MLFLOW_TRACKING_URI`` overrides it (a shared tracking
server). Paths are absolute and resolved to the *project* root, so runs launched
from DVC's temporary experiment copies land in the same store.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from crackcls.trust.model_card import CARD_FILE
from crackcls.util import paths
from crackcls.util.errors import CrackclsError
from crackcls.util.paths import is_model_uri  # noqa: F401 - part of this module's interface

DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlruns"
# Marks the experiment as model training (not GenAI) for MLflow 3's UI.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def default_tracking_uri(root: Path | None = None) -> str:
    return f"sqlite:///{(root or paths.project_root()) / DB_FILE}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``sqlite:////abs/path`` is absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An advisory lock shared by every process on this machine (and NFS clients with lockd)."""
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process lock; MLflow's own behaviour applies
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_READY_STORES: set[tuple[str, str]] = set()


def ensure_store(uri: str, registry_uri: str) -> None:
    """Create (or open) the MLflow stores one process at a time.

    On a new SQLite database, MLflow's tracking and registry stores each create the
    tables and run the schema migrations without any cross-process lock, so two
    trainings started at once against a fresh ``mlflow.db`` race: one fails with
    ``no such column`` / ``table ... already exists`` / ``duplicate column``. Building
    both stores under a lock file beside the database makes the second process wait
    and then find the schema complete. MLflow caches the stores per URI, so this runs
    once per process. Concurrent writes after that are MLflow's business: it sets
    ``PRAGMA busy_timeout = 20000`` on every SQLite session.
    """
    if (uri, registry_uri) in _READY_STORES:
        return
    db_files = {p for p in (sqlite_path(uri), sqlite_path(registry_uri)) if p is not None}
    with contextlib.ExitStack() as stack:
        for db in sorted(db_files):
            stack.enter_context(_exclusive(db.with_name(db.name + "-init.lock")))
        store_client = MlflowClient(tracking_uri=uri, registry_uri=registry_uri)  # builds the tracking store
        store_client.search_registered_models(max_results=1)  # and the registry store
    _READY_STORES.add((uri, registry_uri))


def configure_uri_only() -> str:
    """Point MLflow (tracking and registry) at the project store, creating it safely if new."""
    uri = tracking_uri()
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri)
    ensure_store(uri, registry_uri)
    return uri


def configure(experiment: str) -> str:
    """Point MLflow at the project store and make sure the experiment exists; returns its id."""
    uri = configure_uri_only()
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
        for key, value in EXPERIMENT_KIND.items():
            if found.tags.get(key) != value:  # a store from before the tag existed
                client.set_experiment_tag(experiment_id, key, value)
    else:
        artifact_location = None
        if uri.startswith("sqlite:"):
            artifact_location = (paths.project_root() / ARTIFACT_DIR).resolve().as_uri()
        try:
            experiment_id = client.create_experiment(
                experiment, artifact_location=artifact_location, tags=EXPERIMENT_KIND
            )
        except mlflow.exceptions.MlflowException:
            # another process created it between our lookup and create
            experiment_id = client.get_experiment_by_name(experiment).experiment_id  # type: ignore[union-attr]
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def runs_url(base: str, experiment_id: str) -> str:
    """The UI page of an experiment's training-runs table.

    MLflow 3 opens an experiment on its GenAI overview unless the browser has chosen
    otherwise; the experiment tag alone does not change that, the URL parameter does.
    """
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def git_tags(cwd: Path | None = None) -> dict[str, str]:
    """The commit and whether the tree had uncommitted changes (params overrides count)."""
    where = str(cwd or paths.workspace_root())

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=where, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    tags = {"git_commit": commit, "git_dirty": str(dirty).lower(), "mlflow.source.git.commit": commit}
    if exp_name := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = exp_name
    return tags


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Nested params → ``a.b.c`` keys, as DVC names them.

    A list of named entries (``data.sources``) becomes its names, comma-joined, plus
    ``data.sources.<name>.<key>`` for each set field, so the MLflow UI can filter on them.
    """
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(flatten(f"{prefix}.{key}" if prefix else str(key), inner))
        return flat
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        flat = {prefix: ",".join(str(v["name"]) for v in value)}
        for entry in value:
            fields = {k: v for k, v in entry.items() if k != "name" and v is not None}
            flat.update(flatten(f"{prefix}.{entry['name']}", fields))
        return flat
    return {prefix: value}


def client() -> MlflowClient:
    return MlflowClient()


def require_alias(model_name: str, alias: str):
    """The model version behind ``alias``, or a clear error."""
    try:
        return client().get_model_version_by_alias(model_name, alias)
    except mlflow.exceptions.MlflowException as exc:
        raise CrackclsError(
            f"registered model '{model_name}' has no version with alias '{alias}' "
            f"in {tracking_uri()}: run the pipeline (`dvc repro` or `make demo`) first"
        ) from exc


def alias_or_none(model_name: str, alias: str):
    try:
        return client().get_model_version_by_alias(model_name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def registered_version(spec: str):  # noqa: ANN201 - an MLflow ModelVersion or None
    """The registered version ``models:/<name>@<alias>`` or ``models:/<name>/<N>`` names; None for other specs."""
    if not spec.startswith("models:/"):
        return None
    name_part = spec.removeprefix("models:/")
    if "@" in name_part:
        name, alias = name_part.split("@", 1)
        return client().get_model_version_by_alias(name, alias)
    name, _, version = name_part.partition("/")
    return client().get_model_version(name, version) if version.isdigit() else None


def source_run(spec: str) -> str | None:
    """The run that logged the model at ``runs:/<id>/...`` or ``models:/<name>@<alias>`` / ``models:/<name>/<N>``."""
    if spec.startswith("runs:/"):
        return spec.removeprefix("runs:/").split("/", 1)[0]
    version = registered_version(spec)
    return None if version is None else version.run_id


def download_run_folder(spec: str, artifact_path: str, target: Path) -> Path:
    """``artifact_path`` of the run behind ``spec``, downloaded into ``target``; a clear error when it is not there."""
    configure_uri_only()
    try:
        run_id = source_run(spec)
        if run_id is None:
            raise CrackclsError(f"{spec}: not a models:/ or runs:/ URI")
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(target)))
    except mlflow.exceptions.MlflowException as exc:
        raise CrackclsError(
            f"{spec} has no {artifact_path}/ artifacts ({exc.message.splitlines()[0]}): run `crackcls export --model {spec}` first"
        ) from None


def run_has_artifact(spec: str, artifact_path: str) -> bool:
    """Whether the run behind ``spec`` holds ``artifact_path`` (False for anything that is not an MLflow model URI)."""
    configure_uri_only()
    try:
        run_id = source_run(spec)
        if run_id is None:
            return False
        folder = artifact_path.rpartition("/")[0]
        return any(item.path == artifact_path for item in client().list_artifacts(run_id, folder or None))
    except mlflow.exceptions.MlflowException:
        return False


def model_card(spec: str) -> str | None:
    """The model card (Markdown) of the model ``spec`` names; None where there is none, never an error.

    A registered version's card is its description, where the evaluate stage publishes it. A
    file has a card only when it is the workspace's own model, the one the card in
    ``reports/`` was written for; any other file or URI has none that can be told to be its own.
    """
    if is_model_uri(spec):
        try:
            configure_uri_only()
            version = registered_version(spec)
        except Exception:  # noqa: BLE001 - an unreachable store or an unknown version only costs the card
            return None
        return (version.description or None) if version is not None else None
    workspace = paths.workspace_root()
    card = workspace / paths.REPORTS_DIR / CARD_FILE
    try:
        own = paths.resolve(spec).resolve() == (workspace / paths.MODEL_FILE).resolve()
        return card.read_text(encoding="utf-8") if own and card.is_file() else None
    except (OSError, UnicodeDecodeError):
        return None
