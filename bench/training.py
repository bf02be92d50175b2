"""Training: the project's ``features`` + ``train`` stages against a seed-style Keras loop (rows a and d).

    python bench/training.py                  # the shared 4,000-image sample, 224 px, 10 and 30 epochs
    python bench/training.py --quick          # a smoke run on the bundled sample

The seed loop keeps augmentation layers inside the model, a frozen backbone,
``image_dataset_from_directory`` and ``model.fit``; the project runs its stages (MLflow
logging and registration included). Both read the same split and the same frozen backbone
weights file (a random MobileNetV2 whose BatchNorm statistics were set from training
images, as ImageNet weights may not be downloadable), so their accuracies compare. Early
stopping is off in both. The seed loop's short-epoch figures are its first N epochs
within the long run. Prints the speed-up, the accuracy gap and each process's peak RSS.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import harness


def project_train(project: Path, epochs: int) -> dict:
    """The project's own training: features stage + train stage, timed end to end."""
    from crackcls.config import load_config
    from crackcls.stages import features, train

    os.chdir(project)
    harness.update_params(project, {"train": {"epochs": epochs, "patience": epochs}})
    config = load_config(project / "params.yaml")
    started = time.perf_counter()
    feature_report = features.run(config, project)
    features_s = time.perf_counter() - started
    info = train.run(config, project)
    total = time.perf_counter() - started
    history = (project / "reports/train_history.csv").read_text().splitlines()
    last = dict(zip(history[0].split(","), history[-1].split(",")))
    return {
        "epochs": epochs,
        "wall_s": round(total, 1),
        "features_s": round(features_s, 1),
        "train_s": round(info["training_time_s"], 1),
        "val_accuracy": float(last["val_accuracy"]),
        "feature_report": feature_report,
    }


def seed_train(project: Path, epochs: int, checkpoints: list[int]) -> dict:
    """A faithful seed-project loop, reading the same split and backbone weights."""
    import keras

    from crackcls.config import load_config
    from crackcls.data import manifest
    from crackcls.model import features
    from crackcls.model.build import BACKBONES, build_backbone
    from crackcls.util import paths

    os.chdir(project)
    config = load_config(project / "params.yaml")
    size, batch = config.model.image_size, config.train.batch_size
    tree = project / "seed_tree"
    for split_name in ("train", "val"):
        for item in manifest.read(manifest.manifest_path(split_name, project / paths.SPLIT_DIR)):
            target = tree / split_name / paths.LABELS[item.label] / Path(item.path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.link(project / item.path, target)
    keras.utils.set_random_seed(config.train.seed)
    load = dict(image_size=(size, size), batch_size=batch, label_mode="binary", class_names=list(paths.LABELS))
    train_ds = keras.utils.image_dataset_from_directory(tree / "train", shuffle=True, seed=1, **load)
    val_ds = keras.utils.image_dataset_from_directory(tree / "val", shuffle=False, **load)

    backbone = build_backbone(config.model)
    backbone.load_weights(str(features.cache_dir(project) / features.BACKBONE_WEIGHTS_FILE))
    backbone.trainable = False
    inputs = keras.Input((size, size, 3))
    x = keras.layers.RandomFlip("horizontal_and_vertical")(inputs)
    x = keras.layers.RandomRotation(config.train.augment.rotation, fill_mode="reflect")(x)
    for layer in BACKBONES[config.model.backbone].preprocess():
        x = layer(x)
    x = backbone(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(config.model.dropout)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(config.train.learning_rate), loss="binary_crossentropy", metrics=["accuracy"])

    marks: dict[int, dict] = {}
    started = time.perf_counter()

    class Checkpoints(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):  # type: ignore[override]
            if epoch + 1 in checkpoints:
                marks[epoch + 1] = {
                    "epochs": epoch + 1,
                    "wall_s": round(time.perf_counter() - started, 1),
                    "val_accuracy": float(logs["val_accuracy"]),
                }

    model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=[Checkpoints()], verbose=2)
    return {"checkpoints": [marks[e] for e in checkpoints]}


def table(runs: list[dict]) -> str:
    rows = ["| benchmark | measured | target |", "|---|---|---|"]
    for run in runs:
        seed, ours = run["seed"], run["project"]
        rows.append(
            f"| a. Training, {ours['epochs']} epochs | seed loop {seed['wall_s']} s (val acc {seed['val_accuracy']:.3f}) vs "
            f"project {ours['wall_s']} s (val acc {ours['val_accuracy']:.3f}): **{seed['wall_s'] / ours['wall_s']:.1f}×**, "
            f"Δacc {100 * (ours['val_accuracy'] - seed['val_accuracy']):+.1f} pp | "
            f"{'≥ 5×' if ours['epochs'] <= 10 else '≥ 10×'}, ±0.5 pp |"
        )
    peaks = ", ".join(f"project {run['project']['epochs']} epochs {run['project']['peak_rss_mb']} MB" for run in runs)
    rows.append(f"| d. Peak RSS, training | {peaks}, seed loop {runs[-1]['seed']['peak_rss_mb']} MB | — |")
    return "\n".join(rows)


def main() -> None:
    parser = harness.parser(__doc__, "training")
    harness.data_argument(parser)
    parser.add_argument("--size", type=int, default=224, help="image size (default: %(default)s)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 30], help="epoch counts compared (default: 10 30)")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    if args.quick:
        args.size, args.epochs = 64, [2, 3]
    data, epochs = harness.default_data(args.data), sorted(args.epochs)
    with harness.scratch() as work:
        prepared = harness.prepared_project(work / "project", data, args.size, epochs[-1], args.batch)
        ours = [harness.in_child(project_train, prepared.project, e) for e in epochs]
        seed = harness.in_child(seed_train, prepared.project, epochs[-1], epochs)
    runs = [{"project": mine, "seed": {**mark, "peak_rss_mb": seed["peak_rss_mb"]}} for mine, mark in zip(ours, seed["checkpoints"])]
    harness.write({"data": str(data), "size": args.size, "split_counts": prepared.split_counts, "training": runs, "table": table(runs)}, args.out)


if __name__ == "__main__":
    main()
