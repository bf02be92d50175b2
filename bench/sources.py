"""Two sources: Mendeley and SDNET2018 trained together from scratch, split by parent photo, beside a Mendeley-only model.

    python bench/sources.py                   # the shared Mendeley 4,000 and SDNET2018's 165 parents (16,056 tiles)
    python bench/sources.py --sdnet ../shared/data/sdnet2018-sample   # the earlier 3,000-tile row
    python bench/sources.py --recipe '{"train": {"epochs": 30, "patience": 6}}'
    python bench/sources.py --quick           # the smaller samples, a few epochs

The whole pipeline from scratch (``compact_cnn``, params.yaml's recipe unless ``--recipe``
changes it): per-source test accuracy, balanced accuracy and recall with 95% intervals,
training images/s, wall time and peak RSS; beside it a Mendeley-only model with the same
recipe, scored on the same test split (a source's split does not depend on the other
sources, so that model never trained on those test images either).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import harness
from harness import ci


def score(project: Path, model_file: Path) -> dict:
    """Another project's model on this project's test split, per source."""
    from crackcls.data import manifest
    from crackcls.model.evaluation import evaluate_items
    from crackcls.model.inference import load_model_file
    from crackcls.trust import companions
    from crackcls.trust.metrics import json_safe
    from crackcls.util import paths

    os.chdir(project)
    model = load_model_file(model_file)
    items = manifest.read(manifest.manifest_path("test", project / paths.SPLIT_DIR))
    result = evaluate_items(model, items, companions.threshold(model, None, 0.5), 64, base=project)
    return {"overall": json_safe(result.metrics), "sources": {k: json_safe(v) for k, v in result.by_source.items()}}


def table(both: dict, alone: dict) -> str:
    rows = [
        "| source (test, unseen parents) | n | two sources: accuracy | balanced accuracy | recall | Mendeley only: accuracy | balanced accuracy | recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in both["sources"].items():
        other = alone["sources"].get(name)
        theirs = " | ".join(ci(other, k) for k in ("accuracy", "balanced_accuracy", "recall")) if other else "n/a | n/a | n/a"
        rows.append(f"| {name} | {m['n']} | **{ci(m, 'accuracy')}** | **{ci(m, 'balanced_accuracy')}** | {ci(m, 'recall')} | {theirs} |")
    return "\n".join(rows)


def main() -> None:
    parser = harness.parser(__doc__, "sources")
    harness.data_argument(parser)
    parser.add_argument("--sdnet", type=Path, default=None,
                        help="SDNET2018 tiles as <surface>/<Positive|Negative>/<parent>-<tile>.jpg (default: the shared sdnet2018-parents, else the shared sample, else sample/sdnet2018)")  # fmt: skip
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--recipe", type=json.loads, default={}, help="params.yaml keys to change, as JSON: '{\"train\": {...}}'")
    args = parser.parse_args()
    if args.quick:
        args.size, args.epochs = 48, 2
    mendeley = harness.default_data(args.data)
    candidates = (harness.SHARED_SDNET,) if args.quick else (harness.SHARED_SDNET_PARENTS, harness.SHARED_SDNET)
    shared = [folder for folder in candidates if (folder / "decks").is_dir()]
    sdnet = args.sdnet or (shared[0] if shared else harness.REPO_ROOT / "sample" / "sdnet2018")
    runs = {}
    with harness.scratch() as work:
        for name, tiles in (("two_sources", sdnet), ("mendeley_only", None)):
            project = harness.make_project(work / name, mendeley, args.size, args.epochs, args.batch)
            runs[name] = harness.in_child(harness.pipeline_by_source, project, harness.sources_overrides(mendeley, tiles, args.recipe))
        alone = harness.in_child(score, work / "two_sources", work / "mendeley_only" / "models/model.keras")
    both = runs["two_sources"]
    lines = [table(both, alone), ""]
    for name, run in runs.items():
        lines.append(f"{name}: {run['train_images']} training images, {run['image_size']} px, {run['epochs_trained']} epochs, "
                     f"{run['train_img_s']} img/s training, pipeline {run['wall_s']} s, peak RSS {run['peak_rss_mb']} MB")  # fmt: skip
    result = {"recipe": args.recipe, "sdnet": str(sdnet), "runs": runs, "mendeley_only_on_two_source_test": alone, "table": "\n".join(lines)}
    harness.write(result, args.out)


if __name__ == "__main__":
    main()
