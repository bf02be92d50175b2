"""Exports and runtimes: file sizes, int8's accuracy change, and predict / scan on TensorFlow against ONNX Runtime.

    python bench/export.py                        # this project, after `make demo` (models/model.keras, data/split)
    python bench/export.py --project DIR          # another project
    python bench/export.py --project DIR --images FOLDER --photo-megapixels 16

For the project's ``compact_cnn`` and for a MobileNetV2 at 224 px (random weights: its speed,
not its answers), in one run on the same images: ``crackcls export``, then ``crackcls predict``
on the same JPEGs and ``crackcls scan`` of one photo-sized image, each in a fresh process per
runtime. Each row gives the command's own time (model loading included; every import, TensorFlow's
or ONNX Runtime's too, done before the clock starts), the whole process's wall time, and its peak
resident memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import harness

SHARED = harness.SHARED_SAMPLE

DRIVER = """
import json, sys, time
def peak_rss_mb():  # VmHWM: this process's own high-water mark (ru_maxrss keeps the forking parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
started = time.perf_counter()
from crackcls.jobs import {job}
import scipy.stats  # the shift test's, on both runtimes
if {runtime!r} == "keras":
    import crackcls.tracking.registry  # TensorFlow and Keras
else:
    import onnxruntime
imported = time.perf_counter()
result = {job}.run({paths!r}, model_spec={model!r}, runtime={runtime!r}{extra})
done = time.perf_counter()
count = len(result.predictions) if {job!r} == "predict" else sum(s.tiles for s in result.scans)
print(json.dumps({{"count": count, "import_s": imported - started, "run_s": done - imported,
                   "tensorflow": "tensorflow" in sys.modules,
                   "peak_rss_mb": peak_rss_mb(),
                   "labels": [p.label for p in result.predictions] if {job!r} == "predict" else [s.verdict for s in result.scans]}}))
"""


def measured(job: str, paths: list[str], model: str, runtime: str, cwd: Path, extra: str = "") -> dict:
    """One command in a fresh interpreter: its figures and the process's peak RSS."""
    code = DRIVER.format(job=job, paths=paths, model=model, runtime=runtime, extra=extra)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{job} --runtime {runtime} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.splitlines()[-1])  
    figures["wall_s"] = round(wall, 2)
    return figures


def photo(source: Path, megapixels: float, target: Path) -> Path:
    """A photo-sized JPEG tiled from the sample's patches (the scan's speed does not depend on what is in it)."""
    from PIL import Image

    patches = sorted(source.rglob("*.jpg"))[:64]
    side = int((megapixels * 1e6 / 12) ** 0.5)
    width, height = 4 * side, 3 * side
    canvas = Image.new("RGB", (width, height))
    rng = np.random.default_rng(0)
    for top in range(0, height, 227):
        for left in range(0, width, 227):
            with Image.open(patches[int(rng.integers(len(patches)))]) as patch:
                canvas.paste(patch.convert("RGB").resize((227, 227)), (left, top))
    canvas.save(target, quality=90)
    return target


def mobilenet_project(work: Path) -> Path:
    """A MobileNetV2 at 224 px with random weights, saved as the pipeline saves a model."""
    from crackcls.config import Config
    from crackcls.model.build import build_model
    from crackcls.model.settings import ModelConfig

    config = Config()
    model = build_model(ModelConfig(backbone="mobilenet_v2", weights="none", image_size=224), config.train).model
    (work / "models").mkdir(parents=True, exist_ok=True)
    model.save(work / "models" / "model.keras")
    return work


def main() -> None:
    parser = harness.parser(__doc__, "export")
    parser.add_argument("--project", type=Path, default=Path("."), help="a trained project (default: this folder)")
    parser.add_argument("--images", type=Path, default=SHARED, help="JPEGs for predict (default: the shared sample)")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--photo-megapixels", type=float, default=16)
    args = parser.parse_args()
    if args.quick:
        args.count, args.photo_megapixels = 100, 4
    project = args.project.resolve()
    if not (project / "models" / "model.keras").is_file():
        harness.skip(f"{project} has no models/model.keras: run make demo (or train) first")
    images = sorted(str(p) for p in args.images.rglob("*.jpg"))[: args.count]
    env_note = {"cpus": os.cpu_count()}
    results: dict = {"machine": env_note, "images": len(images), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        big = photo(args.images, args.photo_megapixels, work / "photo.jpg")
        mobilenet = mobilenet_project(work / "mobilenet")
        targets = {
            "compact_cnn (project)": (project, "models/model.keras", []),
            "mobilenet_v2 224 px (random weights)": (mobilenet, "models/model.keras", ["--formats", "saved_model,onnx,litert"]),
        }
        for name, (cwd, model, export_args) in targets.items():
            check = ["--check-data", str(args.images)]  # parity and accuracy change on the same images for both
            exported = subprocess.run(
                [sys.executable, "-m", "crackcls.cli", "export", "--model", model, *export_args, *check],
                cwd=cwd, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if exported.returncode != 0:
                raise SystemExit(f"export of {name} failed:\n{exported.stderr[-3000:]}")
            manifest = json.loads((cwd / "models" / "export" / "export.json").read_text())
            row = {"files_mb": {fmt: round(f["bytes"] / 1e6, 3) for fmt, f in manifest["files"].items()},
                   "parity": manifest["parity"], "litert_int8": manifest["litert_int8"], "runs": {}}  # fmt: skip
            for runtime in ("keras", "onnx"):
                row["runs"][f"predict {runtime}"] = measured("predict", images, model, runtime, cwd)
                row["runs"][f"scan {runtime}"] = measured("scan", [str(big)], model, runtime, cwd)
            keras_labels, onnx_labels = (row["runs"][f"predict {r}"].pop("labels") for r in ("keras", "onnx"))
            row["predict_same_labels"] = float(np.mean(np.array(keras_labels) == np.array(onnx_labels)))
            for run in row["runs"].values():
                run.pop("labels", None)
                run["per_s"] = round(run["count"] / run["run_s"], 1)
            results["models"][name] = row
            print(f"\n{name}: files (MB) {row['files_mb']}; int8 {row['litert_int8']}")
            for fmt, check in row["parity"].items():
                print(f"  parity {fmt:<12} n={check['n']} max |dp| {check['max_abs_difference']:.2g}, same label "
                      f"{check['label_agreement']:.4f}, accuracy {check['accuracy_keras']:.4f} -> {check['accuracy_export']:.4f}")
            print(f"  {'run':<16} {'count':>6} {'per s':>8} {'run s':>7} {'wall s':>7} {'peak RSS MB':>12}  TensorFlow imported")
            for key, run in row["runs"].items():
                print(f"  {key:<16} {run['count']:>6} {run['per_s']:>8} {run['run_s']:>7.2f} {run['wall_s']:>7.2f} "
                      f"{run['peak_rss_mb']:>12}  {run['tensorflow']}")  # fmt: skip
            print(f"  predict labels the same on both runtimes: {row['predict_same_labels']:.4f}")
    harness.write(results, args.out)


if __name__ == "__main__":
    main()
