"""``make promote``: move the ``champion`` alias to the ``challenger`` only on evidence that it is better.

Both versions are scored on the same current test split, each at its own stored
threshold, so the comparison is like for like even when the champion was trained on
an older split. The rule is :func:`crackcls.trust.promotion.decide`: better on
``registry.promote_metric`` by ``registry.min_improvement``, and an exact McNemar test
on the images the two disagree about gives p < ``registry.max_p_value``; then
:func:`crackcls.trust.promotion.with_source_checks`: on no source of the test split is
the challenger worse with p < ``registry.max_p_value``. A challenger adapted from a
champion (``train.init``) to field sites is judged on the sites instead
(:func:`crackcls.trust.promotion.on_sites`): better on a site's own test images by the
same rule, and worse on no source.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import numpy as np

from crackcls.config import load_config
from crackcls.data import manifest
from crackcls.data.field_labels import is_field_source
from crackcls.model.evaluation import Evaluation, evaluate_items
from crackcls.tracking import store
from crackcls.tracking.registry import load_model
from crackcls.trust import companions
from crackcls.trust.intervals import format_interval
from crackcls.trust.promotion import Decision, McNemar, SourceCheck, decide, mcnemar, on_sites, with_source_checks
from crackcls.util import paths
from crackcls.util.errors import CrackclsError

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass
class Outcome:
    decision: Decision
    challenger_version: str
    champion_version: str | None
    challenger_score: float
    champion_score: float | None
    metric: str = "f1"
    challenger_metrics: dict | None = None
    champion_metrics: dict | None = None
    paired: McNemar | None = None
    sources: list[SourceCheck] | None = None
    max_p_value: float = 1.0
    min_improvement: float = 0.0
    adapted_from: str | None = None  # the version an adapted challenger started from: judged on its sites


def paired_test(challenger: Evaluation, champion: Evaluation, only: set[str] | None = None) -> McNemar:
    """McNemar on the images both models could read (the same files, so normally all), or those in ``only``."""
    common = sorted((set(challenger.paths) & set(champion.paths)) & (only if only is not None else set(challenger.paths)))
    if not common:
        raise CrackclsError("the two models share no scored test image: cannot compare them")

    def correct(result: Evaluation) -> np.ndarray:
        index = {p: i for i, p in enumerate(result.paths)}
        rows = np.array([index[p] for p in common])
        return result.correct[rows]

    return mcnemar(correct(challenger), correct(champion))


def source_checks(challenger: Evaluation, champion: Evaluation, metric: str) -> list[SourceCheck]:
    """The paired test and the promote metric of each model, source by source of the test split."""
    checks = []
    for source in challenger.by_source:
        only = {p for p, s in zip(challenger.paths, challenger.sources) if s == source}
        champion_metric = champion.by_source.get(source, {}).get(metric, float("nan"))
        checks.append(
            SourceCheck(
                source, len(only), challenger.by_source[source][metric], champion_metric,
                paired_test(challenger, champion, only),
            )
        )  # fmt: skip
    return checks


def source_rows(checks: list[SourceCheck], metric: str, max_p_value: float, min_improvement: float = 0.0) -> list[str]:
    """One printed row per source (sites first): both models' metric, the disagreements, p and the verdict."""
    width = max([12, *(len(c.source) for c in checks)])
    rows = [f"{'source':<{width}} {'n':>6}  {'challenger':>10}  {'champion':>9}  {'only chal.':>10}  {'only champ.':>11}  {'p':>8}"]
    for c in sorted(checks, key=lambda check: not is_field_source(check.source)):
        rows.append(
            f"{c.source:<{width}} {c.n:>6}  {c.challenger:>10.4f}  {c.champion:>9.4f}  {c.paired.challenger_only:>10}  "
            f"{c.paired.champion_only:>11}  {c.paired.p_value:>8.4g}  {c.verdict(max_p_value, min_improvement, metric)}"
        )
    return [f"per source ({metric}, paired test on each source's images):", *rows]


def describe(metrics: dict | None) -> str:
    """``f1 0.9120 [0.881, 0.937]  accuracy ...`` at the model's threshold; ``none`` without a model."""
    if not metrics:
        return "none"
    parts = [f"{key} {metrics[key]:.4f} {format_interval(metrics, key)}".rstrip() for key in ("f1", "accuracy", "recall", "precision")]
    return "  ".join(parts) + f"  (threshold {metrics['threshold']:.4g}, n={metrics['n']})"


def run(version: str | None = None) -> Outcome:
    config = load_config()
    workspace = paths.workspace_root()
    name, metric = config.registry.model_name, config.registry.promote_metric
    store.configure_uri_only()
    client = store.client()
    if version is not None:
        try:
            challenger = client.get_model_version(name, str(version))
        except mlflow.exceptions.MlflowException:
            raise CrackclsError(f"model '{name}' has no version {version} in {store.tracking_uri()}") from None
    else:
        challenger = store.require_alias(name, CHALLENGER)
    champion = store.alias_or_none(name, CHAMPION)
    if champion is not None and champion.version == challenger.version:
        decision = Decision(False, f"version {challenger.version} is already @{CHAMPION}")
        return Outcome(decision, str(challenger.version), str(champion.version), float("nan"), None, metric)

    test_items = manifest.read(manifest.manifest_path("test", workspace / paths.SPLIT_DIR))

    def score(model_version) -> Evaluation:
        model, _ = load_model(f"models:/{name}/{model_version.version}")
        threshold = companions.threshold(model, None, config.evaluate.threshold)
        return evaluate_items(model, test_items, threshold, config.evaluate.batch_size, base=workspace)

    challenger_result = score(challenger)
    champion_result = score(champion) if champion is not None else None
    paired = paired_test(challenger_result, champion_result) if champion_result is not None else None
    checks = source_checks(challenger_result, champion_result, metric) if champion_result is not None else []
    rule = config.registry
    adapted_from = (challenger.tags or {}).get("adapted_from_version")
    sites = [check for check in checks if is_field_source(check.source)]
    if adapted_from is not None and sites:
        decision = on_sites(sites, rule.min_improvement, metric, rule.max_p_value)
    else:
        champion_metric = champion_result.metrics[metric] if champion_result else None
        decision = decide(challenger_result.metrics[metric], champion_metric, rule.min_improvement, metric, paired, rule.max_p_value)
    decision = with_source_checks(decision, checks, rule.max_p_value, metric)

    tags = {
        "promotion_decision": "promoted" if decision.promote else "refused",
        "promotion_reason": decision.reason,
        f"promotion_{metric}": f"{challenger_result.metrics[metric]:.4f}",
        f"promotion_{metric}_ci95": format_interval(challenger_result.metrics, metric) or "n/a",
        "promotion_max_p_value": f"{config.registry.max_p_value:g}",
    }
    if champion is not None and champion_result is not None and paired is not None:
        tags.update(
            {
                "promotion_against": str(champion.version),
                f"promotion_champion_{metric}": f"{champion_result.metrics[metric]:.4f}",
                f"promotion_champion_{metric}_ci95": format_interval(champion_result.metrics, metric) or "n/a",
                "promotion_only_challenger_right": str(paired.challenger_only),
                "promotion_only_champion_right": str(paired.champion_only),
                "promotion_mcnemar_p": f"{paired.p_value:.4g}",
            }
        )
    for check in checks:
        tags[f"promotion_source_{check.source}"] = (
            f"{metric} {check.challenger:.4f} vs {check.champion:.4f}; only challenger right {check.paired.challenger_only}, "
            f"only champion right {check.paired.champion_only}; McNemar p={check.paired.p_value:.4g}"
        )
    for key, value in tags.items():
        client.set_model_version_tag(name, challenger.version, key, value[:5000])
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
    return Outcome(  # MLflow 3 returns versions as int; Outcome keeps the documented str
        decision,
        str(challenger.version),
        str(champion.version) if champion else None,
        challenger_result.metrics[metric],
        champion_result.metrics[metric] if champion_result else None,
        metric,
        challenger_result.metrics,
        champion_result.metrics if champion_result else None,
        paired,
        checks,
        config.registry.max_p_value,
        config.registry.min_improvement,
        adapted_from,
    )
