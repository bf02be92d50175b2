"""Familiarity candidates on one trained model: per-image AUROCs, folder-level draws, cost and size.

    python bench/familiarity.py                   # trains a Mendeley-only model first (compact_cnn, 96 px, 15 epochs)
    python bench/familiarity.py --project DIR     # a project whose models/model.keras is trained

Every candidate scores the same features from one forward pass of the model:

- ``mahalanobis, block means`` the previous score: a Ledoit-Wolf Gaussian on the blocks' mean activations;
- ``mahalanobis, last block`` the same on the last block only (close to the pooled features);
- ``max softmax`` and ``energy``: from the logit alone (binary: ``-|z|`` and ``-log(1 + e^z)``);
- ``kNN, last block`` and ``kNN, all blocks``: cosine distance to the 10th nearest training image,
  on the L2-normalised features (the OpenOOD kNN detector);
- ``shipped``: :mod:`crackcls.trust.familiarity` as the project uses it (every block, three levels each, max).

In-domain reference: the project's test split. Shifts: SDNET2018 surfaces, painted walls, and
transforms of the test images (blur, zoom, JPEG quality, colour cast, darkening).
Folder level: 200 draws of 20 images per set, and each set whole, tested with :mod:`crackcls.trust.shift`.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

import harness

REPO_ROOT, SHARED = harness.REPO_ROOT, harness.SHARED_DATA
TRANSFORMS = ("blur", "zoom_out", "zoom_in", "jpeg_q8", "colour_cast", "dark")
DRAWS, BATCH = 200, 20
ROUNDS = 4  # timing rounds of 512 test images, without and with familiarity


def transform(kind: str, image: Image.Image) -> Image.Image:
    """A cheap near shift of one in-domain image."""
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(2))
    if kind == "zoom_out":  # the camera twice as far: a 2 x 2 mosaic at half scale
        half = image.resize((image.width // 2, image.height // 2))
        canvas = Image.new("RGB", image.size)
        for i in range(2):
            for j in range(2):
                canvas.paste(half, (i * half.width, j * half.height))
        return canvas
    if kind == "zoom_in":
        w, h = image.size
        return image.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4)).resize(image.size)
    if kind == "jpeg_q8":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=8)
        buffer.seek(0)
        return Image.open(buffer).convert("RGB")
    pixels = np.asarray(image, np.float32)
    if kind == "colour_cast":
        pixels = pixels * np.array([1.25, 1.0, 0.75])
    elif kind == "dark":
        pixels = pixels * 0.5
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def shift_sets(test_files: list[str], work: Path) -> dict[str, list[str]]:
    sets: dict[str, list[str]] = {}
    for surface in ("decks", "walls", "pavements"):
        folder = SHARED / "sdnet2018-sample" / surface
        if folder.is_dir():
            sets[f"SDNET2018 {surface}"] = sorted(str(p) for p in folder.rglob("*.jpg"))
    painted = SHARED / "other-surfaces" / "painted-wall"
    if painted.is_dir():
        sets["painted walls"] = sorted(str(p) for p in painted.rglob("*.jpg"))
    for kind in TRANSFORMS:
        folder = work / kind
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for i, source in enumerate(test_files[:600]):
            target = folder / f"{i}.png"
            if not target.exists():
                with Image.open(source) as image:
                    transform(kind, image.convert("RGB")).save(target)
            files.append(str(target))
        sets[kind] = files
    return sets


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def candidates(train: np.ndarray, val: np.ndarray, layout, reference) -> dict:  # noqa: ANN001
    """name → function(features, probabilities) → score (higher: stranger), each scaled on validation."""
    from sklearn.covariance import LedoitWolf

    width = sum(layout.dims)
    last = slice(width - layout.dims[-1], width)

    def mahalanobis(columns: slice):
        fitted = LedoitWolf().fit(train[:, columns])

        def score(x: np.ndarray, _p: np.ndarray) -> np.ndarray:
            centred = x[:, columns] - fitted.location_
            return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", centred, fitted.precision_, centred), 0))

        return score

    def knn(columns: slice, k: int = 10):
        bank = _unit(train[:, columns].astype(np.float32))

        def score(x: np.ndarray, _p: np.ndarray) -> np.ndarray:
            similarity = _unit(x[:, columns].astype(np.float32)) @ bank.T
            return 1 - np.partition(similarity, len(bank) - k, axis=1)[:, len(bank) - k]

        return score

    def logit(p: np.ndarray) -> np.ndarray:
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return np.log(p / (1 - p))

    return {
        "mahalanobis, block means (previous)": mahalanobis(slice(0, width)),
        "mahalanobis, last block": mahalanobis(last),
        "max softmax (-|logit|)": lambda x, p: -np.abs(logit(p)),
        "energy (-log(1+e^logit))": lambda x, p: -np.logaddexp(0, logit(p)),
        "kNN k=10, last block": knn(last),
        "kNN k=10, all block means": knn(slice(0, width)),
        "shipped: kNN per block and level, max": lambda x, p: reference.score(x),
    }


def measure(project: Path, work: Path) -> dict:
    sys.path.insert(0, str(REPO_ROOT / "src"))
    import os

    from crackcls.data import manifest
    from crackcls.model.inference import load_model_file, predict_files, predict_with_features
    from crackcls.trust import familiarity, shift
    from crackcls.util import paths

    os.chdir(project)
    model = load_model_file(project / paths.MODEL_FILE)
    layout = familiarity.layout_of(model)

    def features(items: list) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
        probs, ok, feats = predict_with_features(model, [it.path for it in items], 64, base=project)
        kept = [it for it, good in zip(items, ok) if good]
        return feats[ok], probs[ok], [it.source for it in kept], np.array([it.label for it in kept])

    def unlabelled(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        probs, ok, feats = predict_with_features(model, files, 64, base=project)
        return feats[ok], probs[ok]

    split = {name: manifest.read(manifest.manifest_path(name, project / paths.SPLIT_DIR)) for name in ("train", "val", "test")}
    files = {name: [str(project / it.path) for it in items] for name, items in split.items()}
    train, _, train_sources, _ = features(split["train"])
    val, val_p, val_sources, val_labels = features(split["val"])
    test, test_p, _, test_labels = features(split["test"])
    started = time.perf_counter()
    reference = familiarity.fit(train, val, layout, train_sources, val_sources, val_labels)  # as training fits it
    fit_s = time.perf_counter() - started
    shifted = {name: unlabelled(paths_) for name, paths_ in shift_sets(files["test"], work).items()}
    rows, draws = [], {}
    rng = np.random.default_rng(0)
    for name, score in candidates(train, val, layout, reference).items():
        scale = np.quantile(score(val, val_p), familiarity.FLAG_QUANTILE)
        test_scores = score(test, test_p) / scale
        row = {"candidate": name, "test_flagged": float(np.mean(test_scores > 1)), "auroc": {}, "flagged": {}}
        for set_name, (x, p) in shifted.items():
            out = score(x, p) / scale
            row["auroc"][set_name] = familiarity.separation(test_scores, out)
            row["flagged"][set_name] = float(np.mean(out > 1))
        rows.append(row)
    references = reference.validation_scores()
    shipped_test = reference.score(test)
    threshold = 0.5
    crack_free = test_labels == 0
    in_domain = {  # a real folder is mostly crack-free: a class mix unlike validation's must not fire
        "test split (in-domain)": (shipped_test, test_p),
        "test split, crack-free only": (shipped_test[crack_free], test_p[crack_free]),
        "test split, cracks only": (shipped_test[~crack_free], test_p[~crack_free]),
    }
    strangers = {n: (reference.score(x), p) for n, (x, p) in shifted.items()}
    for set_name, (scores, probs) in {**in_domain, **strangers}.items():
        hits = 0
        for _ in range(DRAWS):
            pick = rng.choice(len(scores), BATCH, replace=False)
            hits += shift.check_set(scores[pick], references, probs[pick] >= threshold).shifted
        draws[set_name] = hits / DRAWS
    whole_sets = {  # each set at once, as `predict` on its folder tests it
        name: shift.check_set(scores, references, probs >= threshold).line()
        for name, (scores, probs) in {**in_domain, **strangers}.items()
    }

    sample = files["test"][:512]
    predict_files(model, sample[:64], 32)
    predict_with_features(model, sample[:64], 32)
    plain_s = scored_s = 0.0
    for _ in range(ROUNDS):  # interleaved, so that a busy moment of the machine hits both alike
        started = time.perf_counter()
        predict_files(model, sample, 32)
        plain_s += time.perf_counter() - started
        started = time.perf_counter()
        _, _, feats = predict_with_features(model, sample, 32)
        reference.score(feats)
        scored_s += time.perf_counter() - started
    return {
        "layout": {"dims": list(layout.dims), "spread": layout.spread},
        "n": {"train": len(train), "val": len(val), "test": len(test), **{k: len(v[0]) for k, v in shifted.items()}},
        "candidates": rows,
        "folder_draws": draws,
        "whole_sets": whole_sets,
        "bank_mb": round(reference.bank_bytes / 1e6, 2),
        "file_mb": round(familiarity.save(reference, work / "reference.familiarity.npz").stat().st_size / 1e6, 2),
        "fit_s": round(fit_s, 2),
        "predict_img_s": round(ROUNDS * len(sample) / plain_s, 1),
        "predict_with_familiarity_img_s": round(ROUNDS * len(sample) / scored_s, 1),
        "familiarity_cost": round(scored_s / plain_s - 1, 3),
    }


def table(result: dict) -> str:
    sets = list(result["candidates"][0]["auroc"])
    lines = [
        "| candidate | test flagged | " + " | ".join(sets) + " |",
        "|---|---|" + "---|" * len(sets),
    ]
    for row in result["candidates"]:
        lines.append(
            f"| {row['candidate']} | {100 * row['test_flagged']:.1f}% | "
            + " | ".join(f"{row['auroc'][s]:.3f}" for s in sets) + " |"
        )
    lines += ["", "| set (draws of 20) | flagged as shifted |", "|---|---|"]
    lines += [f"| {name} | {100 * share:.1f}% |" for name, share in result["folder_draws"].items()]
    lines += ["", "Each set whole:", *(f"- {name}: {line}" for name, line in result["whole_sets"].items())]
    return "\n".join(lines)


def main() -> None:
    parser = harness.parser(__doc__, "familiarity")
    harness.data_argument(parser)
    parser.add_argument("--project", type=Path, default=None,
                        help="a project whose models/model.keras is trained (default: train a Mendeley-only model on --data first)")  # fmt: skip
    parser.add_argument("--size", type=int, default=96, help="the Mendeley-only model's image size (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=15, help="its epochs (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=None, help="where the transformed images go (default: PROJECT/shifted)")
    args = parser.parse_args()
    if args.quick:
        args.size, args.epochs = 48, 2
    with harness.scratch() as work:
        project = args.project.resolve() if args.project else None
        if project is None:
            data = harness.default_data(args.data)
            project = harness.make_project(work / "mendeley_only", data, args.size, args.epochs, 32)
            harness.in_child(harness.pipeline_by_source, project, harness.sources_overrides(data, None, {}))
        result = harness.in_child(measure, project, (args.work or project / "shifted").resolve())
    result["table"] = table(result) + (
        f"\n\nbank {result['bank_mb']} MB as stored (float16), file {result['file_mb']} MB; fit {result['fit_s']} s; "
        f"predict {result['predict_img_s']} img/s, with familiarity {result['predict_with_familiarity_img_s']} img/s "
        f"({100 * result['familiarity_cost']:+.1f}%)"
    )
    harness.write(result, args.out)


if __name__ == "__main__":
    main()
