"""``make promote``: move the ``champion`` alias to the ``challenger`` only if it is better.

Both versions are scored on the same current test split, so the comparison is
like for like even when the champion was trained on an older split.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow

from crackcls import manifest, paths, tracking
from crackcls.config import load_config
from crackcls.errors import CrackclsError
from crackcls.evaluation import evaluate_items, load_model
from crackcls.promotion import Decision, decide

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass
class Outcome:
    decision: Decision
    challenger_version: str
    champion_version: str | None
    challenger_score: float
    champion_score: float | None


def run(version: str | None = None) -> Outcome:
    config = load_config()
    workspace = paths.workspace_root()
    name, metric = config.registry.model_name, config.registry.promote_metric
    tracking.configure_uri_only()
    client = tracking.client()
    if version is not None:
        try:
            challenger = client.get_model_version(name, str(version))
        except mlflow.exceptions.MlflowException:
            raise CrackclsError(f"model '{name}' has no version {version} in {tracking.tracking_uri()}") from None
    else:
        challenger = tracking.require_alias(name, CHALLENGER)
    champion = tracking.alias_or_none(name, CHAMPION)
    if champion is not None and champion.version == challenger.version:
        decision = Decision(False, f"version {challenger.version} is already @{CHAMPION}")
        return Outcome(decision, str(challenger.version), str(champion.version), float("nan"), None)

    test_items = manifest.read(manifest.manifest_path("test", workspace / paths.SPLIT_DIR))

    def score(model_version) -> float:
        model, _ = load_model(f"models:/{name}/{model_version.version}")
        result = evaluate_items(model, test_items, config.evaluate.threshold, config.evaluate.batch_size, base=workspace)
        return result.metrics[metric]

    challenger_score = score(challenger)
    champion_score = score(champion) if champion is not None else None
    decision = decide(challenger_score, champion_score, config.registry.min_improvement, metric)

    client.set_model_version_tag(name, challenger.version, "promotion_decision", "promoted" if decision.promote else "refused")
    client.set_model_version_tag(name, challenger.version, "promotion_reason", decision.reason)
    client.set_model_version_tag(name, challenger.version, f"promotion_{metric}", f"{challenger_score:.4f}")
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
    return Outcome(  # MLflow 3 returns versions as int; Outcome keeps the documented str
        decision,
        str(challenger.version),
        str(champion.version) if champion else None,
        challenger_score,
        champion_score,
    )
