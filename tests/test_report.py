"""The inspection report: one self-contained HTML file of every photo, its regions, the batch and the model card."""

from __future__ import annotations

import base64
import io
import json
import re
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crackcls.photos.heatmap import save_png
from crackcls.photos.overlay import readable_overlay
from crackcls.photos.report import THUMBNAIL_SIZE, ReportPhoto, render_report, write_report
from crackcls.photos.scan import PhotoScan, ScanSettings, aggregate, tile_grid

MODEL = "models:/crackcls@champion, crackcls v3"
CREATED = datetime(2026, 12, 3, 10, 12, 5, tzinfo=timezone(timedelta(hours=1)))
CARD = """# crackcls version 3

## Test split (120 images)

| metric | value | 95% interval |
|---|---|---|
| recall | 0.9500 | [0.90, 0.98] |
| f1 | 0.9100 | [0.86, 0.95] |

<script>alert("card")</script> and ![a picture](https://example.org/x.png)
"""
SKIPPED = [("site-7/notes.jpg", "not an image"), ("site-7/empty.jpg", "empty file")]
EVIL = "<script>alert(1).png"  # a valid file name: no slash


class Parsed(HTMLParser):
    """Each photo card's images, region rows and text; every URL attribute; every table's nesting."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[dict] = []
        self.urls: list[str] = []
        self.tags: list[str] = []
        self.card_tables = 0
        self._card_depth = 0
        self._in_card_section = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._table_class: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append(tag)
        self.urls += [value or "" for name, value in attrs if name in ("src", "href", "action", "srcset", "poster")]
        if tag == "article" and "photo" in (attributes.get("class") or ""):
            self.cards.append({"images": [], "regions": [], "text": []})
        if tag == "div" and attributes.get("class") == "card":
            self._in_card_section = True
        if tag == "table":
            self._table_class.append(attributes.get("class"))
            self.card_tables += self._in_card_section
        if tag == "img" and self.cards:
            self.cards[-1]["images"].append(attributes.get("src") or "")
        if tag == "tr" and self._table_class and self._table_class[-1] == "regions":
            self._row = []
        if tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            if self._row:
                self.cards[-1]["regions"].append(self._row)
            self._row = None
        if tag == "table" and self._table_class:
            self._table_class.pop()
        if tag == "div":
            self._in_card_section = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self.cards:
            self.cards[-1]["text"].append(data)


def parsed(html: str) -> Parsed:
    parser = Parsed()
    parser.feed(html)
    parser.close()
    return parser


def photo_scan(
    name: str, width: int, height: int, crack_cells: list[tuple[int, int]], familiarity: float | None = None
) -> PhotoScan:
    grid = tile_grid(width, height, 100)
    probabilities = np.full((grid.rows, grid.cols), 0.05)
    for row, col in crack_cells:
        probabilities[row, col] = 0.9 - 0.05 * row
    familiar = None if familiarity is None else np.full(grid.count, familiarity)
    return aggregate(f"/site-7/{name}", grid, probabilities, ScanSettings(tile=100, threshold=0.6), familiar)


def with_overlay(scan: PhotoScan, folder: Path, picture_width: int = 1024) -> PhotoScan:
    """The overlay as ``crackcls scan --overlay`` draws it, written to ``folder``."""
    height = round(picture_width * scan.grid.height / scan.grid.width)
    yy, xx = np.mgrid[0:height, 0:picture_width]
    picture = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    target = folder / f"{Path(scan.path).stem}_scan.png"
    scan.overlay = str(save_png(readable_overlay(picture, scan, MODEL), target))
    return scan


@pytest.fixture
def batch(tmp_path: Path) -> list[PhotoScan]:
    scans = [
        photo_scan("deck_01.jpg", 800, 600, [(1, 1), (1, 2), (4, 6)]),  # two regions
        photo_scan("wall_02.jpg", 600, 900, [], familiarity=1.7),  # no crack, unlike the training data
        photo_scan(EVIL, 500, 500, [(0, 0)], familiarity=0.4),
    ]
    return [with_overlay(scan, tmp_path) for scan in scans]


def report_of(scans: list[PhotoScan], card: str | None = CARD, **options) -> str:
    photos = [ReportPhoto(scan.row(), Path(scan.overlay) if scan.overlay else None) for scan in scans]
    photos[0].notes.append("region 2 marked not a crack by ana, 2026-12-03 10:12")
    shift = "SHIFT: these 9 tiles of 3 photos are unlike the training data"
    options = {"shift_line": shift, "skipped": SKIPPED, **options}
    return render_report(photos, MODEL, card, CREATED, **options)


def test_every_photo_has_its_name_verdict_and_one_embedded_thumbnail(batch):
    html = report_of(batch)
    cards = parsed(html).cards
    assert len(cards) == 3
    for scan, card in zip(batch, cards, strict=True):
        text = "".join(card["text"])
        assert Path(scan.path).name in text and scan.path in text
        assert ("crack" if scan.verdict == "crack" else "no crack") in text
        assert f"{scan.row()['width']} × {scan.row()['height']} px" in text
        assert f"{scan.crack_tiles} of {scan.tiles} tiles" in text
        (source,) = card["images"]  # exactly one image per photo: its overlay
        prefix = "data:image/jpeg;base64,"
        assert source.startswith(prefix)
        with Image.open(io.BytesIO(base64.b64decode(source[len(prefix) :], validate=True))) as thumbnail:
            assert thumbnail.format == "JPEG"
            with Image.open(scan.overlay) as overlay:
                assert max(overlay.size) > THUMBNAIL_SIZE  # the overlay was larger, so it was downscaled
                assert max(thumbnail.size) == THUMBNAIL_SIZE
                ratio = overlay.width / overlay.height
                assert thumbnail.width / thumbnail.height == pytest.approx(ratio, rel=0.01)
    assert html.count("data:image/jpeg;base64,") == 3
    verdicts = re.findall(r'<span class="verdict (crack|no-crack)">([^<]*)</span>', html)
    assert verdicts.count(("crack", "crack")) == 4 and verdicts.count(("no-crack", "no crack")) == 2  # index and cards


def test_region_coordinates_are_tabled_in_the_overlay_numbering(batch):
    cards = parsed(report_of(batch)).cards
    for scan, card in zip(batch, cards, strict=True):
        expected = [
            [str(n), str(r.left), str(r.top), str(r.right), str(r.bottom), str(r.tiles), f"{r.max_probability:.3f}"]
            for n, r in enumerate(scan.regions, 1)
        ]
        assert card["regions"] == expected
    assert cards[0]["regions"][0][1:5] == ["100", "100", "300", "200"]  # tiles (1, 1)-(1, 2), the most confident
    assert len(cards[1]["regions"]) == 0 and "No crack region." in "".join(cards[1]["text"])


def test_strings_are_escaped_and_nothing_is_loaded_from_outside(batch):
    html = report_of(batch, title="Site 7 <b>north</b> & deck")
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1).png" in html  # the file name, escaped, not dropped
    assert '&lt;script&gt;alert("card")&lt;/script&gt;' in html  # raw HTML in the card stays text
    assert "Site 7 &lt;b&gt;north&lt;/b&gt; &amp; deck" in html and "<b>north</b>" not in html
    tree = parsed(html)
    assert "script" not in tree.tags and "link" not in tree.tags and "iframe" not in tree.tags
    assert all(url.startswith(("data:image/jpeg;base64,", "#")) for url in tree.urls), tree.urls
    assert not re.search(r"""(src|href|srcset)\s*=\s*["']?\s*(https?:|//|javascript:)""", html, re.IGNORECASE)
    assert "url(" not in html and "@import" not in html
    outside = html.replace("![a picture](https://example.org/x.png)", "")  # the card's picture, left as text
    assert "http://" not in outside and "https://" not in outside


def test_the_summary_counts_the_batch_and_lists_the_skipped_files(batch):
    html = report_of(batch)
    summary = html.split('<section class="photos">')[0]
    assert re.search(r"<b>3</b>photos scanned \(\d+ tiles\)", summary)
    assert "<b>2</b>crack" in summary and "<b>1</b>no crack" in summary and "<b>2</b>skipped" in summary
    assert '<p class="notice warn">SHIFT: these 9 tiles of 3 photos are unlike the training data</p>' in summary
    for path, reason in SKIPPED:
        assert f"<td>{path}</td><td>{reason}</td>" in summary
    assert MODEL in html and "2026-12-03 10:12:05 +01:00" in html and 'datetime="2026-12-03T10:12:05+01:00"' in html


def test_warnings_hold_unfamiliar_photos_and_reviewer_notes(batch):
    cards = parsed(report_of(batch)).cards
    deck, wall, evil = ("".join(card["text"]) for card in cards)
    assert "region 2 marked not a crack by ana, 2026-12-03 10:12" in deck
    assert "unfamiliar: median familiarity 1.7 (above 1: unlike the training data)" in wall
    assert "unfamiliar:" not in evil and "unfamiliar:" not in deck
    assert "median 0.4" in evil  # a familiar photo shows its familiarity without a warning


def test_the_model_card_renders_its_tables_or_says_there_is_none(batch):
    tree = parsed(report_of(batch))
    assert tree.card_tables == 1
    html = report_of(batch)
    card = html.split('<div class="card">')[1].split("</div>")[0]
    assert "<h1>crackcls version 3</h1>" in card and "<th>metric</th>" in card and "<td>0.9500</td>" in card
    assert "<img" not in card  # the card's picture would load from outside: it stays text
    missing = report_of(batch, card=None)
    assert '<div class="card">' not in missing and f"No model card was found for {MODEL}." in missing


def test_a_photo_without_an_overlay_says_so_and_the_report_is_written_whole(batch, tmp_path):
    batch[1].overlay = None
    html = report_of(batch)
    cards = parsed(html).cards
    assert [len(card["images"]) for card in cards] == [1, 0, 1]
    assert "no overlay was written for this photo" in "".join(cards[1]["text"])
    target = write_report(tmp_path / "out" / "report.html", html)
    assert target == tmp_path / "out" / "report.html" and target.read_text(encoding="utf-8") == html
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temporary file left beside it


def test_the_report_prints_without_cutting_a_photo_card(batch):
    html = report_of(batch)
    style = html.split("<style>")[1].split("</style>")[0]
    printed = style.split("@media print")[1]
    assert re.search(r"\.photo \{[^}]*break-inside: avoid", style)
    assert re.search(r"\.photo \+ \.photo \{[^}]*break-before: page", printed) and "@page" in style  # a photo a page
    assert html.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in html


def test_a_naive_time_is_taken_as_local_time(batch):
    photos = [ReportPhoto(batch[0].row(), Path(batch[0].overlay))]
    html = render_report(photos, MODEL, None, datetime(2026, 12, 3, 10, 12, 5))
    assert re.search(r'datetime="2026-12-03T10:12:05[+-]\d\d:\d\d"', html)


# ---------------------------------------------------------------- the model card of a model spec
def test_the_workspace_card_belongs_only_to_the_workspace_model(tmp_path, monkeypatch):
    from crackcls.tracking.store import model_card

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.keras").write_bytes(b"a model")
    (tmp_path / "other.keras").write_bytes(b"another model")
    assert model_card("models/model.keras") is None  # no card written yet
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "model_card.md").write_text(CARD, encoding="utf-8")
    assert model_card("models/model.keras") == CARD
    assert model_card(str(tmp_path / "models" / "model.keras")) == CARD
    assert model_card("other.keras") is None and model_card("missing.keras") is None


def test_a_registered_version_card_is_its_description(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from crackcls.tracking import store
    from crackcls.tracking.store import model_card

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    store.configure_uri_only()
    client = MlflowClient()
    client.create_registered_model("cracks")
    (tmp_path / "artifacts").mkdir()
    first = client.create_model_version("cracks", str(tmp_path / "artifacts"), description=CARD)
    second = client.create_model_version("cracks", str(tmp_path / "artifacts"))
    client.set_registered_model_alias("cracks", "champion", first.version)
    assert model_card("models:/cracks@champion") == CARD
    assert model_card(f"models:/cracks/{first.version}") == CARD
    assert model_card(f"models:/cracks/{second.version}") is None  # not evaluated: no card published
    assert model_card("models:/cracks@nobody") is None and model_card("models:/nothing/7") is None
    assert model_card("runs:/0123/model") is None


# ---------------------------------------------------------------- crackcls scan --report
def tiny_model(target: Path) -> Path:
    """An untrained model of the patch model's shape: the report needs answers, not good ones."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x)).save(target)
    return target


def test_scan_command_writes_a_report_of_the_batch(tmp_path, monkeypatch, capsys):
    from crackcls import cli

    monkeypatch.chdir(tmp_path)  # the workspace: its own model and card
    (tmp_path / "models").mkdir()
    tiny_model(tmp_path / "models" / "model.keras")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "model_card.md").write_text(CARD, encoding="utf-8")
    photos = tmp_path / "site-7"
    photos.mkdir()
    rng = np.random.default_rng(3)
    names = ["deck_01.jpg", EVIL]
    Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(photos / names[0], quality=90)
    Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(photos / names[1])
    (photos / "notes.jpg").write_text("not a picture\n")
    out = tmp_path / "site-7-report.html"
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["scan", str(photos), "--model", "models/model.keras", "--tile", "256", "--format", "json",
                  "--report", str(out)])  # fmt: skip
    assert exit_code.value.code == 0
    captured = capsys.readouterr()
    assert f"report: {out}" in captured.err
    rows = json.loads(captured.out)
    assert sorted(Path(row["path"]).name for row in rows) == sorted(names)
    assert all(row["overlay"] is None for row in rows)  # drawn for the report only, in a folder now gone

    html = out.read_text(encoding="utf-8")
    tree = parsed(html)
    assert len(tree.cards) == 2 and [len(card["images"]) for card in tree.cards] == [1, 1]
    assert "deck_01.jpg" in html and "&lt;script&gt;alert(1).png" in html and "<script" not in html
    assert "notes.jpg" in html and "not an image" in html
    assert "models/model.keras, sha256 " in html  # the model as the overlay names it
    assert tree.card_tables == 1 and "<th>metric</th>" in html
    for row, card in zip(rows, tree.cards, strict=True):
        assert len(card["regions"]) == len(row["regions"])
