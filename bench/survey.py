"""A survey on Spark against ``crackcls scan`` on the same photos, and a kill at half-way then a rerun.

    python bench/survey.py --model models:/crackcls@champion          # 1,000 photos, local[2]
    python bench/survey.py --model models/export --photos 200         # a quicker run, any model spec

Measures, on ``--master`` (default local[2]) with the same model and runtime (ONNX where the model
has an export):

* photos/s of ``crackcls survey`` (its scanning job, without Spark's start-up) and of
  ``crackcls scan`` (its scanning, without the model load; the mean of a run before and one
  after the survey's), and their ratio;
* Spark's start-up time and the survey's wall time, start to summary;
* the peak RSS of each Python worker (Spark's executor processes for Python), sampled with psutil;
* kill and rerun: the survey killed (SIGKILL, driver, JVM and workers at once) once about half the
  photos have rows, then run again: every photo must have exactly one row, equal to an
  uninterrupted run's.

Photos are mosaics of ``--rows`` x ``--cols`` patches (default 3 x 4: 908 x 681 px, 12 tiles) cut from the shared sample's
227 px patches (``--sample``), written as JPEG into ``--work``. Prints one JSON and writes
bench/results/survey.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness

SAMPLES = (harness.SHARED_SAMPLE, harness.SHARED_SDNET, harness.BUNDLED_SAMPLE)
SAME = ["path", "sha256", "verdict", "score", "crack_tiles", "tiles", "regions", "familiarity", "model_version", "error"]
PATCH = 227


def sample_patches(sample: Path, count: int = 400):  # noqa: ANN201 - (negative patches, positive patches) as uint8 arrays
    """Up to ``count`` patches per class, read once, cropped to 227 px."""
    import numpy as np
    from PIL import Image

    pools = []
    for label in ("Negative", "Positive"):
        files = sorted(p for p in (sample / label).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
        if not files:
            raise SystemExit(f"no {label} images under {sample}: pass --sample")
        arrays = []
        for file in files:
            with Image.open(file) as im:
                arrays.append(np.asarray(im.convert("RGB").resize((PATCH, PATCH))))
        pools.append(np.stack(arrays))
    return pools[0], pools[1]


def make_photos(sample: Path, folder: Path, count: int, rows: int = 3, cols: int = 4) -> list[Path]:
    """``count`` JPEG photos of ``rows`` x ``cols`` patches, one in four with two crack patches side by side."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob(f"survey-{rows}x{cols}-*.jpg"))
    if len(existing) == count:
        return existing
    negative, positive = sample_patches(sample)
    rng = np.random.default_rng(0)
    photos = []
    for i in range(count):
        grid = negative[rng.integers(len(negative), size=rows * cols)].copy()
        if i % 4 == 0:
            start = int(rng.integers(rows * cols - 1))
            grid[start : start + 2] = positive[rng.integers(len(positive), size=2)]
        picture = grid.reshape(rows, cols, PATCH, PATCH, 3).transpose(0, 2, 1, 3, 4).reshape(rows * PATCH, cols * PATCH, 3)
        path = folder / f"survey-{rows}x{cols}-{i:06d}.jpg"
        Image.fromarray(picture).save(path, quality=90)
        photos.append(path)
    return photos


def crackcls() -> str:
    return str(Path(sys.executable).parent / "crackcls")


def survey_command(photos: Path, out: Path, args: argparse.Namespace) -> list[str]:
    command = [crackcls(), "survey", str(photos), "--out", str(out), "--master", args.master, "--tile", str(PATCH),
               "--report-photos", "0", *(["--model", args.model] if args.model else []),
               *(["--runtime", args.runtime] if args.runtime else [])]  # fmt: skip
    return command  # a local master binds to loopback by itself


class WorkerMemory:
    """Peak RSS of every Spark Python worker under a process, sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        self.pid, self.every_s, self.peak = pid, every_s, {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                children = psutil.Process(self.pid).children(recursive=True)
            except psutil.Error:
                return
            for child in children:
                try:
                    if "pyspark" in " ".join(child.cmdline()) and "python" in child.name():
                        self.peak[child.pid] = max(self.peak.get(child.pid, 0), child.memory_info().rss)
                except psutil.Error:
                    continue
            time.sleep(self.every_s)

    def __enter__(self) -> WorkerMemory:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def run_survey(photos: Path, out: Path, args: argparse.Namespace) -> dict:
    """One uninterrupted survey: its summary, wall time and the workers' peak RSS."""
    started = time.perf_counter()
    process = subprocess.Popen(survey_command(photos, out, args), cwd=args.project, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    with WorkerMemory(process.pid) as memory:
        _, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"crackcls survey failed ({process.returncode}):\n{stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    peaks = sorted(memory.peak.values())
    return {"summary": summary, "wall_s": time.perf_counter() - started, "stderr": stderr,
            "worker_rss_mb": [round(p / 2**20, 1) for p in peaks]}  # fmt: skip


def scan_rate(photos: Path, args: argparse.Namespace) -> dict:
    """``crackcls scan``'s own scanning rate on the same photos (model loaded before the clock starts)."""
    code = f"""
import json, sys, time
from pathlib import Path
from crackcls.jobs import scan
from crackcls.jobs.predict import _config, champion_spec, load_for, runtime_for, expand_inputs
spec = {args.model!r} or champion_spec(_config())
runtime = runtime_for(spec, {args.runtime!r})
model = load_for(spec, runtime)
settings = scan.settings_from(_config(), {PATCH}, None, None, model)
files = expand_inputs([{str(photos)!r}])
started = time.perf_counter()
scans, skips = scan.scan_paths(model, files, settings, _config().evaluate.batch_size)
elapsed = time.perf_counter() - started
print(json.dumps({{"photos": len(scans), "skipped": skips.count, "elapsed_s": elapsed, "runtime": runtime}}))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=args.project, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        if "cannot resolve model" in result.stderr:  # no champion in this project yet
            harness.skip(result.stderr.strip().splitlines()[-1])
        raise SystemExit(f"scan failed:\n{result.stderr[-3000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    measured["photos_per_s"] = measured["photos"] / measured["elapsed_s"]
    return measured


def rows_of(out: Path):  # noqa: ANN201 - a pandas DataFrame
    from crackcls.photos import survey_rows

    return survey_rows.read_parts(out / survey_rows.PHOTOS)


def kill_and_rerun(photos: Path, out: Path, reference: Path, count: int, args: argparse.Namespace) -> dict:
    """Kill the survey once about half the photos have rows, rerun it, and compare with the uninterrupted rows."""
    from crackcls.photos import survey_rows

    process = subprocess.Popen(survey_command(photos, out, args), cwd=args.project, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        while len(survey_rows.part_files(out / survey_rows.PHOTOS)) * survey_rows.PHOTOS_PER_PART < count // 2:
            if process.poll() is not None:
                raise SystemExit("the survey ended before it could be killed: use more --photos")
            time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    before = len(rows_of(out))
    rerun = run_survey(photos, out, args)
    after, full = rows_of(out), rows_of(reference)
    same = after.sort_values("path")[SAME].reset_index(drop=True).equals(full.sort_values("path")[SAME].reset_index(drop=True))
    return {
        "rows_at_kill": before,
        "rerun": rerun["summary"]["this_run"],
        "rows": len(after),
        "each_photo_once": bool(after["path"].is_unique and len(after) == count),
        "same_rows_as_uninterrupted": bool(same),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = harness.parser(__doc__, "survey")
    parser.add_argument("--photos", type=int, default=1000, help="photos in the survey (default: %(default)s)")
    parser.add_argument("--model", default=None, help="any --model crackcls takes (default: the project's @champion)")
    parser.add_argument("--runtime", choices=("keras", "onnx"), default=None, help="default: onnx where the model has an export")
    parser.add_argument("--master", default="local[2]", help="Spark master (default: %(default)s)")
    parser.add_argument("--project", default=str(Path.cwd()), help="the project folder (its params.yaml and MLflow store)")
    parser.add_argument("--sample", default=None, help="a folder with Positive/ and Negative/ patches (default: the shared samples)")
    parser.add_argument("--work", default=None, help="where photos and outputs go (default: a temporary folder)")
    parser.add_argument("--no-kill", action="store_true", help="skip the kill-and-rerun check")
    parser.add_argument("--rows", type=int, default=3, help="patches down each photo (default: %(default)s)")
    parser.add_argument("--cols", type=int, default=4, help="patches across each photo (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.photos, args.no_kill = 100, True
    if importlib.util.find_spec("pyspark") is None:
        harness.skip("pyspark is not installed: pip install -e '.[survey]'")
    if shutil.which("java") is None:
        harness.skip("java not found: apt-get install openjdk-17-jre-headless")
    sample = Path(args.sample) if args.sample else next((s for s in SAMPLES if (s / "Positive").is_dir()), None)
    if sample is None:
        raise SystemExit("no sample patches found: pass --sample FOLDER (with Positive/ and Negative/)")
    work = Path(args.work or tempfile.mkdtemp(prefix="crackcls-bench-survey-"))
    photos = work / f"photos-{args.rows}x{args.cols}"
    make_photos(sample, photos, args.photos, args.rows, args.cols)
    for name in ("full", "killed"):
        subprocess.run(["rm", "-rf", str(work / name)], check=True)

    # scan measured before and after the survey: on a shared machine the load moves between the two
    before = scan_rate(photos, args)
    full = run_survey(photos, work / "full", args)
    after = scan_rate(photos, args)
    scan_rates = [before["photos_per_s"], after["photos_per_s"]]
    summary = full["summary"]
    survey_rate = summary["photos_per_s"]
    scan_mean = sum(scan_rates) / 2
    result = {
        "photos": args.photos,
        "photo": f"{args.cols * PATCH}x{args.rows * PATCH}, {args.rows * args.cols} tiles",
        "master": args.master,
        "cores": os.cpu_count(),
        "model": summary["model"],
        "runtime": summary["runtime"],
        "scan_photos_per_s": round(scan_mean, 2),
        "scan_photos_per_s_before_after": [round(rate, 2) for rate in scan_rates],
        "survey_photos_per_s": survey_rate,
        "survey_over_scan": round(survey_rate / scan_mean, 3),
        "spark_startup_s": summary.get("spark_startup_s"),
        "survey_wall_s": round(full["wall_s"], 1),
        "peak_worker_rss_mb": max(full["worker_rss_mb"], default=None),
        "worker_rss_mb": full["worker_rss_mb"],
        "targets": {"survey_over_scan": 0.8, "peak_worker_rss_mb": 1024},
    }
    if not args.no_kill:
        result["kill_and_rerun"] = kill_and_rerun(photos, work / "killed", work / "full", args.photos, args)
    harness.write({**result, "table": json.dumps(result, indent=2)}, args.out)
    return result


if __name__ == "__main__":
    main()
