"""Where the project keeps things.

Every path is absolute and anchored at the project root, so that DVC's temporary
experiment copies (``dvc exp run --temp`` / ``--queue``) still find the shared
MLflow store of the real project rather than creating a stray one.
"""

from __future__ import annotations

import os
from pathlib import Path

EXPS_TMP_MARKER = Path(".dvc") / "tmp" / "exps"

LABELS = ("Negative", "Positive")  # index == class id; Positive (crack) is class 1
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def workspace_root(start: Path | None = None) -> Path:
    """The directory holding dvc.yaml/params.yaml for this run (may be a DVC temp copy)."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "params.yaml").is_file() or (candidate / "dvc.yaml").is_file():
            return candidate
    return here


def project_root(start: Path | None = None) -> Path:
    """The real project, even when running inside ``.dvc/tmp/exps/<copy>``."""
    workspace = workspace_root(start)
    parts = workspace.parts
    marker = EXPS_TMP_MARKER.parts
    for i in range(len(parts) - len(marker) + 1):
        if parts[i : i + len(marker)] == marker:
            return Path(*parts[:i])
    return workspace


def is_model_uri(spec: str) -> bool:
    """An MLflow model URI (``models:/…``, ``runs:/…``, any ``scheme://``), not a path.

    Here rather than in :mod:`crackcls.tracking.store`, so that telling a path from a URI
    does not import MLflow (the ONNX Runtime path never needs it for a file).
    """
    return "://" in spec or spec.startswith(("models:/", "runs:/"))


def resolve(path: str | os.PathLike[str], base: Path | None = None) -> Path:
    """Resolve a params path relative to the workspace root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base or workspace_root()) / p


# Fixed layout shared with dvc.yaml (keep the two in step).
RAW_DIR = Path("data/raw")
FIELD_DIR = Path("data/field")
SPLIT_DIR = Path("data/split")
FEATURES_DIR = Path("data/features")
MODEL_DIR = Path("models")
MODEL_FILE = MODEL_DIR / "model.keras"
RUN_INFO_FILE = MODEL_DIR / "run.json"
REPORTS_DIR = Path("reports")
SAMPLE_DIR = Path("sample")
