"""Prediction: the project's batch prediction against the raw forward pass, and ``crackcls predict`` as a user runs it (rows b and d).

    python bench/predict.py                   # 1,000 JPEGs of the shared sample, MobileNetV2 at 224 px
    python bench/predict.py --quick           # a smoke run on the bundled sample

A MobileNetV2 on a frozen weights file is trained for one epoch (its weights do not change
speed). Then, each in a process of its own: images/s of the project's prediction on a
folder of JPEGs against the raw forward pass on tensors already in memory (same model,
batch and size) and their ratio; and ``crackcls predict <folder> --model <file>`` end to
end, with its peak RSS.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import harness
from training import project_train


def batch_prediction(project: Path, n_images: int, batch: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from crackcls.data import manifest
    from crackcls.data.images import load_rgb
    from crackcls.model.inference import load_model_file, predict_files
    from crackcls.util import paths

    os.chdir(project)
    model = load_model_file(project / paths.MODEL_FILE)
    size = int(model.input_shape[1])
    items = manifest.read(manifest.manifest_path("train", project / paths.SPLIT_DIR))
    files = [str(project / it.path) for it in items][:n_images]
    predict_files(model, files[: batch * 2], batch)  # warm-up: tracing and thread pools

    started = time.perf_counter()
    _, ok = predict_files(model, files, batch)
    pipeline_s = time.perf_counter() - started

    tensors = np.stack([load_rgb(f, size) for f in files]).astype(np.float32)
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    forward(tf.constant(tensors[:batch]))
    batches = [tf.constant(tensors[i : i + batch]) for i in range(0, len(tensors), batch)]
    started = time.perf_counter()
    for chunk in batches:
        forward(chunk).numpy()
    raw_s = time.perf_counter() - started
    return {
        "images": len(files),
        "batch": batch,
        "size": size,
        "pipeline_img_s": round(len(files) / pipeline_s, 1),
        "raw_forward_img_s": round(len(files) / raw_s, 1),
        "ratio": round(raw_s / pipeline_s, 3),
        "all_decoded": bool(ok.all()),
    }


def predict_command(project: Path, n_images: int) -> dict:
    """``crackcls predict <folder> --model <file>`` as a user runs it; its peak RSS is this process's."""
    from crackcls import cli
    from crackcls.data import manifest
    from crackcls.util import paths

    os.chdir(project)
    items = manifest.read(manifest.manifest_path("train", project / paths.SPLIT_DIR))[:n_images]
    folder = project / "predict_inbox"
    folder.mkdir(exist_ok=True)
    for item in items:
        link = folder / Path(item.path).name
        if not link.exists():
            link.symlink_to(project / item.path)
    started = time.perf_counter()
    try:
        cli.main(["predict", str(folder), "--model", str(project / paths.MODEL_FILE), "--output", str(project / "predictions.csv")])
    except SystemExit as exited:
        if exited.code:
            raise
    return {"images": len(items), "seconds": round(time.perf_counter() - started, 1)}


def table(prediction: dict, command: dict) -> str:
    p, c = prediction, command
    return "\n".join([
        "| benchmark | measured | target |",
        "|---|---|---|",
        f"| b. Prediction ({p['images']} JPEGs, {p['size']} px, batch {p['batch']}) | {p['pipeline_img_s']} img/s vs raw forward "
        f"{p['raw_forward_img_s']} img/s: **{p['ratio']:.2f}** (peak RSS {p['peak_rss_mb']} MB) | ≥ 0.9 |",
        f"| d. Peak RSS, `crackcls predict <folder> --model <file>` on {c['images']:,} JPEGs ({c['seconds']} s) "
        f"| **{c['peak_rss_mb']} MB** | ≤ 1.5 GB |",
    ])  # fmt: skip


def main() -> None:
    parser = harness.parser(__doc__, "predict")
    harness.data_argument(parser)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=1000, help="JPEGs predicted (default: %(default)s)")
    args = parser.parse_args()
    if args.quick:
        args.size, args.images = 64, 64
    data = harness.default_data(args.data)
    with harness.scratch() as work:
        prepared = harness.prepared_project(work / "project", data, args.size, 1, args.batch)
        harness.in_child(project_train, prepared.project, 1)
        prediction = harness.in_child(batch_prediction, prepared.project, args.images, args.batch)
        command = harness.in_child(predict_command, prepared.project, args.images)
    result = {"data": str(data), "prediction": prediction, "predict_command": command, "table": table(prediction, command)}
    harness.write(result, args.out)


if __name__ == "__main__":
    main()
