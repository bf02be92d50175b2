"""Whole photos scanned tile by tile: the grid, the regions, the verdicts, the overlay, the outputs and the memory."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PATCH, REPO_ROOT, build_mosaic, crack_path, subprocess_env
from PIL import Image

from crackcls.util.errors import CrackclsError
from crackcls.data.images import SkipReport, load_rgb, patch_rgb
from crackcls.photos.heatmap import draw_boxes
from crackcls.photos.overlay import heat_picture, readable_overlay
from crackcls.util.prefetch import prefetched
from crackcls.photos.scan import (
    ScanSettings,
    aggregate,
    tile_grid,
    tile_stream,
)

MODEL_SIZE = 32


# ---------------------------------------------------------------- a small patch classifier
def train_patch_model(target: Path) -> Path:
    """A small CNN trained on the bundled sample's patches (never on the shared sample the mosaics use)."""
    import keras

    from crackcls.data.images import load_batch

    arrays, labels = [], []
    for label, name in enumerate(("Negative", "Positive")):
        batch, _ = load_batch(sorted((REPO_ROOT / "sample" / "mendeley" / name).glob("*.jpg")), MODEL_SIZE, SkipReport())
        arrays.append(batch)
        labels += [label] * len(batch)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((MODEL_SIZE, MODEL_SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    for filters in (8, 16, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    model.fit(np.concatenate(arrays).astype(np.float32), np.asarray(labels, np.float32), epochs=15, batch_size=32, verbose=0)
    model.save(target)
    return target


@pytest.fixture(scope="module")
def patch_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_patch_model(tmp_path_factory.mktemp("scan-model") / "patches.keras")


@pytest.fixture(scope="module")
def sample() -> Path:
    from conftest import SHARED_SAMPLE

    if not (SHARED_SAMPLE / "Positive").is_dir():
        pytest.skip("shared real-data sample not available")
    return SHARED_SAMPLE


def save(array: np.ndarray, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


@pytest.fixture(scope="module")
def mosaics(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Four photos with a crack path of 3-6 patches (in Positive/) and four without (in Negative/), 8x6 patches each."""
    root = tmp_path_factory.mktemp("mosaics")
    rng = np.random.default_rng(7)
    truth = {}
    for i in range(4):
        cells = crack_path(rng, 6, 8, 3 + i)
        save(build_mosaic(sample, 6, 8, cells, seed=i), root / "Positive" / f"crack{i}.png")
        truth[f"Positive/crack{i}.png"] = cells
        save(build_mosaic(sample, 6, 8, [], seed=100 + i), root / "Negative" / f"plain{i}.png")
    return {"root": root, "cells": truth}


def cell_box(row: int, col: int) -> list[int]:
    return [col * PATCH, row * PATCH, (col + 1) * PATCH, (row + 1) * PATCH]


# ---------------------------------------------------------------- grid (pure)
@pytest.mark.parametrize(
    ("width", "height", "tile", "stride"),
    [(908, 681, 227, None), (1000, 700, 227, None), (1000, 700, 227, 100), (4032, 3024, 227, None), (300, 120, 227, None)],
)
def test_tile_grid_covers_the_photo_with_edge_tiles_kept_inside(width, height, tile, stride):
    grid = tile_grid(width, height, tile, stride)
    covered = np.zeros((height, width), bool)
    for left, top, right, bottom in grid.boxes():
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        assert right - left == min(tile, width) and bottom - top == min(tile, height)  # full-size tiles, never cut off
        covered[top:bottom, left:right] = True
    assert covered.all()
    step = stride or tile
    assert all(b - a <= step for a, b in zip(grid.xs, grid.xs[1:]))  # the last one shifted back, never a gap


def test_grid_for_sizes_that_are_multiples_and_not_and_a_tiny_photo():
    assert tile_grid(908, 681, 227).xs == (0, 227, 454, 681) and tile_grid(908, 681, 227).ys == (0, 227, 454)
    assert tile_grid(1000, 681, 227).xs == (0, 227, 454, 681, 773)  # 1000 = 4 x 227 + 92: last tile ends at 1000
    assert tile_grid(4032, 3024, 227).count == 18 * 14
    assert tile_grid(4608, 3584).count == 18 * 14  # the default 256 px: an SDNET2018 photo's own grid
    tiny = tile_grid(100, 60)
    assert tiny.count == 1 and tiny.boxes() == [(0, 0, 100, 60)]


def test_stride_larger_than_the_tile_is_refused():
    with pytest.raises(CrackclsError, match="stride"):
        ScanSettings(tile=227, stride=300)


def test_command_line_settings_override_params():
    from crackcls.config import parse_config
    from crackcls.jobs.scan import settings_from

    scan = {"tile": 227, "stride": 150, "min_region_tiles": 2, "peak_threshold": 0.9, "connectivity": 4}
    config = parse_config({"scan": scan, "evaluate": {"threshold": 0.7}})
    assert settings_from(config) == ScanSettings(tile=227, stride=150, threshold=0.7, min_region_tiles=2, peak_threshold=0.9, connectivity=4)
    assert settings_from(config, tile=100).stride is None  # the configured stride does not fit a 100 px tile
    assert settings_from(config, tile=300, stride=120, threshold=0.4).step == 120
    with pytest.raises(CrackclsError, match="stride"):
        settings_from(config, tile=100, stride=300)


def test_the_threshold_stored_with_the_model_applies_unless_one_is_given():
    import keras

    from crackcls.trust import companions
    from crackcls.config import parse_config
    from crackcls.jobs.scan import settings_from

    config = parse_config({"evaluate": {"threshold": 0.7}})
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    assert settings_from(config, model=model).threshold == 0.7  # a model with nothing stored
    companions.attach(model, companions.Companions(threshold=0.31, target_recall=0.99))
    assert settings_from(config, model=model).threshold == 0.31
    assert settings_from(config, threshold=0.6, model=model).threshold == 0.6


def test_the_photo_rule_fitted_with_the_model_applies_unless_a_threshold_or_the_fixed_rule_is_asked_for():
    import keras

    from crackcls.config import parse_config
    from crackcls.jobs.scan import settings_from
    from crackcls.trust import companions

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    rule = {"tile_threshold": 0.62, "min_region_tiles": 3, "peak_threshold": 0.9, "validation": {"photo_recall": 0.96}}
    companions.attach(model, companions.Companions(threshold=0.31, photo_rule=rule))
    fitted = settings_from(parse_config({}), model=model)
    assert (fitted.threshold, fitted.min_region_tiles, fitted.peak_threshold, fitted.fitted) == (0.62, 3, 0.9, True)
    fixed = settings_from(parse_config({"scan": {"rule": "fixed", "min_region_tiles": 2}}), model=model)
    assert (fixed.threshold, fixed.min_region_tiles, fixed.peak_threshold, fixed.fitted) == (0.31, 2, 1.0, False)
    explicit = settings_from(parse_config({}), threshold=0.5, model=model)
    assert (explicit.threshold, explicit.min_region_tiles, explicit.fitted) == (0.5, 1, False)

    # a fitted background margin travels with the rule; the fixed rule takes params.yaml's
    companions.attach(model, companions.Companions(threshold=0.31, photo_rule={**rule, "background_margin": 0.2}))
    assert settings_from(parse_config({}), model=model).rule.background_margin == 0.2
    fixed = settings_from(parse_config({"scan": {"rule": "fixed", "background_margin": 0.1}}), model=model)
    assert fixed.rule.background_margin == 0.1 and not fixed.fitted


def test_a_relative_tile_scales_with_each_photo():
    settings = ScanSettings(tile=256, stride=128, tiles_across=18)
    assert settings.tile_and_stride(4608, 3456) == (256, 128)
    assert settings.tile_and_stride(1800, 1200) == (100, 50)
    assert ScanSettings(tile=256).tile_and_stride(1800, 1200) == (256, None)
    with pytest.raises(CrackclsError, match="tiles_across"):
        ScanSettings(tiles_across=0)


# ---------------------------------------------------------------- aggregation (pure)
def test_connected_crack_tiles_merge_into_boxes_in_photo_pixels():
    grid = tile_grid(5 * 100, 4 * 100, 100)
    probs = np.zeros((4, 5))
    probs[0, 0] = probs[1, 1] = 0.9  # diagonal neighbours
    probs[3, 2] = probs[3, 3] = probs[3, 4] = 0.7  # a horizontal run
    probs[0, 4] = 0.49  # just below the threshold

    eight = aggregate("p", grid, probs, ScanSettings(tile=100, connectivity=8))
    assert [r.box for r in eight.regions] == [(0, 0, 200, 200), (200, 300, 500, 400)]
    assert [r.tiles for r in eight.regions] == [2, 3]
    assert eight.regions[0].max_probability == pytest.approx(0.9)
    four = aggregate("p", grid, probs, ScanSettings(tile=100, connectivity=4))
    assert sorted(r.box for r in four.regions) == [(0, 0, 100, 100), (100, 100, 200, 200), (200, 300, 500, 400)]
    assert eight.crack_tiles == 5 and eight.tiles == 20 and eight.crack_fraction == pytest.approx(0.25)
    assert eight.max_probability == pytest.approx(0.9)


def test_regions_of_shifted_edge_tiles_end_at_the_photo_edge():
    grid = tile_grid(250, 250, 100)  # starts 0, 100, 150
    probs = np.zeros((3, 3))
    probs[2, 2] = 0.8
    (region,) = aggregate("p", grid, probs, ScanSettings(tile=100)).regions
    assert region.box == (150, 150, 250, 250)


def test_a_region_counts_by_its_size_or_its_peak_and_the_score_agrees_with_the_verdict():
    grid = tile_grid(500, 100, 100)
    probs = np.array([[0.2, 0.8, 0.6, 0.1, 0.55]])  # a two-tile region (peak 0.8) and a lone tile (0.55)
    one = aggregate("p", grid, probs, ScanSettings(tile=100, threshold=0.5))
    assert one.verdict == "crack" and one.score == pytest.approx(0.8) and len(one.regions) == 2
    two = aggregate("p", grid, probs, ScanSettings(tile=100, threshold=0.5, min_region_tiles=2))
    assert two.verdict == "crack" and [r.tiles for r in two.regions] == [2] and two.crack_tiles == 2  # the lone tile is noise
    three = aggregate("p", grid, probs, ScanSettings(tile=100, threshold=0.5, min_region_tiles=3))
    assert three.verdict == "no_crack" and three.regions == [] and three.crack_tiles == 0 and three.score < 0.5
    sure = aggregate("p", grid, probs, ScanSettings(tile=100, threshold=0.5, min_region_tiles=3, peak_threshold=0.8))
    assert sure.verdict == "crack" and [r.tiles for r in sure.regions] == [2] and sure.score == pytest.approx(0.5)
    none = aggregate("p", grid, np.array([[0.1, 0.3, 0.49, 0.0, 0.0]]), ScanSettings(tile=100))
    assert none.verdict == "no_crack" and none.regions == [] and none.score == pytest.approx(0.49)


def test_a_background_margin_keeps_the_tiles_that_stand_out_and_reports_their_own_peak():
    grid = tile_grid(500, 200, 100)
    probs = np.array([[0.85, 0.8, 0.97, 0.8, 0.8], [0.8, 0.8, 0.96, 0.8, 0.82]])  # a texture, and a crack through it
    plain = aggregate("p", grid, probs, ScanSettings(tile=100, threshold=0.5))
    assert plain.crack_tiles == 10 and len(plain.regions) == 1
    margined = aggregate("p", grid, probs, ScanSettings(tile=100, threshold=0.5, background_margin=0.1))
    (region,) = margined.regions
    assert margined.crack_tiles == 2 and region.box == (200, 0, 300, 200)
    assert region.max_probability == pytest.approx(0.97)  # the model's probability, not the adjusted score
    assert margined.row()["background_margin"] == 0.1 and margined.verdict == "crack"


def test_regions_join_at_corners_only_with_eight_connectivity():
    grid = tile_grid(300, 300, 100)
    probs = np.array([[0.9, 0, 0.9], [0, 0.9, 0], [0.9, 0, 0]])
    assert len(aggregate("p", grid, probs, ScanSettings(tile=100, connectivity=8)).regions) == 1
    assert len(aggregate("p", grid, probs, ScanSettings(tile=100, connectivity=4)).regions) == 4
    with pytest.raises(CrackclsError):
        ScanSettings(connectivity=6)


def test_overlay_shows_crack_tiles_hot_and_boxes_them():
    grid = tile_grid(400, 200, 100)
    probs = np.zeros((2, 4))
    probs[0, 1] = probs[0, 2] = 0.95
    scan = aggregate("p", grid, probs, ScanSettings(tile=100))
    picture = np.full((100, 200, 3), 128, np.uint8)  # half-size copy of a grey photo
    out, _ = heat_picture(picture, scan)
    out = draw_boxes(out, [(50, 0, 150, 50)])
    assert out.shape == picture.shape
    hot, cold = out[25, 75].astype(int), out[75, 25].astype(int)  # inside tile (0, 1); inside tile (1, 0)
    assert hot[0] > hot[2] + 40 and cold[2] > cold[0] + 40  # red where cracks are, blue elsewhere
    assert (out[0, 60:140] == 255).all()  # the region box (50..150 x 0..50 at half size), drawn in white


def test_the_readable_overlay_has_a_colour_bar_marking_the_threshold_and_numbered_regions():
    grid = tile_grid(800, 400, 100)
    probs = np.zeros((4, 8))
    probs[1, 1] = probs[1, 2] = 0.95
    probs[3, 6] = 0.7
    scan = aggregate("p", grid, probs, ScanSettings(tile=100, threshold=0.6))
    picture = np.full((300, 600, 3), 128, np.uint8)
    out = readable_overlay(picture, scan, "models:/crackcls@champion, crackcls v3")
    assert out.shape[1] == 600 and out.shape[0] > 300
    panel = out[300:].astype(int)
    assert (panel == 255).all(axis=-1).mean() > 0.5  # a white panel below the photo, not over it
    reds = (panel[..., 0] > 200) & (panel[..., 2] < 60)
    blues = (panel[..., 2] > 200) & (panel[..., 0] < 60)
    assert reds.any() and blues.any()  # the colour bar runs from blue (0) to red (1)
    unit = round(600 / 55)
    bar_top, bar_left, bar_right = 300 + unit * 3, unit, round(600 * 0.38)
    marker = bar_left + round(0.6 * (bar_right - bar_left))
    assert (out[bar_top + unit // 2, marker : marker + 2] < 40).all()  # the threshold line across the bar, in black
    assert (out[bar_top + unit // 2, marker + 8] > 40).any()  # and only there
    photo = out[:300]
    box_left, box_top = 75, 75  # region 1: tiles (1, 1)-(1, 2) at 3/4 scale
    tab = photo[box_top - 12 : box_top - 1, box_left : box_left + 12]
    assert 0.5 < (tab < 30).all(axis=-1).mean() < 1.0  # a dark tab on the region's top-left corner, its number in white
    assert (photo[box_top - 12 : box_top - 1, box_left + 100] > 40).any(axis=-1).all()  # no tab elsewhere on the edge
    assert (photo[box_top + 10, box_left : box_left + 2] == 255).all()  # the white box itself


def test_every_legend_line_fits_the_overlay_uncut_with_a_full_fitted_rule(monkeypatch):
    from crackcls.photos import overlay

    cut = []
    real_fit = overlay._fit

    def spying_fit(draw, text, font, room):  # noqa: ANN001, ANN202
        fitted = real_fit(draw, text, font, room)
        cut.append(fitted != text)
        return fitted

    monkeypatch.setattr(overlay, "_fit", spying_fit)
    grid = tile_grid(4608, 3584, 256)
    probs = np.full((14, 18), 0.3)
    probs[3, 2:9] = 0.9
    settings = ScanSettings(tile=256, threshold=0.64, min_region_tiles=3, peak_threshold=0.71, fitted=True, background_margin=0.2)
    scan = aggregate("decks_7029.jpg", grid, probs, settings)
    scan.familiarity = np.full((14, 18), 1.4)  # unfamiliar: the longest familiarity line
    out = readable_overlay(np.full((796, 1024, 3), 128, np.uint8), scan, "models:/crackcls@champion, crackcls v12")
    assert len(cut) == 4 and not any(cut)  # counts, rule, familiarity, model: each whole
    assert out.shape[0] > 796 + round(1024 / 55) * 8  # a panel tall enough for four lines


# ---------------------------------------------------------------- streaming (no model)
def gradient_photo(width: int, height: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx % 256, yy % 256, (xx // 7 + yy // 5) % 256], axis=-1).astype(np.uint8)


def stream(path: Path, settings: ScanSettings, size: int = 32, batch: int = 4, overlay_size=None):  # noqa: ANN001, ANN201
    events = list(tile_stream([path], settings, size, batch, overlay_size))
    photo = events[0]
    tiles = np.concatenate([e.pixels for e in events[1:]])
    owners = [o for e in events[1:] for o in e.owners]
    return photo, tiles, owners


def test_tiles_are_cut_at_full_resolution_from_the_right_places(tmp_path):
    pixels = gradient_photo(500, 300)
    path = save(pixels, tmp_path / "photo.png")
    photo, tiles, owners = stream(path, ScanSettings(tile=227), overlay_size=100)
    assert (photo.grid.width, photo.grid.height) == (500, 300)
    assert owners == [(0, i) for i in range(photo.grid.count)] and photo.grid.count == 6
    for number, (left, top, right, bottom) in enumerate(photo.grid.boxes()):
        expected = np.asarray(patch_rgb(Image.fromarray(pixels[top:bottom, left:right]), 32))
        np.testing.assert_array_equal(tiles[number], expected)
    assert photo.picture.shape == (60, 100, 3)  # the overlay copy: longest side 100, aspect kept


@pytest.mark.parametrize("size", [32, 96, 224])
def test_a_tile_gets_the_pixels_its_patch_gets_as_a_training_file(sample, size):
    """A mosaic tile holding a sample JPEG patch is close to load_rgb of that file (the JPEG draft path)."""
    patch = sorted((sample / "Positive").glob("*.jpg"))[0]
    with Image.open(patch) as im:
        tile = np.asarray(patch_rgb(im.convert("RGB"), size)).astype(int)
    assert np.abs(tile - load_rgb(patch, size).astype(int)).mean() < 0.5


def test_exif_rotated_photo_is_scanned_upright(tmp_path):
    upright = gradient_photo(500, 300)
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # stored turned; EXIF 6 says: turn 90 degrees clockwise to view
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.png"
    Image.fromarray(stored).save(path, exif=exif.tobytes())
    plain = save(upright, tmp_path / "upright.png")
    rotated_photo, rotated_tiles, _ = stream(path, ScanSettings(tile=227))
    plain_photo, plain_tiles, _ = stream(plain, ScanSettings(tile=227))
    assert (rotated_photo.grid.width, rotated_photo.grid.height) == (500, 300)
    np.testing.assert_array_equal(rotated_tiles, plain_tiles)


def test_tiny_photo_is_one_tile(tmp_path):
    path = save(gradient_photo(120, 90), tmp_path / "tiny.png")
    photo, tiles, _ = stream(path, ScanSettings(tile=227))
    assert photo.grid.count == 1 and tiles.shape == (1, 32, 32, 3)


def test_unreadable_files_become_skips_and_batches_span_photos(tmp_path):
    good = save(gradient_photo(300, 300), tmp_path / "a.png")  # 2 x 2 tiles of 227
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"not an image at all")
    empty = tmp_path / "c.jpg"
    empty.touch()
    events = list(tile_stream([good, bad, empty, good], ScanSettings(), 32, 3))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["_Photo", "_Batch", "_Skip", "_Skip", "_Photo", "_Batch", "_Batch"]
    assert events[4 + 1].owners == [(0, 3), (3, 0), (3, 1)]  # one batch holds tiles of two photos
    assert [(e.path.name, e.reason) for e in events if kinds[events.index(e)] == "_Skip"] == [
        ("b.jpg", "not an image"), ("c.jpg", "empty file")]  # fmt: skip


def test_prefetch_passes_items_in_order_and_reraises_errors():
    assert list(prefetched(iter(range(10)), depth=2)) == list(range(10))

    def broken():
        yield 1
        raise ValueError("decoder broke")

    with pytest.raises(ValueError, match="decoder broke"):
        list(prefetched(broken()))


# ---------------------------------------------------------------- with a model
def scan_run(model: Path, inputs, **kwargs):  # noqa: ANN001, ANN201
    from crackcls.jobs import scan

    return scan.run([str(p) for p in inputs], str(model), **kwargs)


def test_mosaic_verdicts_and_regions_cover_the_crack_path(patch_model, mosaics, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml: the defaults (threshold 0.5), at the mosaics' patch size
    result = scan_run(patch_model, [mosaics["root"]], tile=PATCH)
    by_name = {Path(s.path).name: s for s in result.scans}
    assert len(by_name) == 8 and result.skipped.count == 0
    for scan in by_name.values():
        assert scan.tiles == 48 and (scan.grid.width, scan.grid.height) == (8 * PATCH, 6 * PATCH)
    # a CNN trained in seconds, whose weights differ a little from one CPU to another: one verdict may miss
    wrong = [(name, scan.row()) for name, scan in by_name.items() if scan.verdict != ("crack" if name.startswith("crack") else "no_crack")]
    assert len(wrong) <= 1, wrong
    hits = misses = false = 0
    for key, cells in mosaics["cells"].items():
        scan = by_name[Path(key).name]
        path_tiles = set(map(tuple, cells))
        found = {(int(r), int(c)) for r, c in zip(*np.nonzero(scan.crack_mask))}
        hits, misses, false = hits + len(found & path_tiles), misses + len(path_tiles - found), false + len(found - path_tiles)
        for row, col in found & path_tiles:  # every found crack patch lies inside a region box, in photo pixels
            left, top, right, bottom = cell_box(row, col)
            assert any(r.left <= left and r.top <= top and r.right >= right and r.bottom >= bottom for r in scan.regions)
        assert sum(r.tiles for r in scan.regions) == scan.crack_tiles
    assert hits >= 0.75 * (hits + misses)  # most crack patches found
    assert false + sum(by_name[f"plain{i}.png"].crack_tiles for i in range(4)) <= 8  # at most one false tile a photo


def test_scan_command_writes_rows_tiles_and_overlays(patch_model, sample, tmp_path, monkeypatch, capsys):
    from crackcls import cli

    monkeypatch.chdir(tmp_path)
    cells = [(1, 1), (1, 2), (2, 2)]
    photo = build_mosaic(sample, 4, 5, cells, seed=3)
    save(photo[: 4 * PATCH - 50, : 5 * PATCH - 30], tmp_path / "in" / "odd.jpg", quality=95)  # not a tile multiple
    save(photo[:100, :150], tmp_path / "in" / "tiny.png")
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["scan", str(tmp_path / "in"), "--model", str(patch_model), "--format", "json",
                  "--tiles", str(tmp_path / "tiles.csv"), "--overlay", str(tmp_path / "overlays")])  # fmt: skip
    assert exit_code.value.code == 0
    out = capsys.readouterr()
    rows = {Path(r["path"]).name: r for r in json.loads(out.out)}
    assert set(rows) == {"odd.jpg", "tiny.png"}
    assert "skipped 1 unreadable files" in out.err and "broken.jpg" in out.err
    assert rows["odd.jpg"]["tiles"] == 20 and (rows["odd.jpg"]["width"], rows["odd.jpg"]["height"]) == (5 * PATCH - 30, 4 * PATCH - 50)
    assert rows["odd.jpg"]["verdict"] == "crack" and rows["tiny.png"]["tiles"] == 1
    for region in rows["odd.jpg"]["regions"]:
        assert 0 <= region["left"] < region["right"] <= 5 * PATCH - 30 and 0 <= region["top"] < region["bottom"] <= 4 * PATCH - 50
    tiles = (tmp_path / "tiles.csv").read_text().splitlines()
    assert tiles[0] == "path,row,col,left,top,right,bottom,crack_probability,crack" and len(tiles) == 1 + 20 + 1
    overlay = Image.open(rows["odd.jpg"]["overlay"])
    photo_height = round(1024 * (4 * PATCH - 50) / (5 * PATCH - 30))
    assert overlay.format == "PNG" and overlay.width == 1024 and overlay.height > photo_height  # the photo, then its legend
    assert Path(rows["odd.jpg"]["overlay"]).name == "odd_scan.png"


def test_scan_table_and_csv_outputs(patch_model, mosaics, tmp_path, monkeypatch):
    from crackcls.jobs import scan

    monkeypatch.chdir(tmp_path)
    result = scan_run(patch_model, [mosaics["root"] / "Positive" / "crack0.png"])
    table = scan.render(result, "table")
    assert table.splitlines()[0].split()[:3] == ["path", "verdict", "crack_tiles"] and "crack0.png" in table
    scan.write(result, output=tmp_path / "rows.csv")
    (row,) = list(csv.DictReader((tmp_path / "rows.csv").open()))
    assert list(row)[:4] == ["path", "verdict", "crack_tiles", "tiles"] and row["verdict"] == "crack"
    assert [r["tiles"] for r in json.loads(row["regions"])] == [r.tiles for r in result.scans[0].regions]


def test_predict_flags_whole_photos_and_points_to_scan(patch_model, mosaics, tmp_path, monkeypatch):
    from crackcls.jobs import predict

    monkeypatch.chdir(tmp_path)
    patch = REPO_ROOT / "sample" / "mendeley" / "Positive" / sorted(p.name for p in (REPO_ROOT / "sample" / "mendeley" / "Positive").glob("*.jpg"))[0]
    result = predict.run([str(mosaics["root"] / "Positive" / "crack0.png"), str(patch)], str(patch_model))
    warnings = {Path(p.path).name: p.warning for p in result.predictions}
    assert warnings[patch.name] is None
    assert "crackcls scan" in warnings["crack0.png"] and f"{8 * PATCH}x{6 * PATCH}" in warnings["crack0.png"]
    assert "warning" in predict.render(result, "csv").splitlines()[0]
    assert "1 whole photos" in predict.summary(result) and "crackcls scan" in predict.summary(result)


def test_evaluate_scan_gives_photo_and_tile_metrics_in_mlflow(patch_model, mosaics, tiny_project, capsys):
    import mlflow

    from crackcls import cli
    from crackcls.tracking import store

    from conftest import TINY_PARAMS, deep_merge, write_params

    write_params(tiny_project, deep_merge(TINY_PARAMS, {"scan": {"tile": PATCH}}))  # the mosaics' own patch grid
    truth = {name: [cell_box(r, c) for r, c in cells] for name, cells in mosaics["cells"].items()}
    (tiny_project / "truth.json").write_text(json.dumps(truth))
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["evaluate", "--scan", "--data", str(mosaics["root"]), "--model", str(patch_model),
                  "--tile-truth", "truth.json", "--out", "scan-eval"])  # fmt: skip
    assert exit_code.value.code == 0
    metrics = json.loads((tiny_project / "scan-eval" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 7 / 8 and metrics["n"] == 8 and metrics["scan_tile"] == PATCH  # as in the scan test above
    tiles = json.loads((tiny_project / "scan-eval" / "tile_metrics.json").read_text())
    assert tiles["tile_photos"] == 8 and tiles["tile_tp"] + tiles["tile_fn"] == sum(map(len, mosaics["cells"].values()))
    assert tiles["tile_recall"] >= 0.75 and tiles["fp_tiles_per_photo"] <= 1
    assert "tile_recall" in capsys.readouterr().out
    store.configure_uri_only()
    runs = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    logged = runs[0].data
    assert logged.metrics["scan_accuracy"] == pytest.approx(metrics["accuracy"]) and logged.metrics["scan_tile_recall"] == pytest.approx(tiles["tile_recall"])
    assert logged.params["scan_tile"] == str(PATCH) and logged.params["tile_truth"] == "truth.json"


def test_evaluate_tile_truth_without_scan_is_refused(tiny_project):
    from crackcls import cli

    with pytest.raises(SystemExit) as exit_code:
        cli.main(["evaluate", "--tile-truth", "truth.json"])
    assert exit_code.value.code == 2


# Peak RSS from VmHWM: ru_maxrss would start at the forking parent's size on Linux.
MEMORY_SCRIPT = """
import re, sys
from pathlib import Path
from crackcls.tracking.registry import load_model
from crackcls.data.images import SkipReport
from crackcls.photos.scan import ScanSettings, scan_files
def peak_mb():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) // 1024
model, _ = load_model(sys.argv[1])
before = peak_mb()
(scan, _), = scan_files(model, [Path(sys.argv[2])], ScanSettings(tile=227), 64, SkipReport(), overlay_size=1024)
print(scan.tiles, before, peak_mb())
"""


def peak_rss_mb(model: Path, photo: Path) -> tuple[int, int, int]:
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(model), str(photo)], capture_output=True, text=True,
                          env=subprocess_env(), timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    tiles, before, after = map(int, done.stdout.split()[-3:])
    return tiles, before, after


def test_a_100_megapixel_photo_scans_in_bounded_memory(patch_model, sample, tmp_path):
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak memory is read from /proc (Linux)")
    patch_grid = build_mosaic(sample, 4, 4, [(1, 1)], seed=5)
    big = np.tile(patch_grid, (11, 13, 1))[:8660, :11547]  # 100 MP
    small = big[:3024, :4032]  # 12 MP
    save(big, tmp_path / "100mp.jpg", quality=85)
    save(small, tmp_path / "12mp.jpg", quality=85)
    del big, small, patch_grid
    tiles_big, base_big, peak_big = peak_rss_mb(patch_model, tmp_path / "100mp.jpg")
    tiles_small, base_small, peak_small = peak_rss_mb(patch_model, tmp_path / "12mp.jpg")
    assert tiles_big == 51 * 39 and tiles_small == 18 * 14
    # The decoded photo (3 bytes a pixel: 300 MB at 100 MP) is held once; tiles and batches are not.
    assert peak_big - base_big <= 600, (peak_big, base_big)
    assert peak_big - peak_small <= 450, (peak_big, peak_small)
    assert peak_big <= 1500


# ---------------------------------------------------------------- real photos (the shared SDNET2018 photos)
REAL_PHOTOS = REPO_ROOT.parent / "shared" / "data" / "sdnet2018-photos"
REAL_TILE = 256


@pytest.fixture(scope="module")
def real_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Crops of real SDNET2018 photos, 6 x 6 tiles of 256 px, with their tile truth shifted to the crops."""
    if not (REAL_PHOTOS / "truth.json").is_file():
        pytest.skip("the shared SDNET2018 photos are not here (../shared/data/sdnet2018-photos)")
    root = tmp_path_factory.mktemp("real-photos")
    truth = json.loads((REAL_PHOTOS / "truth.json").read_text())
    crops = {"Positive/decks_7029.jpg": (512, 1024), "Positive/walls_7124.jpg": (0, 0), "Negative/pavements_024.jpg": (1024, 1024)}
    shifted = {}
    for name, (left, top) in crops.items():
        size = 6 * REAL_TILE
        with Image.open(REAL_PHOTOS / name) as im:
            save(np.asarray(im.convert("RGB").crop((left, top, left + size, top + size))), root / name, quality=92)
        shifted[name] = [[x0 - left, y0 - top, x1 - left, y1 - top] for x0, y0, x1, y1 in truth.get(name, [])
                         if left <= x0 < left + size and top <= y0 < top + size]  # fmt: skip
    (root / "truth.json").write_text(json.dumps(shifted))
    return root


def fitted_patch_model(patch_model: Path, target: Path) -> tuple[Path, dict]:
    """The patch model with a photo rule fitted on its probabilities of the bundled SDNET2018 tiles (parents from names)."""
    import shutil

    from crackcls.model.inference import load_model_file, predict_files
    from crackcls.photos import photo_rule
    from crackcls.trust import companions

    manifest = [line.split("\t") for line in (REPO_ROOT / "sample/sdnet2018/MANIFEST.tsv").read_text().splitlines()[1:]]
    files = [REPO_ROOT / "sample/sdnet2018" / row[0] for row in manifest]
    probabilities, ok = predict_files(load_model_file(patch_model), files, 64, base=REPO_ROOT)
    labels = np.array([row[5].strip() == "Positive" for row in manifest], int)
    photos = photo_rule.validation_photos(probabilities[ok], labels[ok], [r[2] for r in manifest], [r[3] for r in manifest])
    fitted = photo_rule.fit(photos, 0.95)
    model_file = target / "fitted.keras"
    shutil.copy(patch_model, model_file)
    rule = {**fitted.rule.as_dict(), "validation": fitted.metrics}
    companions.write(model_file, companions.Companions(photo_rule=rule))
    return model_file, rule


def test_the_fitted_rule_stored_with_a_model_is_what_scans_real_photos(patch_model, real_photos, tiny_project, capsys):
    from crackcls import cli
    from crackcls.photos import photo_rule
    from crackcls.photos.photo_rule import PhotoRule

    model_file, stored = fitted_patch_model(patch_model, tiny_project)
    rule = PhotoRule.from_dict(stored)
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["scan", str(real_photos), "--model", str(model_file), "--tile", str(REAL_TILE), "--format", "json",
                  "--tiles", "tiles.csv", "--overlay", "overlays"])  # fmt: skip
    assert exit_code.value.code == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3
    tiles = list(csv.DictReader((tiny_project / "tiles.csv").open()))
    for row in rows:
        assert (row["threshold"], row["min_region_tiles"], row["peak_threshold"]) == pytest.approx(
            (rule.tile_threshold, rule.min_region_tiles, rule.peak_threshold))
        mine = [t for t in tiles if t["path"] == row["path"]]
        grid = np.zeros((6, 6))
        for t in mine:
            grid[int(t["row"]), int(t["col"])] = float(t["crack_probability"])
        mask = photo_rule.crack_mask(grid, rule)
        assert row["crack_tiles"] == int(mask.sum()) == sum(t["crack"] == "True" for t in mine)
        assert row["verdict"] == ("crack" if mask.any() else "no_crack")
        assert Image.open(row["overlay"]).height > 1024 * 1  # the 1024 px photo and its legend below
    plain = cli_rows(["scan", str(real_photos), "--model", str(model_file), "--tile", str(REAL_TILE), "--threshold",
                      str(rule.tile_threshold), "--format", "json"], capsys)  # fmt: skip
    assert all(row["min_region_tiles"] == 1 for row in plain)  # an explicit threshold is the fixed rule
    assert sum(r["crack_tiles"] for r in plain) >= sum(r["crack_tiles"] for r in rows)

    with pytest.raises(SystemExit) as exit_code:
        cli.main(["evaluate", "--scan", "--data", str(real_photos), "--model", str(model_file), "--tile-truth",
                  str(real_photos / "truth.json"), "--out", "real-eval"])  # fmt: skip
    assert exit_code.value.code == 0
    import mlflow

    from crackcls.tracking import store

    store.configure_uri_only()
    logged = mlflow.search_runs(experiment_names=["tests"], output_format="list")[0].data
    assert logged.params["scan_rule"] == "fitted" and float(logged.params["scan_tile_threshold"]) == pytest.approx(rule.tile_threshold)
    assert "scan_tile_recall" in logged.metrics and "scan_fp_tiles_per_photo" in logged.metrics


def cli_rows(args: list[str], capsys) -> list[dict]:  # noqa: ANN001
    from crackcls import cli

    with pytest.raises(SystemExit) as exit_code:
        cli.main(args)
    assert exit_code.value.code == 0
    return json.loads(capsys.readouterr().out)
