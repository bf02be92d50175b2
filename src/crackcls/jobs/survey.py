"""``crackcls survey``: a survey of many photos scanned on Apache Spark, resumable, its results as Parquet tables.

The photos are a folder tree, a glob, or a table (CSV or Parquet) of paths or URIs. Each Spark
task scans its share with :mod:`crackcls.photos.survey_rows` (the tiling, the rule and the
familiarity of ``crackcls scan``), the model loaded once per Python worker: the ONNX export
where the model has one, shipped with the task, else the Keras model. Tasks write their rows
themselves, a few photos per Parquet part file, so what finished survives a killed executor or
driver; a rerun skips every photo whose content was already scanned with the same model version
and settings. A last step on the driver reads all part files into the summary (counts, the photos
most worth a look, the set-level shift test), the inspection report of the worst photos, and an
MLflow run.

Without ``--master`` the session is whatever Spark's own configuration names (spark-submit,
``spark-defaults.conf``, ``MASTER``), else ``local[*]``. On a cluster, the output folder and the
photos must be where every executor reaches them (a shared file system, or URIs).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

# What the workers import with score_partition stays light (no MLflow, no TensorFlow): the driver's
# jobs and trackers are imported where the driver uses them.
from crackcls.model import portable
from crackcls.model.scoring import CRACK
from crackcls.photos import survey_rows
from crackcls.photos.scan import ScanSettings, tiles_of, tiles_shift
from crackcls.util import atomic, paths
from crackcls.util.errors import CrackclsError

DEFAULT_OUT = "reports/survey"
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
PATH_COLUMNS = ("path", "uri", "file")  # a table's photo column, when --column is not given
PHOTOS_PER_TASK = 64  # a Spark task's share: small enough to balance the cores, large enough to keep tasks cheap
REPORT_PHOTOS = 24  # the photos most worth a look, in the summary and the report
# The shift test reads at most this many tiles (a seeded sample of the photos beyond): far more than it needs to tell.
SHIFT_TILES = 1_000_000
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
OUTCOMES = "path string, outcome string, error string"  # what each task tells the driver, per photo


@dataclass(frozen=True)
class Job:
    """Everything a task needs, pickled once with the Spark command (Spark broadcasts it when large)."""

    out: str
    run: str  # this run's name in the part files' names
    spec: str
    runtime: str
    settings: ScanSettings
    batch_size: int
    version: str
    export: dict[str, bytes] | None  # the ONNX export's files (model.onnx and companions); None: load the Keras model
    done: frozenset[str]  # results written before this run, as survey_rows.done_key keys
    env: dict[str, str] = field(default_factory=dict)  # MLflow's tracking URI for a worker that loads a Keras model


@dataclass
class SurveyResult:
    out: Path
    model: str
    version: str
    photos: int  # in the survey
    counts: dict[str, int]  # this run: scanned, error, done (skipped, scanned before)
    summary: dict
    elapsed_s: float
    startup_s: float
    report: Path | None = None
    run_id: str | None = None


# ---------------------------------------------------------------- on the executors
_MODELS: dict[str, object] = {}  # per Python worker: one model per (spec, version), loaded at its first task


def threads_per_task(model: portable.PortableModel, cpus: int | None) -> portable.PortableModel:
    """The ONNX session on the task's own cores: by default ONNX Runtime takes every core, and each core runs a task."""
    if not cpus:
        return model
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads, options.inter_op_num_threads = cpus, 1
    model.session = onnxruntime.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
    return model


def worker_model(job: Job, cpus: int | None = None):  # noqa: ANN201 - a PortableModel or a keras.Model
    """The job's model in this worker process, loaded once and kept for the worker's later tasks.

    ``cpus``: the cores of one task (``spark.task.cpus``), which the ONNX session is limited to.
    """
    key = f"{job.spec}|{job.version}|{job.runtime}"
    if key not in _MODELS:
        if job.export is not None:
            with tempfile.TemporaryDirectory(prefix="crackcls-model-") as folder:  # the session reads it into memory
                for name, data in job.export.items():
                    (Path(folder) / name).write_bytes(data)
                _MODELS[key] = threads_per_task(portable.load(folder), cpus)
        else:
            from crackcls.jobs.predict import load_for  # the Keras model: TensorFlow and MLflow on the worker

            os.environ.update(job.env)
            _MODELS[key] = load_for(job.spec, job.runtime)
    return _MODELS[key]


def score_partition(job: Job, frames: Iterator) -> Iterator:  # noqa: ANN001 - pandas DataFrames in and out
    """One task: its photos scanned a part file at a time, each part written before the next is begun.

    Results an earlier attempt of this very task wrote (a retried task) are skipped too.
    """
    import pandas as pd
    from pyspark import TaskContext

    context = TaskContext.get()
    partition, attempt = (context.partitionId(), context.attemptNumber()) if context is not None else (0, 0)
    prefix = f"part-{job.run}-{partition:05d}-"
    done = set(job.done) | survey_rows.done_keys(job.out, prefix)
    model, number = worker_model(job, context.cpus() if context is not None else None), 0
    for frame in frames:
        uris = [str(uri) for uri in frame["path"]]
        for start in range(0, len(uris), survey_rows.PHOTOS_PER_PART):
            batch = survey_rows.score_photos(
                model, uris[start : start + survey_rows.PHOTOS_PER_PART], job.settings, job.batch_size, job.version, done
            )  # fmt: skip
            survey_rows.write_batch(job.out, f"{prefix}{attempt:02d}-{number:05d}", batch)
            done |= survey_rows.keys_of(batch.photos)
            number += 1
            yield pd.DataFrame(batch.outcomes(), columns=["path", "outcome", "error"])


# ---------------------------------------------------------------- on the driver
def java_problem() -> str | None:
    """Why Spark cannot start its JVM here, or None."""
    home = os.environ.get("JAVA_HOME")
    if shutil.which("java") or (home and (Path(home) / "bin" / "java").is_file()):
        return None
    return "java not found (Spark runs on Java 17 or later): apt-get install openjdk-17-jre-headless, or set JAVA_HOME"


# A session on this machine binds to loopback only, with no UI; --conf overrides either.
LOCAL_LOOPBACK = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1", "spark.ui.enabled": "false"}


def spark_session(master: str | None, conf: dict[str, str]):  # noqa: ANN201 - (SparkSession, whether this call started it)
    """The active session (a caller's, or spark-submit's), else a new one on ``master`` (Spark's default: ``local[*]``)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise CrackclsError("pyspark is not installed: pip install -e '.[survey]' (or pip install 'crackcls[survey]')") from None
    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return active, False
    if problem := java_problem():
        raise CrackclsError(problem)
    builder = SparkSession.builder.appName("crackcls survey")
    if master:
        builder = builder.master(master)
    local = (master or "local").startswith("local")
    if not os.environ.get("PYSPARK_PYTHON") and "spark.pyspark.python" not in conf and local:
        os.environ["PYSPARK_PYTHON"] = sys.executable  # local workers need this environment's packages (read at start only)
    for key, value in ({**LOCAL_LOOPBACK, **conf} if local else conf).items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # noqa: BLE001 - the JVM's own failure, told in one line
        raise CrackclsError(f"Spark did not start ({master or 'local[*]'}): {str(exc).splitlines()[0]}") from None
    return session, True


def is_table(inputs: Sequence[str]) -> bool:
    return len(inputs) == 1 and Path(inputs[0]).suffix.lower() in TABLE_SUFFIXES


def listed(inputs: Sequence[str]) -> list[str] | None:
    """The photos the folders and globs name, as absolute paths (listed here, before Spark starts); None for a table."""
    from crackcls.jobs.predict import expand_inputs

    if not is_table(inputs):
        return list(dict.fromkeys(os.path.abspath(f) for f in expand_inputs(inputs)))
    if not Path(inputs[0]).is_file() and "://" not in inputs[0]:
        raise CrackclsError(f"{inputs[0]}: no such table")
    return None


def photo_frame(spark, inputs: Sequence[str], files: list[str] | None, column: str | None):  # noqa: ANN001, ANN201
    """One ``path`` column, and its paths: the ``files`` listed, else the table's photo column."""
    if files is not None:
        import pandas as pd

        return spark.createDataFrame(pd.DataFrame({"path": files})), files
    table = inputs[0]
    csv = table.lower().endswith(".csv")
    frame = spark.read.option("header", True).csv(table) if csv else spark.read.parquet(table)
    names = frame.columns
    chosen = column or next((name for name in PATH_COLUMNS if name in names), names[0] if len(names) == 1 else None)
    if chosen not in names:
        wanted = f"named {column!r}" if column else "path, uri or file"
        raise CrackclsError(f"{table}: no photo column {wanted} (it has {', '.join(names)}): pass --column NAME")
    frame = frame.selectExpr(f"CAST(`{chosen}` AS STRING) AS path").where("path IS NOT NULL AND path != ''").dropDuplicates(["path"])
    files = [row["path"] for row in frame.collect()]
    if not files:
        raise CrackclsError(f"{table}: the table lists no photos")
    return frame, files


def version_of(spec: str, runtime: str) -> str:
    """What the rows call the model: the registered name and version, the run, or the start of the model file's sha256."""
    from crackcls.tracking import store

    with contextlib.suppress(Exception):  # an unreachable store names no version; the file or spec still does
        version = store.registered_version(spec)
        if version is not None:
            return f"{version.name} v{version.version}"
    if spec.startswith("runs:/"):
        return f"run {store.source_run(spec)}"
    path = paths.resolve(spec)
    if path.is_dir():
        path = path / portable.ONNX_FILE
    return f"sha256:{portable.file_sha256(path)[:12]}" if path.is_file() else spec


def export_files(model) -> dict[str, bytes]:  # noqa: ANN001 - a PortableModel
    """The export's files for the workers: the ONNX graph and its companions (threshold, rule, familiarity)."""
    from crackcls.trust import companions

    graph = Path(model.path)
    return {p.name: p.read_bytes() for p in (graph, *companions.files_for(graph))}


def _portable(spec: str):  # noqa: ANN202 - (PortableModel, its files)
    """The ONNX export of ``spec`` and its files, from the registry's run or beside the model file."""
    from crackcls.jobs.predict import load_for
    from crackcls.tracking import store

    if store.is_model_uri(spec):
        with tempfile.TemporaryDirectory() as tmp:
            folder = store.download_run_folder(spec, "export", Path(tmp))
            model = portable.load(folder)
            return model, export_files(model)
    model = load_for(spec, "onnx")
    return model, export_files(model)


def _partitions(count: int, parallelism: int, wanted: int | None) -> int:
    if wanted is not None:
        if wanted < 1:
            raise CrackclsError(f"--partitions must be at least 1, got {wanted}")
        return wanted
    return max(1, min(max(count, 1), max(parallelism, math.ceil(count / PHOTOS_PER_TASK))))


def run(
    inputs: Sequence[str],
    out: str | os.PathLike[str] | None = None,
    model_spec: str | None = None,
    master: str | None = None,
    runtime: str | None = None,
    column: str | None = None,
    partitions: int | None = None,
    tile: int | None = None,
    stride: int | None = None,
    threshold: float | None = None,
    batch_size: int | None = None,
    report_photos: int = REPORT_PHOTOS,
    conf: dict[str, str] | None = None,
    log: bool = True,
) -> SurveyResult:
    """Scan the survey into ``out`` (photos/, regions/, summary.json, report.html) and log it to MLflow."""
    from crackcls.jobs.predict import _config, champion_spec, checked_batch_size, load_for, model_label, runtime_for
    from crackcls.jobs.scan import settings_from
    from crackcls.tracking import store

    if not inputs:
        raise CrackclsError("name the survey: a folder, a quoted glob, or a CSV/Parquet table of photo paths")
    config = _config()
    settings_from(config, tile, stride, threshold)  # bad settings fail before Spark or the model start
    files = listed(inputs)
    batch_size = checked_batch_size(config, batch_size)
    if report_photos < 0:
        raise CrackclsError(f"--report-photos must be 0 or more, got {report_photos}")
    target = Path(out or paths.workspace_root() / DEFAULT_OUT).absolute()
    spec = model_spec or champion_spec(config)
    if not spec.startswith(("models:/", "runs:/")) and "://" not in spec:
        spec = str(paths.resolve(spec).absolute())  # workers may run elsewhere: no relative paths
    runtime = runtime_for(spec, runtime)
    if runtime == "onnx":
        model, export = _portable(spec)
    else:
        model, export = load_for(spec, runtime), None
    settings = settings_from(config, tile, stride, threshold, model)
    version = version_of(spec, runtime)
    named = survey_rows.settings_id(settings)
    done = survey_rows.done_keys(target, version=version, settings=named)

    started = time.perf_counter()
    spark, owned = spark_session(master, conf or {})
    startup_s = time.perf_counter() - started
    try:
        frame, files = photo_frame(spark, inputs, files, column)
        count = len(files)
        env = {"MLFLOW_TRACKING_URI": store.tracking_uri()} if export is None else {}
        job = Job(str(target), uuid.uuid4().hex[:8], spec, runtime, settings, batch_size, version, export, frozenset(done), env)
        frame = frame.repartition(_partitions(count, spark.sparkContext.defaultParallelism, partitions))
        outcomes = frame.mapInPandas(functools.partial(score_partition, job), OUTCOMES)
        counts = {row["outcome"]: int(row["count"]) for row in outcomes.groupBy("outcome").count().collect()}
    finally:
        if owned:
            spark.stop()
    elapsed_s = time.perf_counter() - started - startup_s
    counts = {name: counts.get(name, 0) for name in ("scanned", "error", "done")}
    label = model_label(spec, runtime)
    summary = summarize(target, model, version, named, files, counts, elapsed_s, report_photos)
    summary.update({
        "model": label, "model_version": version, "runtime": runtime, "settings": settings.describe(),
        "spark_startup_s": round(startup_s, 3),
    })  # fmt: skip
    atomic.write_json(target / SUMMARY_FILE, summary)
    result = SurveyResult(target, label, version, count, counts, summary, elapsed_s, startup_s)
    if report_photos:
        result.report = write_survey_report(target, model, spec, label, summary, settings, batch_size, config.scan.overlay_size)
    if log:
        result.run_id = log_run(result, config.mlflow.experiment, inputs, master, settings)
    return result


# ---------------------------------------------------------------- the assembly: every part file read once
def survey_rows_of(out: Path, version: str, settings: str, files: Sequence[str]):  # noqa: ANN201 - a pandas DataFrame
    """The survey's photo rows under this model version and these settings: each photo once, as it is now."""
    frame = survey_rows.read_parts(out / survey_rows.PHOTOS)
    frame = frame[(frame["model_version"] == version) & (frame["settings"] == settings) & frame["path"].isin(set(files))]
    return survey_rows.current(frame)


def summarize(
    out: Path, model, version: str, settings: str, files: Sequence[str], counts: dict[str, int], elapsed_s: float, top: int  # noqa: ANN001
) -> dict:
    """Photos by verdict, errors by reason, the photos most worth a look and the set-level shift test."""
    frame = survey_rows_of(out, version, settings, files)
    errors, scanned = frame[frame["error"].notna()], frame[frame["error"].isna()]
    reasons = errors["error"].map(lambda text: str(text).split(":", 1)[0]).value_counts()
    worth = scanned.assign(crack=scanned["verdict"] == CRACK).sort_values(["crack", "score"], ascending=False).head(top)
    keep = ["path", "verdict", "score", "crack_tiles", "tiles", "regions", "familiarity", "unfamiliar"]
    unfamiliar = scanned[scanned["unfamiliar"].fillna(False).astype(bool)].sort_values("familiarity", ascending=False)
    shift, tested = survey_shift(model, scanned)
    tiles = int(scanned["tiles"].sum()) if len(scanned) else 0
    return {
        "photos": len(files),
        "rows": len(frame),
        "missing": len(files) - len(frame),
        "by_verdict": {**{str(v): int(n) for v, n in scanned["verdict"].value_counts().items()}, "error": len(errors)},
        "errors_by_reason": {str(k): int(v) for k, v in reasons.items()},
        "this_run": counts,
        "elapsed_s": round(elapsed_s, 3),
        "photos_per_s": round((counts["scanned"] + counts["error"]) / elapsed_s, 3) if elapsed_s > 0 else None,
        "tiles": tiles,
        "worth_a_look": _records(worth[keep]),
        "unfamiliar": _records(unfamiliar[keep].head(top)),
        "errors": _records(errors[["path", "error"]].head(200)),
        "shift": None if shift is None else {**shift.as_dict(), "photos": tested, "line": shift.line(tiles_of(tested))},
    }


def _records(frame) -> list[dict]:  # noqa: ANN001 - a pandas DataFrame
    import json

    return json.loads(frame.to_json(orient="records"))


@dataclass
class _Tiles:
    """A scanned photo's tiles as :func:`crackcls.photos.scan.tiles_shift` reads them."""

    probabilities: object
    familiarity: object


def survey_shift(model, scanned):  # noqa: ANN001, ANN201 - (ShiftTest or None, photos tested)
    """The set-level shift test over the survey's tiles: every photo's, or a seeded sample of about :data:`SHIFT_TILES`."""
    import numpy as np

    with_tiles = scanned[scanned["tile_familiarity"].notna()]
    tiles = int(with_tiles["tiles"].sum()) if len(with_tiles) else 0
    if tiles > SHIFT_TILES:
        with_tiles = with_tiles.sample(n=max(1, round(len(with_tiles) * SHIFT_TILES / tiles)), random_state=0)
    photos = [_Tiles(np.asarray(p, np.float64), np.asarray(f, np.float64))
              for p, f in zip(with_tiles["tile_probabilities"], with_tiles["tile_familiarity"])]  # fmt: skip
    return tiles_shift(model, photos), len(photos)


def write_survey_report(
    out: Path, model, spec: str, label: str, summary: dict, settings: ScanSettings, batch_size: int, overlay_size: int  # noqa: ANN001
) -> Path | None:
    """The inspection report of the photos most worth a look, scanned again here for their overlays."""
    from crackcls.jobs.scan import model_version, scan_paths
    from crackcls.photos.report import ReportPhoto, render_report, write_report
    from crackcls.photos.survey_rows import local_photo
    from crackcls.tracking.store import model_card

    worst = [row["path"] for row in summary["worth_a_look"]]
    if not worst:
        return None
    named = model_version(spec, label)
    with tempfile.TemporaryDirectory(prefix="crackcls-survey-report-") as folder, contextlib.ExitStack() as stack:
        local = {}
        for uri in worst:
            with contextlib.suppress(Exception):  # gone since it was scanned: the report leaves it out
                local[stack.enter_context(local_photo(uri))] = uri
        scans, _ = scan_paths(model, list(local), settings, batch_size, Path(folder), overlay_size, named)
        by_path = {Path(scan.path): scan for scan in scans}
        photos = []
        for path, uri in local.items():
            if path in by_path:
                scan = by_path[path]
                photos.append(ReportPhoto({**scan.row(), "path": uri}, Path(scan.overlay) if scan.overlay else None))
        shift = (summary["shift"] or {}).get("line")
        errors = [(row["path"], row["error"]) for row in summary["errors"]]
        title = f"Survey report: the {len(photos)} photos most worth a look of {summary['photos']}"
        html = render_report(photos, named, model_card(spec), datetime.now().astimezone(), shift, errors, title)
    return write_report(out / REPORT_FILE, html)


def log_run(result: SurveyResult, experiment: str, inputs: Sequence[str], master: str | None, settings: ScanSettings) -> str:
    """The survey as an MLflow run: what was scanned with what, the counts, and the summary and report as artifacts."""
    import mlflow

    from crackcls.tracking import store

    store.configure(experiment)
    summary = result.summary
    with mlflow.start_run(run_name=f"survey-{Path(inputs[0]).stem or 'photos'}", tags={**store.git_tags(), "crackcls.job": "survey"}) as active:
        mlflow.log_params({
            "survey": ", ".join(inputs)[:500], "model": result.model, "model_version": result.version,
            "master": master or "spark default", "out": str(result.out), **settings.describe(),
        })  # fmt: skip
        by_verdict = summary["by_verdict"]
        metrics = {
            "photos": result.photos, "rows": summary["rows"], "missing": summary["missing"],
            "crack": by_verdict.get(CRACK, 0), "no_crack": by_verdict.get("no_crack", 0), "errors": by_verdict["error"],
            **{f"run_{name}": value for name, value in result.counts.items()},
            "elapsed_s": result.elapsed_s, "startup_s": result.startup_s,
        }  # fmt: skip
        if summary["photos_per_s"] is not None:
            metrics["photos_per_s"] = summary["photos_per_s"]
        if summary["shift"] is not None:
            tested = summary["shift"]
            metrics.update({f"shift_{k}": tested[k] for k in ("n", "p_value", "statistic", "median_ratio") if tested[k] is not None})
            metrics["shift"] = float(tested["shifted"])
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.log_artifact(str(result.out / SUMMARY_FILE), "survey")
        if result.report is not None:
            mlflow.log_artifact(str(result.report), "survey")
        return active.info.run_id


def summary_text(result: SurveyResult) -> str:
    """The closing lines for stderr."""
    by_verdict, counts = result.summary["by_verdict"], result.counts
    lines = [
        f"{result.photos} photos in the survey, scanned with {result.model} ({result.version}): "
        f"{by_verdict.get(CRACK, 0)} crack, {by_verdict.get('no_crack', 0)} no crack, {by_verdict['error']} errors",
        f"this run: {counts['scanned']} scanned, {counts['error']} errors, {counts['done']} done before "
        f"in {result.elapsed_s:.1f} s (Spark started in {result.startup_s:.1f} s)",
        f"rows in {result.out / survey_rows.PHOTOS} and {result.out / survey_rows.REGIONS}; summary {result.out / SUMMARY_FILE}",
    ]
    if result.summary["missing"]:
        lines.append(f"{result.summary['missing']} photos have no row yet: run the same command again to finish them")
    if result.summary["shift"] is not None:
        lines.append(result.summary["shift"]["line"])
    if result.report is not None:
        lines.append(f"report: {result.report}")
    return "\n".join(lines)

