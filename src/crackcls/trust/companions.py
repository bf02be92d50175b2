"""What travels beside a ``.keras`` model: its decision threshold, photo rule, calibration and familiarity reference.

Two small files share the model file's stem (``model.keras`` → ``model.decision.json``,
``model.familiarity.npz``). They are logged with the registered pyfunc next to the
``.keras`` file, so a model loaded from a path or from the registry brings them along,
and predict, the served model, evaluate and promotion all use the same threshold.
A model without them (an older one) uses the configured threshold and has no
familiarity score (nor has one whose familiarity file is of an older format).
"""

from __future__ import annotations

import json
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

from crackcls.trust import familiarity
from crackcls.util import atomic
from crackcls.util.errors import CrackclsError


@dataclass(frozen=True)
class Companions:
    threshold: float | None = None  # None: the configured evaluate.threshold applies
    target_recall: float | None = None
    temperature: float = 1.0  # already folded into the model's output layer
    familiarity: familiarity.Reference | None = None
    # the whole-photo rule fitted on validation photos (crackcls.photos.photo_rule.PhotoRule.as_dict, with what it
    # measured there under "validation"); None: scans use params.yaml's rule
    photo_rule: dict | None = None


def decision_path(model_file: str | os.PathLike[str]) -> Path:
    model_file = Path(model_file)
    return model_file.with_name(f"{model_file.stem}.decision.json")


def files_for(model_file: str | os.PathLike[str]) -> list[Path]:
    """The companion files of ``model_file`` that exist."""
    return [p for p in (decision_path(model_file), familiarity.path_for(model_file)) if p.is_file()]


def write(model_file: str | os.PathLike[str], companions: Companions, extra: dict | None = None) -> list[Path]:
    decision = {
        "threshold": companions.threshold,
        "target_recall": companions.target_recall,
        "temperature": companions.temperature,
        **({"photo_rule": companions.photo_rule} if companions.photo_rule is not None else {}),
        **(extra or {}),
    }
    atomic.write_json(decision_path(model_file), decision)
    written = [decision_path(model_file)]
    if companions.familiarity is not None:
        written.append(familiarity.save(companions.familiarity, familiarity.path_for(model_file)))
    return written


def read(model_file: str | os.PathLike[str]) -> Companions:
    decision_file = decision_path(model_file)
    decision: dict = {}
    if decision_file.is_file():
        try:
            decision = json.loads(decision_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CrackclsError(f"cannot read {decision_file}: {exc}") from None
    reference_file = familiarity.path_for(model_file)
    return Companions(
        threshold=decision.get("threshold"),
        target_recall=decision.get("target_recall"),
        temperature=float(decision.get("temperature") or 1.0),
        photo_rule=decision.get("photo_rule") if isinstance(decision.get("photo_rule"), dict) else None,
        familiarity=familiarity.load(reference_file) if reference_file.is_file() else None,
    )


_ATTACHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def attach(model, companions: Companions) -> None:  # noqa: ANN001 - a keras.Model
    _ATTACHED[model] = companions


def of(model) -> Companions:  # noqa: ANN001 - a keras.Model, or None before one is loaded
    return Companions() if model is None else _ATTACHED.get(model, Companions())


def threshold(model, override: float | None, fallback: float) -> float:  # noqa: ANN001 - a keras.Model
    """An explicit threshold wins; then the one stored with the model; then the configured one."""
    if override is not None:
        return float(override)
    stored = of(model).threshold
    return float(stored) if stored is not None else float(fallback)
