"""Site adaptation: a champion, then 0 to 100 corrected tiles of a surface it never saw, chosen by the review queue or at random.

    python bench/adaptation.py                         # the shared painted walls as the site
    python bench/adaptation.py --site DIR              # another surface: DIR/Positive and DIR/Negative
    python bench/adaptation.py --quick                 # small images, one epoch, 25 tiles
    python bench/adaptation.py --keep /tmp/site        # keep the project: `crackcls promote` there judges the last run

The champion is the demo's: ``compact_cnn`` from scratch on the bundled Mendeley and
SDNET2018 samples (params.yaml's recipe, 96 px), promoted. The site's images are split
once, seeded: ``--test-per-class`` of each class are the site's test set, never
corrected, and the rest is the pool an inspector reviews. For each count and each way of
choosing (the review queue's order, or at random), that many pool images become
corrections under ``field/<site>/`` exactly as the desk writes them, and the pipeline
runs with ``train.init: champion`` (``train.adapt``). Each adapted model is scored on
the site's test set and on the test split of every other source; the champion stays.
Reported: the site's balanced accuracy and recall with 95% intervals, each other
source's balanced accuracy (``(below)`` where it falls under the champion's 95%
interval), and the wall time of each adaptation (split, features and train stages).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import time
from pathlib import Path

import harness
from harness import ci

SITE_NAME = "painted-wall"
COUNTS = (25, 50, 100)
DEMO_RECIPE = {"train": {"epochs": 12, "patience": 4, "batch_size": 32}}


def site_split(site: Path, test_per_class: int, seed: int) -> dict[str, list[tuple[str, int]]]:
    """(file, label) for the site's held-out test set and for the review pool, each class shuffled once."""
    rng = random.Random(seed)
    test, pool = [], []
    for label, name in enumerate(("Negative", "Positive")):
        files = sorted(str(p) for p in (site / name).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        rng.shuffle(files)
        test += [(f, label) for f in files[:test_per_class]]
        pool += [(f, label) for f in files[test_per_class:]]
    rng.shuffle(pool)
    return {"test": test, "pool": pool}


def train_champion(project: Path, overrides: dict) -> dict:
    """The whole pipeline, then ``crackcls promote``: the champion every adaptation starts from."""
    from crackcls.jobs import promote

    result = harness.pipeline_by_source(project, overrides)
    outcome = promote.run()
    return {**result, "champion_version": outcome.challenger_version, "promoted": outcome.decision.promote}


def score_site(project: Path, model_spec: str, files: list[tuple[str, int]]) -> dict:
    """A model on the site's held-out images: metrics with intervals."""
    from crackcls.data.splitting import Item
    from crackcls.model.evaluation import evaluate_items
    from crackcls.tracking.registry import load_model
    from crackcls.trust import companions
    from crackcls.trust.metrics import json_safe

    os.chdir(project)
    model, _ = load_model(model_spec)
    items = [Item(path, label, hashlib.sha256(path.encode()).hexdigest(), SITE_NAME) for path, label in files]
    result = evaluate_items(model, items, companions.threshold(model, None, 0.5), 64)
    return json_safe(result.metrics)


def review_order(project: Path, model_spec: str, pool: list[tuple[str, int]]) -> dict:
    """The pool's indices in the order ``crackcls scan --review`` queues them, each image scanned as a one-tile photo."""
    from crackcls.jobs import scan

    os.chdir(project)
    files = [path for path, _ in pool]
    result = scan.run(files, model_spec, tiles_across=1, review=len(files), review_file=project / "reports" / "review.json")
    index = {str(Path(path).resolve()): i for i, path in enumerate(files)}
    order = [index[str(Path(tile.path).resolve())] for tile in result.review]
    return {"order": order + [i for i in range(len(files)) if i not in set(order)]}


def write_corrections(project: Path, chosen: list[tuple[str, int]], site: str) -> int:
    """The chosen pool images as an inspector's corrections of the site, then the pipeline's copy (``dvc update data.dvc``)."""
    from PIL import Image

    from crackcls.data.field_labels import Correction, FieldFolder, LabelledTile
    from crackcls.util import paths

    shutil.rmtree(project / "field", ignore_errors=True)
    shutil.rmtree(project / paths.FIELD_DIR, ignore_errors=True)
    folder = FieldFolder(project / "field")
    for path, label in chosen:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        correction = Correction(Path(path).name, digest, "missed_crack" if label else "not_a_crack", (0, 0, *image.size),
                                "bench", "bench", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), site=site)  # fmt: skip
        folder.add(correction, [LabelledTile(image, paths.LABELS[label], (0, 0, *image.size))])
    if chosen:
        shutil.copytree(project / "field", project / paths.FIELD_DIR)
    return len(folder.rows())


def adapt(project: Path, chosen: list[tuple[str, int]], site: str, site_test: list[tuple[str, int]]) -> dict:
    """Corrections in, ``train.init: champion`` through split, features and train; the new version scored."""
    from crackcls.config import load_config
    from crackcls.stages import evaluate, features, split, train
    from crackcls.trust.metrics import json_safe

    os.chdir(project)
    written = write_corrections(project, chosen, site)
    harness.update_params(project, {"train": {"init": "champion"}})
    config = load_config(project / "params.yaml")
    started = time.perf_counter()
    split.run(config, project)
    features.run(config, project)
    info = train.run(config, project)
    adapt_s = time.perf_counter() - started
    test = evaluate.run(config, project)["test"]
    version = f"models:/{config.registry.model_name}/{info['registered_model_version']}"
    return {
        "corrections": written,
        "adapt_wall_s": round(adapt_s, 1),
        "training_time_s": info["training_time_s"],
        "adapted_from": info.get("adapted_from"),
        "site": score_site(project, version, site_test),
        "sources": {k: json_safe(v) for k, v in test.by_source.items() if not k.startswith("field")},
    }


def below(value: float, metrics: dict, key: str) -> bool:
    """True when ``value`` falls under the champion's 95% interval: the source got worse."""
    return value < metrics[f"{key}_ci_low"] - 1e-9


def table(champion: dict, runs: dict) -> str:
    sources = sorted(champion["sources"])
    head = "| tiles corrected | chosen by | site balanced accuracy | site recall | " + " | ".join(sources) + " | adaptation wall s |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    base = champion["site"]
    cells = [f"{champion['sources'][s]['balanced_accuracy']:.3f}" for s in sources]
    rows.append(f"| 0 | (the champion) | {ci(base, 'balanced_accuracy')} | {ci(base, 'recall')} | " + " | ".join(cells) + " | – |")
    for (strategy, count), run in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = []
        for s in sources:
            value = run["sources"][s]["balanced_accuracy"]
            cells.append(f"{value:.3f}" + (" (below)" if below(value, champion["sources"][s], "balanced_accuracy") else ""))
        site = run["site"]
        rows.append(f"| {count} | {strategy} | {ci(site, 'balanced_accuracy')} | {ci(site, 'recall')} | " + " | ".join(cells) + f" | {run['adapt_wall_s']} |")
    return "\n".join(rows)


def curve(champion: dict, runs: dict, out: Path) -> None:
    """The learning curve: the site's balanced accuracy against corrections, one line per way of choosing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for strategy in ("review queue", "random"):
        points = sorted((count, run["site"]) for (name, count), run in runs.items() if name == strategy)
        xs = [0] + [count for count, _ in points]
        site = [champion["site"]] + [metrics for _, metrics in points]
        ys = [m["balanced_accuracy"] for m in site]
        low = [m["balanced_accuracy_ci_low"] for m in site]
        high = [m["balanced_accuracy_ci_high"] for m in site]
        axes.plot(xs, ys, marker="o", label=strategy)
        axes.fill_between(xs, low, high, alpha=0.15)
    axes.set_xlabel("corrected tiles of the site")
    axes.set_ylabel("site balanced accuracy (held-out test)")
    axes.set_ylim(0.4, 1.0)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = harness.parser(__doc__, "adaptation")
    parser.add_argument("--site", type=Path, default=harness.PAINTED_WALL, help="the site's labelled images (default: %(default)s)")
    parser.add_argument("--site-name", default=SITE_NAME)
    parser.add_argument("--test-per-class", type=int, default=75, help="held out per class as the site's test set")
    parser.add_argument("--counts", type=lambda text: tuple(int(v) for v in text.split(",")), default=COUNTS,
                        help="corrected tiles per run, comma-separated (default: 25,50,100)")  # fmt: skip
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", type=Path, default=None, help="copy the project (its registry, the last adaptation's data) here")
    args = parser.parse_args()
    if not (args.site / "Positive").is_dir():
        harness.skip(f"{args.site} has no Positive/ folder (the shared painted walls, or --site)")
    recipe = DEMO_RECIPE
    if args.quick:
        args.size, args.counts, args.test_per_class = 48, (25,), 50
        recipe = {"train": {"epochs": 1, "patience": 1, "batch_size": 32}}
    split = site_split(args.site, args.test_per_class, args.seed)
    if max(args.counts) > len(split["pool"]):
        raise SystemExit(f"the pool holds {len(split['pool'])} images; --counts asks for {max(args.counts)}")
    mendeley, sdnet = harness.REPO_ROOT / "sample" / "mendeley", harness.REPO_ROOT / "sample" / "sdnet2018"
    runs: dict = {}
    with harness.scratch() as work:
        project = harness.make_project(work / "site", mendeley, args.size, recipe["train"]["epochs"], recipe["train"]["batch_size"])
        base = harness.in_child(train_champion, project, harness.sources_overrides(mendeley, sdnet, recipe))
        champion_spec = f"models:/crackcls/{base['champion_version']}"
        champion = {"sources": base["sources"], "site": harness.in_child(score_site, project, champion_spec, split["test"])}
        queue = harness.in_child(review_order, project, champion_spec, split["pool"])["order"]
        orders = {"review queue": [split["pool"][i] for i in queue], "random": split["pool"]}
        for count in args.counts:
            for strategy, ordered in orders.items():
                runs[(strategy, count)] = harness.in_child(adapt, project, ordered[:count], args.site_name, split["test"])
        curve(champion, runs, args.out.with_suffix(".png"))
        if args.keep is not None:
            shutil.copytree(project, args.keep, symlinks=True)
    lines = [table(champion, runs), "",
             f"champion v{base['champion_version']}: {base['train_images']} training images, {base['epochs_trained']} epochs, "
             f"pipeline {base['wall_s']} s; site {args.site} ({len(split['test'])} held out, pool {len(split['pool'])})"]  # fmt: skip
    result = {
        "site": str(args.site), "champion": {**champion, "training": base},
        "runs": [{"strategy": s, "count": c, **run} for (s, c), run in runs.items()],
        "plot": str(args.out.with_suffix(".png")), "table": "\n".join(lines),
    }  # fmt: skip
    harness.write(result, args.out)


if __name__ == "__main__":
    main()
