"""DVC stage ``train``: fit the model, fit what it needs beside it, save, log to MLflow, register as ``challenger``.

The steps live in their wings: fitting in :mod:`crackcls.model.training` (one process)
or :mod:`crackcls.model.distributed` (``TF_CONFIG``: several workers, the chief goes
on alone), post-train fitting in :mod:`crackcls.model.posttrain`, the whole-photo
rule in :mod:`crackcls.photos.photo_rule`, logging and registration in
:mod:`crackcls.tracking.registry`; with ``train.init``, the start model and its lineage in
:mod:`crackcls.tracking.starting_point`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import mlflow

from crackcls.config import Config, load_config
from crackcls.model import distributed, posttrain, runtime, training
from crackcls.photos import photo_rule
from crackcls.tracking import registry, starting_point, store
from crackcls.trust.companions import Companions
from crackcls.util import atomic, paths
from crackcls.util.errors import CrackclsError, user_errors_exit


def run(config: Config, workspace: Path) -> dict:
    """Train under the strategy the machine calls for, then post-train fit, save, log and register."""
    run_name = f"{config.model.backbone}-{config.model.image_size}px"
    if not distributed.multi_worker():
        with starting_point.starting_point(config.train.init, config.registry.model_name) as start:
            if start is not None:
                run_name += f"-from-v{start.version}" if start.version else "-adapted"
            with training.single_process(config.model, config.train):
                fit = functools.partial(training.fit, start=start.model_file if start else None)
                return fit_save_and_register(config, workspace, fit, run_name, runtime.describe(), start)
    if config.train.adapting:
        raise CrackclsError("train.init starts from a model in one process; unset TF_CONFIG or set train.init: none")
    with distributed.cluster() as cluster:
        if not cluster.is_chief:  # trains in sync; the chief writes the outputs
            trained = cluster.fit(config.model, config.train, workspace)
            return {"task": f"{cluster.me.type}:{cluster.me.index}", **trained.metrics}
        run_name += f"-{cluster.me.workers}workers"
        return fit_save_and_register(config, workspace, cluster.fit, run_name, cluster.describe())


def fit_save_and_register(
    config: Config,
    workspace: Path,
    fit: Callable[..., training.Trained],
    run_name: str,
    runtime_tags: dict,
    start: starting_point.StartingPoint | None = None,
) -> dict:
    params = config.model_dump(mode="json")
    lineage_tags = adaptation_tags(start, workspace)
    with registry.training_run(config.mlflow.experiment, run_name, params, workspace, runtime_tags) as run:
        mlflow.set_tags(lineage_tags)
        trained = fit(config.model, config.train, workspace, on_epoch=registry.log_epoch)
        evaluate = config.evaluate
        fitted = posttrain.fit(
            trained.crack.model,
            workspace,
            batch_size=evaluate.batch_size,
            threshold=evaluate.threshold,
            target_recall=evaluate.target_recall,
        )  # calibrates the model in place
        companions, rule_figures = with_photo_rule(fitted, config)
        saved = training.save(trained, companions, workspace)
        registry.log_training({**trained.metrics, **fitted.metrics, **rule_figures}, trained.params, saved.plot_files)
        registered = registry.log_and_register(
            trained.crack.model,
            saved.model_file,
            saved.companion_files,
            model_name=config.registry.model_name,
            threshold=companions.threshold,
            tags={"backbone": config.model.backbone, "target_recall": str(evaluate.target_recall), **lineage_tags},
        )
    info = {
        "run_id": run.run_id,
        "experiment_id": run.experiment_id,
        "tracking_uri": store.tracking_uri(),
        "registered_model": config.registry.model_name,
        **registered,
        "training_time_s": trained.metrics["training_time_s"],
        "epochs_trained": trained.epochs,
        "photo_rule_validation": (companions.photo_rule or {}).get("validation"),
        **lineage_tags,
    }
    atomic.write_json(workspace / paths.RUN_INFO_FILE, info)
    return info


def adaptation_tags(start: starting_point.StartingPoint | None, workspace: Path) -> dict[str, str]:
    """Where an adapted model came from, and which field data it took in; nothing for a new model."""
    if start is None:
        return {}
    field = starting_point.field_data_version(workspace)
    return {**start.tags(), **({"field_data_md5": field} if field else {})}


def with_photo_rule(fitted: posttrain.Fitted, config: Config) -> tuple[Companions, dict[str, float]]:
    """The companions with the photo rule fitted on the calibrated validation scores (none: ``scan.target_photo_recall`` unset)."""
    if config.scan.target_photo_recall is None:
        return fitted.companions, {}
    val = fitted.validation
    rule, figures = photo_rule.fit_on_validation(
        val.probabilities, val.labels, val.files, val.sources, val.parents, config.scan.target_photo_recall, config.scan.connectivity
    )
    return dataclasses.replace(fitted.companions, photo_rule=rule), figures


@user_errors_exit
def main() -> None:
    info = run(load_config(), paths.workspace_root())
    if "run_id" not in info:
        return  # a worker of a multi-worker run: the chief logs, writes and reports
    started = f" from {info['adapted_from']}" if "adapted_from" in info else ""
    print(
        f"train: run {info['run_id']}, {info['epochs_trained']} epochs{started} in {info['training_time_s']} s; "
        f"registered {info['registered_model']} v{info['registered_model_version']} as @{registry.CHALLENGER}"
    )
    rule = info.get("photo_rule_validation")
    if rule and not rule["reached_target"]:  # scans still work, but find fewer cracked photos than asked
        print(
            f"train: no photo rule finds {rule['target_photo_recall']:.0%} of the cracked validation photos without calling every "
            f"crack-free one crack; the rule kept finds {rule['photo_recall']:.0%} with {rule['photo_false_alarm_rate']:.0%} "
            "false alarms (scan.target_photo_recall; a better model or more validation data)"
        )


if __name__ == "__main__":
    main()
