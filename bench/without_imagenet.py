"""Models without ImageNet: the whole pipeline from scratch and on the frozen-feature path (row e).

    python bench/without_imagenet.py           # the shared 4,000-image sample
    python bench/without_imagenet.py --quick   # a smoke run on the bundled sample

Each row is a fresh project on the same stratified split: ``compact_cnn`` from scratch
(``weights: none``) at ``--scratch-size``, and MobileNetV2 at ``--size`` on a frozen weights
file (a random MobileNetV2 whose BatchNorm statistics were set from training images). For
each: test accuracy with its 95% Wilson interval, seconds of ``features`` + ``train`` and
the process's peak RSS.
"""

from __future__ import annotations

from pathlib import Path

import harness


def pipeline(project: Path, overrides: dict) -> dict:
    """Test accuracy with its interval and the time of one whole pipeline."""
    config, info, trained_s, metrics = harness.run_pipeline(project, overrides)
    return {
        "backbone": config.model.backbone,
        "weights": "none" if config.model.weights == "none" else "frozen file",
        "image_size": config.model.image_size,
        "epochs_trained": info["epochs_trained"],
        "train_wall_s": round(trained_s, 1),
        "test_n": metrics["n"],
        "test_accuracy": round(metrics["accuracy"], 4),
        "test_accuracy_ci95": [round(metrics["accuracy_ci_low"], 4), round(metrics["accuracy_ci_high"], 4)],
        "test_recall": round(metrics["recall"], 4),
        "test_precision": round(metrics["precision"], 4),
        "test_roc_auc": round(metrics["roc_auc"], 4),
    }


def table(rows: dict) -> str:
    lines = ["| benchmark | measured | target |", "|---|---|---|"]
    for name, v in rows.items():
        low, high = v["test_accuracy_ci95"]
        target = "≥ 99.3%, ≤ 10 min, ≤ 3 GB" if name == "from scratch" else "comparison"
        lines.append(
            f"| e. {name}: {v['backbone']} {v['image_size']} px, {v['epochs_trained']} epochs | test accuracy "
            f"**{100 * v['test_accuracy']:.2f}%** (95% CI {100 * low:.2f}–{100 * high:.2f}%, n={v['test_n']}), "
            f"features + train {v['train_wall_s']} s, peak RSS {v['peak_rss_mb']} MB | {target} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = harness.parser(__doc__, "without_imagenet")
    harness.data_argument(parser)
    parser.add_argument("--size", type=int, default=224, help="the frozen MobileNetV2's image size (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--scratch-size", type=int, default=96, help="compact_cnn's image size (default: %(default)s)")
    parser.add_argument("--scratch-epochs", type=int, default=15)
    parser.add_argument("--frozen-epochs", type=int, default=10)
    args = parser.parse_args()
    if args.quick:
        args.size, args.scratch_size, args.scratch_epochs, args.frozen_epochs = 64, 48, 2, 2
    data = harness.default_data(args.data)
    variants = {
        "from scratch": {
            "model": {"backbone": "compact_cnn", "weights": "none", "image_size": args.scratch_size},
            "train": {"epochs": args.scratch_epochs, "patience": args.scratch_epochs},
        },
        "frozen features": {"train": {"epochs": args.frozen_epochs, "patience": args.frozen_epochs}},
    }
    rows = {}
    with harness.scratch() as work:
        base = harness.prepared_project(work / "base", data, args.size, args.frozen_epochs, args.batch)
        for name, overrides in variants.items():
            project = harness.make_project(work / name.replace(" ", "_"), data, args.size, args.frozen_epochs, args.batch)
            harness.update_params(project, {"model": {"weights": base.weights}})
            rows[name] = harness.in_child(pipeline, project, overrides)
    harness.write({"data": str(data), "split_counts": base.split_counts, "without_imagenet": rows, "table": table(rows)}, args.out)


if __name__ == "__main__":
    main()
