"""``crackcls survey`` on Spark (local[2], loopback only): rows per photo and region, error rows, resuming after kills."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, build_mosaic, subprocess_env, trained_tiny_project, use_project_store

from crackcls.util.errors import CrackclsError

pytest.importorskip("pyspark")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("java not installed (apt-get install openjdk-17-jre-headless)", allow_module_level=True)

CHALLENGER = "models:/crackcls@challenger"
BUNDLED = REPO_ROOT / "sample" / "mendeley"
PHOTOS = 12
# What is compared between runs: everything but when a row was written.
SAME = ["path", "sha256", "verdict", "score", "crack_tiles", "tiles", "regions", "familiarity", "model_version", "error"]


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    """One local[2] session for the whole file, reachable on loopback only."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master("local[2]").appName("crackcls-tests")
    from crackcls.jobs.survey import LOCAL_LOOPBACK

    for key, value in {**LOCAL_LOOPBACK, "spark.sql.shuffle.partitions": "2"}.items():
        builder = builder.config(key, value)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYSPARK_PYTHON", sys.executable)  # the workers: this environment's Python, crackcls importable
        session = builder.getOrCreate()
        yield session
        session.stop()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny trained project whose @challenger has an ONNX export logged to its run."""
    from crackcls.jobs import export

    with trained_tiny_project(tmp_path_factory, "survey") as project:
        export.run(CHALLENGER, formats=("onnx",))
        yield project


@pytest.fixture
def project(exported: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_project_store(monkeypatch, exported)
    return exported


def write_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Small whole photos (2 x 3 patches) of the bundled sample, every third with a crack across two patches."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(count):
        cells = [(0, 1), (1, 1)] if i % 3 == 0 else []
        path = folder / f"photo{seed + i:03d}.jpg"
        Image.fromarray(build_mosaic(BUNDLED, 2, 3, cells, seed=seed + i)).save(path, quality=92)
        written.append(path)
    return written


def write_bad_photos(folder: Path) -> dict[str, str]:
    """A truncated JPEG, a text file named .jpg and a photo too large to decode: name → the error they must get."""
    from PIL import Image

    good = (BUNDLED / "Positive").glob("*.jpg").__next__().read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "notes.jpg").write_text("not a photo\n")
    Image.new("1", (12_500, 12_500)).save(folder / "huge.png")  # 156 MP: refused from its header, never decoded
    return {"truncated.jpg": "truncated or corrupt", "notes.jpg": "not an image", "huge.png": "too large"}


@pytest.fixture(scope="module")
def survey_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("survey") / "bridge"
    write_photos(folder, PHOTOS)
    return folder, write_bad_photos(folder)


@pytest.fixture(scope="module")
def first_run(exported: Path, spark, survey_folder, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    """The survey scanned once, uninterrupted, into its own folder."""
    from crackcls.jobs import survey

    with pytest.MonkeyPatch.context() as patch:
        use_project_store(patch, exported)
        out = tmp_path_factory.mktemp("first") / "out"
        return survey.run([str(survey_folder[0])], out, CHALLENGER, tile=227, report_photos=4)


def rows(out: Path, folder: str = "photos"):  # noqa: ANN201 - a pandas DataFrame
    from crackcls.photos import survey_rows

    return survey_rows.read_parts(out / folder)


def test_every_photo_is_one_row_with_the_scan_verdict_and_bad_photos_are_error_rows(project, first_run, survey_folder):
    from crackcls.jobs import scan

    folder, bad = survey_folder
    photos = rows(first_run.out)
    assert len(photos) == PHOTOS + len(bad) and photos["path"].is_unique
    assert first_run.counts == {"scanned": PHOTOS, "error": len(bad), "done": 0}
    errors = photos[photos["error"].notna()]
    assert {Path(path).name: error.split(":")[0] for path, error in zip(errors["path"], errors["error"])} == bad
    assert errors["sha256"].str.len().eq(64).all()  # read, hashed, then refused: done, never retried
    good = photos[photos["error"].isna()].sort_values("path")
    assert good["model_version"].eq("crackcls v1").all() and good["tiles"].eq(6).all()
    assert good["familiarity"].notna().all() and good["tile_familiarity"].map(len).eq(6).all()

    # the same answers as `crackcls scan` on the same photos, with the same export
    scanned = scan.run([str(p) for p in good["path"]], CHALLENGER, tile=227, runtime="onnx")
    by_path = {s.path: s for s in scanned.scans}
    for row in good.itertuples():
        expected = by_path[row.path]
        assert (row.verdict, row.crack_tiles, row.regions) == (expected.verdict, expected.crack_tiles, len(expected.regions))
        assert row.score == pytest.approx(expected.score, abs=1e-6)
        assert np.allclose(row.tile_probabilities, expected.probabilities.reshape(-1), atol=1e-6)

    regions = rows(first_run.out, "regions")
    assert len(regions) == int(good["regions"].sum())
    assert set(regions["path"]) == set(good.loc[good["regions"] > 0, "path"])
    assert (regions["right"] > regions["left"]).all() and (regions["bottom"] <= 454).all()


def test_the_summary_report_and_mlflow_run_tell_the_survey(project, first_run):
    import mlflow

    summary = json.loads((first_run.out / "summary.json").read_text())
    assert summary["photos"] == summary["rows"] == PHOTOS + 3 and summary["missing"] == 0
    assert sum(summary["by_verdict"].values()) == PHOTOS + 3 and summary["by_verdict"]["error"] == 3
    assert summary["errors_by_reason"] == {"truncated or corrupt": 1, "not an image": 1, "too large": 1}
    looks = summary["worth_a_look"]
    assert len(looks) == 4 and [r["score"] for r in looks] == sorted((r["score"] for r in looks), reverse=True)
    assert summary["shift"]["photos"] == PHOTOS and summary["shift"]["line"].startswith(("shift test", "SHIFT"))
    html = (first_run.out / "report.html").read_text()
    assert "Survey report" in html and html.count("data:image/jpeg;base64,") == 4 and "truncated.jpg" in html

    run = mlflow.MlflowClient().get_run(first_run.run_id)
    assert run.data.params["model_version"] == "crackcls v1" and run.data.tags["crackcls.job"] == "survey"
    assert run.data.metrics["photos"] == PHOTOS + 3 and run.data.metrics["errors"] == 3 and run.data.metrics["run_scanned"] == PHOTOS
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(first_run.run_id, "survey")}
    assert artifacts == {"survey/summary.json", "survey/report.html"}


def test_a_rerun_skips_what_is_done_and_scans_only_new_or_changed_photos(project, spark, survey_folder, first_run, tmp_path):
    from crackcls.jobs import survey

    folder = tmp_path / "bridge"
    shutil.copytree(survey_folder[0], folder)
    out = tmp_path / "out"
    shutil.copytree(first_run.out, out)
    # the copied rows name the first folder's paths: a survey of the same folder skips everything
    again = survey.run([str(survey_folder[0])], out, CHALLENGER, tile=227, report_photos=0, log=False)
    assert again.counts == {"scanned": 0, "error": 0, "done": PHOTOS + 3}
    assert len(rows(out)) == PHOTOS + 3

    write_photos(folder / "new", 2, seed=50)  # two new photos
    changed = write_photos(tmp_path / "other", 1, seed=60)[0]
    (folder / "photo000.jpg").write_bytes(changed.read_bytes())  # photo000.jpg's content changes
    first = survey.run([str(folder)], out, CHALLENGER, tile=227, report_photos=0, log=False)
    assert first.counts == {"scanned": PHOTOS + 2, "error": 3, "done": 0}  # other paths: scanned anew
    second = survey.run([str(folder)], out, CHALLENGER, tile=227, report_photos=0, log=False)
    assert second.counts == {"scanned": 0, "error": 0, "done": PHOTOS + 5}
    (folder / "photo001.jpg").write_bytes((folder / "photo002.jpg").read_bytes())
    third = survey.run([str(folder)], out, CHALLENGER, tile=227, report_photos=0, log=False)
    assert third.counts == {"scanned": 1, "error": 0, "done": PHOTOS + 4}
    assert third.summary["rows"] == PHOTOS + 5 and third.summary["missing"] == 0  # one current row per photo


def test_a_table_of_paths_and_uris_is_a_survey(project, spark, survey_folder, first_run, tmp_path):
    import pandas as pd

    from crackcls.jobs import survey

    files = sorted(str(p) for p in survey_folder[0].iterdir())[:5]
    table = tmp_path / "photos.csv"
    pd.DataFrame({"site": "bridge", "uri": [Path(f).as_uri() for f in files[:2]] + files[2:]}).to_csv(table, index=False)
    result = survey.run([str(table)], tmp_path / "out", CHALLENGER, tile=227, report_photos=0, log=False)
    assert result.photos == 5 and result.counts["scanned"] + result.counts["error"] == 5
    by_name = rows(tmp_path / "out").assign(name=lambda f: f["path"].map(lambda p: Path(p.removeprefix("file://")).name))
    first = rows(first_run.out).assign(name=lambda f: f["path"].map(lambda p: Path(p).name))
    merged = by_name.merge(first, on="name", suffixes=("", "_first"))
    assert len(merged) == 5 and (merged["sha256"] == merged["sha256_first"]).all()
    assert np.allclose(merged["score"].fillna(-1), merged["score_first"].fillna(-1))

    pd.DataFrame({"a": files, "b": files}).to_parquet(tmp_path / "two.parquet")
    with pytest.raises(CrackclsError, match="no photo column path, uri or file .*--column"):
        survey.run([str(tmp_path / "two.parquet")], tmp_path / "out2", CHALLENGER, log=False)
    assert survey.run([str(tmp_path / "two.parquet")], tmp_path / "out2", CHALLENGER, column="b", tile=227,
                      report_photos=0, log=False).photos == 5  # fmt: skip


def test_a_retried_task_keeps_what_its_killed_attempt_wrote(project, survey_folder, tmp_path, monkeypatch):
    """An executor killed part-way: the next attempt of the task skips the parts written, and no photo is lost or doubled."""
    import pandas as pd

    from crackcls.jobs import survey
    from crackcls.jobs.predict import _config
    from crackcls.jobs.scan import settings_from
    from crackcls.photos import survey_rows

    monkeypatch.setattr(survey_rows, "PHOTOS_PER_PART", 4)
    model, export = survey._portable(CHALLENGER)
    settings = settings_from(_config(), 227, None, None, model)
    job = survey.Job(str(tmp_path / "out"), "r1", CHALLENGER, "onnx", settings, 64, "crackcls v1", export, frozenset())
    files = sorted(str(p) for p in survey_folder[0].iterdir())
    frames = [pd.DataFrame({"path": files})]
    killed = survey.score_partition(job, iter(frames))
    assert len(next(killed)) == 4  # one part written, then the worker dies
    killed.close()
    outcomes = pd.concat(survey.score_partition(job, iter(frames)))
    assert sorted(outcomes["path"]) == files
    assert (outcomes["outcome"] == "done").sum() == 4
    written = rows(tmp_path / "out")
    assert sorted(written["path"]) == files and len(survey_rows.part_files(tmp_path / "out" / "photos")) == 4
    assert survey.worker_model(job) is survey.worker_model(job)  # loaded once per worker, from the shipped export


def test_a_killed_driver_loses_no_finished_rows_and_the_rerun_finishes_the_rest(project, spark, survey_folder, first_run, tmp_path):
    from crackcls.jobs import survey

    out = tmp_path / "out"
    env = subprocess_env()
    command = [str(Path(sys.executable).parent / "crackcls"), "survey", str(survey_folder[0]), "--out", str(out), "--model",
               CHALLENGER, "--tile", "227", "--master", "local[1]", "--partitions", "4", "--report-photos", "0"]  # fmt: skip
    process = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while not list((out / "photos").glob("part-*.parquet")):
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no part file in 120 s"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the driver, its JVM and its Python workers, at once
        process.wait(timeout=30)
    kept = rows(out)
    assert 0 < len(kept) < PHOTOS + 3  # killed part-way, with some rows on disk
    result = survey.run([str(survey_folder[0])], out, CHALLENGER, tile=227, report_photos=0, log=False)
    assert result.counts["done"] == len(kept) and sum(result.counts.values()) == PHOTOS + 3
    resumed = rows(out)
    assert resumed["path"].is_unique and len(resumed) == PHOTOS + 3
    uninterrupted = rows(first_run.out)
    a, b = (frame.sort_values("path")[SAME].reset_index(drop=True) for frame in (resumed, uninterrupted))
    assert a.equals(b)


def test_missing_java_and_bad_options_are_clear_errors(project, monkeypatch):
    from crackcls import cli
    from crackcls.jobs import survey

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    assert "apt-get install openjdk-17-jre-headless" in survey.java_problem()
    monkeypatch.undo()
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "pyspark.sql", None)  # as if pyspark were not installed
        with pytest.raises(CrackclsError, match=r"pyspark is not installed: pip install -e '\.\[survey\]'"):
            survey.spark_session(None, {})
    with pytest.raises(CrackclsError, match="--conf spark.x: use KEY=VALUE"):
        cli._survey(cli.build_parser().parse_args(["survey", "photos/", "--conf", "spark.x"]))
    with pytest.raises(CrackclsError, match="--partitions must be at least 1"):
        survey._partitions(10, 2, 0)
    with pytest.raises(CrackclsError, match="no such file or folder"):
        survey.run(["no-such-folder/"], project / "out", CHALLENGER, log=False)
