"""The model a training starts from (``train.init``), fetched from the registry, and the lineage it leaves.

Adapting the champion to a site's corrections must say where the new version came
from, or nobody can tell later which champion it improved on and with which field
data. ``champion`` and ``challenger`` are resolved to a version number when training
starts; the run and the registered version record that number, the run behind it, and
the field data version (the md5 ``data.dvc`` gives ``data/field``). An alias moves; to
rerun an adaptation exactly, name the version: ``train.init: models:/crackcls/3``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import yaml

from crackcls.model.settings import START_ALIASES
from crackcls.tracking import lineage, registry, store
from crackcls.util import paths
from crackcls.util.errors import CrackclsError

FIELD_DVC_FILE = "data.dvc"


@dataclass(frozen=True)
class StartingPoint:
    """A local copy of the start model's ``.keras`` file, and what to record about it."""

    model_file: Path
    spec: str  # as params.yaml gave it, e.g. champion
    uri: str  # what it resolved to, e.g. models:/crackcls/3, or the file's path
    version: str | None  # the registered version, when it is one
    run_id: str | None  # the run that trained it

    def tags(self) -> dict[str, str]:
        """What the new run and its registered version are tagged with."""
        named = {"adapted_from": self.uri, "adapted_from_spec": self.spec}
        if self.version is not None:
            named["adapted_from_version"] = self.version
        if self.run_id is not None:
            named["adapted_from_run"] = self.run_id
        return named


def resolved_uri(spec: str, model_name: str) -> str:
    """``champion`` → ``models:/<name>@champion``; URIs and paths unchanged."""
    return f"models:/{model_name}@{spec}" if spec in START_ALIASES else spec


@contextlib.contextmanager
def starting_point(spec: str, model_name: str) -> Iterator[StartingPoint | None]:
    """The start model's file for as long as training needs it; None for ``train.init: none``."""
    if spec == "none":
        yield None
        return
    uri = resolved_uri(spec, model_name)
    if not store.is_model_uri(uri):
        yield StartingPoint(paths.resolve(uri), spec, str(paths.resolve(uri)), None, None)
        return
    store.configure_uri_only()
    try:
        version = store.registered_version(uri)
        run_id = store.source_run(uri)
    except mlflow.exceptions.MlflowException as exc:
        raise CrackclsError(
            f"train.init: {spec}: no such model in {store.tracking_uri()} ({exc.message.splitlines()[0]}); "
            "train one first (`dvc repro`, `make demo`) or set train.init: none"
        ) from None
    pinned = f"models:/{version.name}/{version.version}" if version is not None else uri
    with registry.downloaded_model_file(pinned) as local:
        yield StartingPoint(local, spec, pinned, str(version.version) if version is not None else None, run_id)


def field_data_version(workspace: Path) -> str | None:
    """The md5 ``data.dvc`` records for the imported field images (DVC's own hash), else that of ``data/field`` itself."""
    record = workspace / FIELD_DVC_FILE
    if record.is_file():
        try:
            outs = (yaml.safe_load(record.read_text(encoding="utf-8")) or {}).get("outs") or []
            if outs and outs[0].get("md5"):
                return str(outs[0]["md5"])
        except yaml.YAMLError:
            pass
    field = workspace / paths.FIELD_DIR
    return lineage.dir_hash(field) if field.is_dir() else None
