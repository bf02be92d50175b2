"""Scanning real inspection photos against their tile truth: the yardstick for whole-photo settings.

    python bench/real_photos.py                                   # @champion of the project here
    python bench/real_photos.py --models models:/crackcls@champion models/other.keras --settings 227:227 256:256 256:128
    python bench/real_photos.py --rules fitted fixed                  # the rule fitted with the model against the plain one

Scans every photo of ``--photos`` (default: the shared SDNET2018 photos, ``Positive/`` and
``Negative/`` with ``truth.json``) with each model and each ``tile:stride`` setting, and
prints tile recall, precision and F1, false crack tiles per photo, the photo verdicts and
the seconds taken, and a ceiling: the best tile F1 any photo rule reaches when it is fitted
on these very photos, so what the model's tiles allow whatever the rule (a yardstick, never
a default). A half stride (``256:128``) also gets its tiles averaged onto the tile grid,
each weighted by the area it shares with the grid's tile, with that grid's AUROC and
ceiling. A tile counts as cracked when its centre lies in a cracked truth box, as ``crackcls evaluate --scan --tile-truth`` counts it; counts are of scan tiles, so an overlapping
stride has more tiles (and more false ones) per photo. Writes ``bench/results/real_photos.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

import harness

PHOTOS = harness.SHARED_DATA / "sdnet2018-photos"
SETTINGS = ("227:227", "256:256", "256:128")  # the training patch size; the truth's 256 px grid; with half overlap


def f1(recall: float, precision: float) -> float:
    return 2 * recall * precision / (recall + precision) if recall + precision else 0.0


def overlap_mean(probabilities: np.ndarray) -> np.ndarray:
    """Half-overlapping tiles' probabilities averaged onto the tile grid, each weighted by the area it shares with the tile."""
    from scipy import ndimage

    weights = np.outer([0.5, 1.0, 0.5], [0.5, 1.0, 0.5])
    shared = ndimage.convolve(probabilities, weights, mode="constant")
    area = ndimage.convolve(np.ones_like(probabilities), weights, mode="constant")
    return (shared / area)[::2, ::2]


def ranking_and_ceiling(grids: list, masks: list, names: list, target: float) -> dict:
    """How well tile scores rank cracked tiles (AUROC), and the ceiling: the rule the fit would choose were these its validation photos."""
    from crackcls.photos import photo_rule

    ceiling = photo_rule.fit(photo_rule.ValidationPhotos(grids, masks, names), target)
    scores, cracked = np.concatenate([g.ravel() for g in grids]), np.concatenate([m.ravel() for m in masks])
    return {"tile_auroc": round(float(roc_auc_score(cracked, scores)), 3), "ceiling_rule": ceiling.rule.as_dict(),
            "ceiling": {k: round(float(v), 3) for k, v in ceiling.metrics.items()}}  # fmt: skip


def with_context(scans: list, truth: dict, target: float) -> dict | None:
    """:func:`ranking_and_ceiling` of a half-stride scan's tiles averaged onto the tile grid (None where a grid does not line up)."""
    from types import SimpleNamespace

    from crackcls.photos.scan import tile_grid
    from crackcls.photos.tile_truth import tile_truth_mask

    grids, masks = [], []
    for s in scans:
        if s.grid.width % s.grid.tile or s.grid.height % s.grid.tile:
            return None  # the last tiles are shifted back: half strides no longer halve the tile grid
        tiles = tile_grid(s.grid.width, s.grid.height, s.grid.tile)
        grids.append(overlap_mean(s.probabilities))
        masks.append(tile_truth_mask(SimpleNamespace(grid=tiles), truth.get(str(Path(s.path).resolve()), [])))
    return ranking_and_ceiling(grids, masks, [s.path for s in scans], target)


def measure(spec: str, photos: Path, setting: str, batch_size: int, rule: str = "fitted") -> dict:
    from crackcls.config import load_config, parse_config
    from crackcls.jobs.predict import load_for, runtime_for
    from crackcls.jobs.scan import scan_paths, settings_from
    from crackcls.photos.tile_truth import read_tile_truth, tile_level_metrics, tile_truth_mask
    from crackcls.trust import companions

    tile, stride = (int(v) for v in setting.split(":"))
    model = load_for(spec, runtime_for(spec, None))
    config = load_config()
    config = parse_config({**config.model_dump(mode="json"), "scan": {**config.scan.model_dump(mode="json"), "rule": rule}})
    settings = settings_from(config, tile, stride, model=model)
    files = sorted(p for label in ("Positive", "Negative") for p in (photos / label).glob("*.jpg"))
    started = time.perf_counter()
    scans, skipped = scan_paths(model, files, settings, batch_size)
    seconds = time.perf_counter() - started
    if skipped.count:
        raise SystemExit(f"{skipped.count} photos could not be read: {skipped.skipped}")
    truth = read_tile_truth(photos / "truth.json", photos)
    tiles = tile_level_metrics(scans, truth, photos)
    surfaces = sorted({Path(s.path).name.split("_")[0] for s in scans})  # decks_7029.jpg: decks
    by_surface = {surface: round(tile_level_metrics([s for s in scans if Path(s.path).name.startswith(surface + "_")],
                                                    truth, photos)["fp_tiles_per_photo"], 1) for surface in surfaces}  # fmt: skip
    verdicts = {Path(s.path).name: {"truth": Path(s.path).parent.name, "verdict": s.verdict, "crack_tiles": s.crack_tiles,
                                    "tiles": s.tiles} for s in scans}  # fmt: skip
    right = sum((v["verdict"] == "crack") == (v["truth"] == "Positive") for v in verdicts.values())
    # the tiles alone, before any photo rule: how well they rank, and how many uncracked ones the patch threshold flags
    patch_threshold = companions.threshold(model, None, config.evaluate.threshold)
    actual = {s.path: tile_truth_mask(s, truth.get(str(Path(s.path).resolve()), [])) for s in scans}
    false_rate = {surface: round(float(np.mean(np.concatenate(
        [s.probabilities[~actual[s.path]] for s in scans if Path(s.path).name.startswith(surface + "_")]) >= patch_threshold)), 3)
        for surface in surfaces}  # fmt: skip
    # the ceiling: the rule the fit would choose were these photos its validation photos (never a default)
    target = config.scan.target_photo_recall or 0.0
    ranked = ranking_and_ceiling(
        [s.probabilities for s in scans], [actual[s.path] for s in scans], [s.path for s in scans], target
    )
    # context across tiles: half-overlapping tiles averaged onto the tile grid, as the truth is, then the same ceiling
    context = with_context(scans, truth, target) if 2 * stride == tile else None
    return {"model": spec, "tile": tile, "stride": stride, "rule": "fitted" if settings.fitted else "fixed",
            "rule_values": settings.rule.as_dict(), "threshold": settings.threshold, **tiles,
            "tile_f1": f1(tiles["tile_recall"], tiles["tile_precision"]), "photos_right": right,
            "fp_tiles_per_photo_by_surface": by_surface, **ranked,
            "patch_threshold": patch_threshold, "false_tile_rate_by_surface": false_rate,
            "photos": len(verdicts), "verdicts": verdicts, "seconds": round(seconds, 2), "overlap_mean": context}  # fmt: skip


def main() -> None:
    parser = harness.parser(__doc__, "real_photos")
    parser.add_argument("--models", nargs="+", default=["models:/crackcls@champion"])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), metavar="TILE:STRIDE")
    parser.add_argument("--rules", nargs="+", default=["fitted"], choices=["fitted", "fixed"],
                        help="the photo rule fitted with the model (where it has one), or params.yaml's fixed rule")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if args.quick:
        args.settings = ["256:256"]
    if not (args.photos / "truth.json").is_file():
        harness.skip(f"{args.photos}: no truth.json (the shared SDNET2018 photos are not here)")
    from crackcls.util.errors import CrackclsError

    try:
        rows = [measure(spec, args.photos, setting, args.batch_size, rule)
                for spec in args.models for setting in args.settings for rule in args.rules]  # fmt: skip
    except CrackclsError as missing:  # no such model here (no champion before make demo), or none to read
        harness.skip(str(missing))
    print("| model | tile:stride | rule | tile recall | tile precision | tile F1 | false crack tiles / photo | photos right | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        v = r["rule_values"]
        margin = "" if v.get("background_margin") is None else f", median + {v['background_margin']:.2f}"
        rule = f"{r['rule']} (t {v['tile_threshold']:.2f}, k {v['min_region_tiles']}, peak {v['peak_threshold']:.2f}{margin})"
        print(f"| {r['model']} | {r['tile']}:{r['stride']} | {rule} | {r['tile_recall']:.3f} | {r['tile_precision']:.3f} | "
              f"{r['tile_f1']:.3f} | {r['fp_tiles_per_photo']:.1f} | {r['photos_right']}/{r['photos']} | {r['seconds']} |")  # fmt: skip
    for r in rows:
        wrong = [name for name, v in r["verdicts"].items() if (v["verdict"] == "crack") != (v["truth"] == "Positive")]
        surfaces = ", ".join(f"{k} {v}" for k, v in r["fp_tiles_per_photo_by_surface"].items())
        rates = ", ".join(f"{k} {v:.3f}" for k, v in r["false_tile_rate_by_surface"].items())
        print(f"{r['model']} {r['tile']}:{r['stride']} {r['rule']}: wrong verdicts: {', '.join(wrong) or 'none'}; "
              f"false crack tiles per photo: {surfaces}; tile AUROC {r['tile_auroc']:.3f}; "
              f"uncracked tiles at or above the patch threshold {r['patch_threshold']:.2f}: {rates}")
        c, v = r["ceiling"], r["ceiling_rule"]
        print(f"  ceiling (a rule fitted on these photos themselves, t {v['tile_threshold']:.2f}, k {v['min_region_tiles']}, "
              f"peak {v['peak_threshold']:.2f}, margin {v['background_margin']}): tile F1 {c['tile_f1']:.3f}, "
              f"{c['fp_tiles_per_photo']:.1f} false crack tiles / photo, photo recall {c['photo_recall']:.2f}")
        if r["overlap_mean"]:
            o = r["overlap_mean"]
            print(f"  averaged onto the {r['tile']} px grid: tile AUROC {o['tile_auroc']:.3f}; ceiling tile F1 "
                  f"{o['ceiling']['tile_f1']:.3f}, {o['ceiling']['fp_tiles_per_photo']:.1f} false crack tiles / photo")
    harness.write({"photos": str(args.photos), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
