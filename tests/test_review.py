"""The review queue: which tiles a reviewer sees first, the file `crackcls scan --review` writes, and the desk's queue page.

The model is a stub built here, no training: a 16 px Keras network whose weights are set so
that a tile's probability follows its brightness, and a tile brighter at the top than at the
bottom reads differently once flipped upside down (a uniform tile reads the same every way).
A second copy carries a familiarity reference, so the unfamiliarity signal is exercised too.
The desk runs in this process on 127.0.0.1 (uvicorn in a thread), with 16 px tiles.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import free_port
from PIL import Image

from crackcls.data.images import SkipReport
from crackcls.photos.review import FLIPS, read_review, review_queue, uncertainty
from crackcls.photos.scan import ScanSettings, aggregate, scan_files
from crackcls.util.errors import CrackclsError

SIZE = 16  # the stub's input and the tile side in photo pixels
SETTINGS = ScanSettings(tile=SIZE)
AT_THRESHOLD, UNSURE, SURE = 0.5, 0.62, 0.95  # uniform brightness of a tile: probability 0.50, 0.77, 0.99
GRADIENT = (0.48, 0.15)  # mean, then half the step from top to bottom: 0.83 upright, 0.12 upside down


def stub_model():  # noqa: ANN201 - a keras.Model
    """probability = sigmoid(6 (top - bottom) + 10 mean - 5), brightness in 0..1; its ``pool`` layer gives the features."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    probe = keras.layers.Conv2D(2, SIZE, use_bias=False, name="probe")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(probe(x))
    head = keras.layers.Dense(1, activation="sigmoid", name="crack")
    model = keras.Model(inputs, head(x))
    half = SIZE // 2 * SIZE * 3
    kernel = np.zeros((SIZE, SIZE, 3, 2), np.float32)
    kernel[: SIZE // 2, :, :, 0], kernel[SIZE // 2 :, :, :, 0] = 1 / half, -1 / half  # top minus bottom
    kernel[:, :, :, 1] = 1 / (2 * half)  # mean
    probe.set_weights([kernel])
    head.set_weights([np.array([[6.0], [10.0]], np.float32), np.array([-5.0], np.float32)])
    return model


def reference_for(model):  # noqa: ANN001, ANN201 - a familiarity.Reference
    """A familiarity reference from uniform tiles of middling brightness: a bright-top tile is unlike them."""
    from crackcls.model.inference import forward_pass
    from crackcls.trust import familiarity

    rng = np.random.default_rng(0)
    tiles = np.stack([tile(v) for v in rng.uniform(0.3, 0.8, 240)]).astype(np.float32)
    features = np.asarray(forward_pass(model, with_features=True)(tiles)[1])
    return familiarity.fit(features[:160], features[160:], familiarity.Layout((2,), spread=False))


def tile(mean: float, step: float = 0.0) -> np.ndarray:
    pixels = np.full((SIZE, SIZE, 3), mean * 255, np.float32)
    pixels[: SIZE // 2] += step * 255
    pixels[SIZE // 2 :] -= step * 255
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def photo(path: Path, rows: list[list[np.ndarray]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)).save(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The stub in memory and saved twice: ``plain.keras`` alone, ``familiar.keras`` with a threshold and a reference."""
    from crackcls.trust import companions

    folder = tmp_path_factory.mktemp("review-models")
    model = stub_model()
    model.save(folder / "plain.keras")
    model.save(folder / "familiar.keras")
    companions.write(folder / "familiar.keras", companions.Companions(threshold=0.5, familiarity=reference_for(model)))
    return {"model": model, "plain": folder / "plain.keras", "familiar": folder / "familiar.keras"}


def scanned(model, files: list[Path]) -> list:  # noqa: ANN001
    return [scan for scan, _ in scan_files(model, files, SETTINGS, 8, SkipReport())]


# ---------------------------------------------------------------- the order
def test_uncertainty_is_one_at_the_threshold_and_zero_at_either_sure_end():
    assert uncertainty(np.array([0.5, 0.0, 1.0, 0.25, 0.75]), 0.5).tolist() == [1.0, 0.0, 0.0, 0.5, 0.5]
    fitted = uncertainty(np.array([0.73, 1.0, 0.0, 0.865]), 0.73)  # an uneven threshold: each side has its own scale
    assert fitted[:3].tolist() == [1.0, 0.0, 0.0] and fitted[3] == pytest.approx(0.5)


def test_a_tile_at_the_threshold_ranks_above_a_sure_one(models, tmp_path):
    scans = scanned(models["model"], [photo(tmp_path / "p.png", [[tile(SURE), tile(AT_THRESHOLD)]])])
    first, second = review_queue(scans, models["model"], 2)
    assert (first.col, second.col) == (1, 0)
    assert first.uncertainty > 0.95 > 0.05 > second.uncertainty and first.priority > second.priority
    assert first.unfamiliarity is None  # no familiarity reference on this model
    assert first.reasons == (f"probability {first.probability:.2f} near the threshold 0.50",)
    assert second.label == "crack" and first.label in ("crack", "no_crack") and second.box == (0, 0, SIZE, SIZE)
    assert second.reasons[0].startswith("no signal stands out")


def test_an_unfamiliar_tile_ranks_above_a_familiar_one_with_the_same_probability(models, tmp_path):
    from crackcls.model.inference import load_model_file

    model = load_model_file(models["familiar"])
    (scan,) = scanned(model, [photo(tmp_path / "p.png", [[tile(UNSURE), tile(UNSURE)]])])
    assert scan.probabilities[0, 0] == scan.probabilities[0, 1]
    scan = aggregate(scan.path, scan.grid, scan.probabilities, scan.settings, np.array([0.05, 3.0]))  # the second unlike any
    first, second = review_queue([scan], model, 2)
    assert (first.col, second.col) == (1, 0)
    assert first.unfamiliarity == 1.0 > 0.5 > second.unfamiliarity and first.uncertainty == second.uncertainty
    assert first.familiarity == 3.0 and first.flip_disagreement == second.flip_disagreement == 0.0
    assert "less familiar than 100% of the validation images" in first.reasons
    assert not any("less familiar" in reason for reason in second.reasons)


def test_a_tile_whose_flips_disagree_ranks_above_a_less_sure_one_whose_flips_agree(models, tmp_path):
    scans = scanned(models["model"], [photo(tmp_path / "p.png", [[tile(UNSURE), tile(*GRADIENT)]])])
    first, second = review_queue(scans, models["model"], 2)
    assert (first.col, second.col) == (1, 0)
    assert first.uncertainty < second.uncertainty  # on the probability alone it would come second
    flips = dict(zip(FLIPS, first.flip_probabilities))
    assert flips["vertical"] < 0.5 < first.probability and flips["horizontal"] == pytest.approx(first.probability, abs=1e-6)
    assert first.flip_disagreement == pytest.approx(first.probability - flips["vertical"]) and first.flip_disagreement > 0.5
    assert second.flip_disagreement == pytest.approx(0.0, abs=1e-6)
    assert any(reason.startswith(f"flips disagree by {first.flip_disagreement:.2f}") for reason in first.reasons)


def test_only_the_candidates_get_their_flips_scored(models, tmp_path):
    scans = scanned(models["model"], [photo(tmp_path / "p.png", [[tile(AT_THRESHOLD), tile(UNSURE), tile(*GRADIENT)]])])
    assert [t.col for t in review_queue(scans, models["model"], 1)] == [2]
    assert [t.col for t in review_queue(scans, models["model"], 1, candidates=2)] == [0]  # the flipping tile is not one


def test_ties_go_by_photo_then_row_and_column_and_the_order_repeats(models, tmp_path):
    rows = [[tile(AT_THRESHOLD), tile(AT_THRESHOLD)], [tile(AT_THRESHOLD), tile(SURE)]]
    files = [photo(tmp_path / "b.png", rows), photo(tmp_path / "a.png", rows)]
    queue = review_queue(scanned(models["model"], files), models["model"], 6)
    assert [(Path(t.path).name, t.row, t.col) for t in queue] == [
        ("a.png", 0, 0), ("a.png", 0, 1), ("a.png", 1, 0), ("b.png", 0, 0), ("b.png", 0, 1), ("b.png", 1, 0),
    ]  # fmt: skip
    assert review_queue(scanned(models["model"], files), models["model"], 6) == queue


def test_a_queue_of_fewer_than_one_tile_is_refused_and_an_unreadable_photo_is_a_counted_skip(models, tmp_path):
    path = photo(tmp_path / "p.png", [[tile(AT_THRESHOLD)]])
    scans = scanned(models["model"], [path])
    with pytest.raises(CrackclsError, match="at least 1 tile"):
        review_queue(scans, models["model"], 0)
    path.write_bytes(b"not a photo any more")
    skips = SkipReport()
    assert review_queue(scans, models["model"], 3, skips=skips) == [] and skips.count == 1


# ---------------------------------------------------------------- corrections of one tile
def test_not_a_crack_takes_a_box_and_keeps_the_region_form():
    from crackcls.photos.corrections import NEGATIVE, marked_cells
    from crackcls.photos.scan import tile_grid

    probabilities = np.array([[0.9, 0.9, 0.1], [0.1, 0.1, 0.1]])
    scan = aggregate("p.png", tile_grid(48, 32, SIZE), probabilities, SETTINGS)
    assert marked_cells(scan, "not_a_crack", region=1) == ([(0, 0), (0, 1)], NEGATIVE, (0, 0, 32, 16))
    assert marked_cells(scan, "not_a_crack", box=(16, 0, 32, 16)) == ([(0, 1)], NEGATIVE, (16, 0, 32, 16))
    cells, label, _ = marked_cells(scan, "not_a_crack", box=(0, 0, 40, 16))  # a quarter of the third tile is enough
    assert cells == [(0, 0), (0, 1), (0, 2)] and label == NEGATIVE
    with pytest.raises(CrackclsError, match="region or a box"):
        marked_cells(scan, "not_a_crack", region=1, box=(0, 0, 16, 16))
    with pytest.raises(CrackclsError, match="not inside the photo"):
        marked_cells(scan, "not_a_crack", box=(0, 0, 99, 16))
    # where tiles overlap (the last one shifted back to the edge), a tile's own box is that tile alone
    shifted = aggregate("q.png", tile_grid(40, 16, SIZE), np.array([[0.1, 0.1, 0.1]]), SETTINGS)
    assert shifted.grid.xs == (0, 16, 24)
    assert marked_cells(shifted, "not_a_crack", box=(24, 0, 40, 16))[0] == [(0, 2)]
    assert marked_cells(shifted, "missed_crack", box=(20, 0, 40, 16))[0] == [(0, 1), (0, 2)]


# ---------------------------------------------------------------- crackcls scan --review
@pytest.fixture(scope="module")
def review_run(models, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`crackcls scan --review 5` with the stub that has a familiarity reference, on two photos and a broken file."""
    from crackcls import cli

    root = tmp_path_factory.mktemp("review-run")
    deck_a = [[tile(SURE), tile(AT_THRESHOLD), tile(*GRADIENT)], [tile(0.05), tile(UNSURE), tile(SURE)]]
    photo(root / "photos" / "deck_a.png", deck_a)
    photo(root / "photos" / "deck_b.png", [[tile(0.3), tile(0.55), tile(0.9)]])
    (root / "photos" / "notes.png").write_text("not a photo")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        err = io.StringIO()
        patch.setattr("sys.stderr", err)
        patch.setattr("sys.stdout", io.StringIO())
        with pytest.raises(SystemExit) as exit_code:
            cli.main(["scan", "photos", "--model", str(models["familiar"]), "--tile", str(SIZE), "--review", "5"])
    return {"root": root, "code": exit_code.value.code, "err": err.getvalue(), "file": root / "reports" / "review.json"}


def test_scan_review_writes_the_tiles_to_review_with_the_model_and_threshold(review_run, models):
    assert review_run["code"] == 0
    assert "5 tiles queued for review in reports/review.json" in review_run["err"]
    document = json.loads(review_run["file"].read_text())
    assert document["model"].startswith(str(models["familiar"])) and "sha256" in document["model"]
    assert document["threshold"] == 0.5 and document["photos"] == 2 and document["tiles_scanned"] == 9
    assert document["candidates"] == 9  # fewer tiles than the candidates: every one had its flips scored
    tiles = document["tiles"]
    assert [t["rank"] for t in tiles] == [1, 2, 3, 4, 5]
    assert [t["priority"] for t in tiles] == sorted((t["priority"] for t in tiles), reverse=True)
    for t in tiles:
        assert Path(t["path"]).is_absolute() and Path(t["path"]).parent == review_run["root"] / "photos"
        left, top, right, bottom = t["box"]
        assert (right - left, bottom - top) == (SIZE, SIZE) and (left, top) == (t["col"] * SIZE, t["row"] * SIZE)
        assert t["label"] == ("crack" if t["probability"] >= 0.5 else "no_crack")
        assert set(t["flip_probabilities"]) == set(FLIPS) and t["reasons"]
        assert 0 <= t["unfamiliarity"] <= 1 and t["familiarity"] is not None
        signals = [t["uncertainty"], t["unfamiliarity"], t["flip_disagreement"]]
        assert t["priority"] == pytest.approx(np.mean(signals))
    sure = [t for t in tiles if t["uncertainty"] < 0.05 and t["flip_disagreement"] < 0.05]
    assert all(t["unfamiliarity"] > 0.5 for t in sure)  # a sure, steady tile is queued only for being unfamiliar
    header, read = read_review(review_run["file"])
    assert header["model"] == document["model"] and [t.as_dict()["priority"] for t in read] == [t["priority"] for t in tiles]


def test_scan_review_refuses_fewer_than_one_tile_and_a_review_file_without_review(models, tmp_path, monkeypatch, capsys):
    from crackcls import cli

    monkeypatch.chdir(tmp_path)
    path = photo(tmp_path / "p.png", [[tile(AT_THRESHOLD)]])
    refused = ((["--review", "0"], "--review must be at least 1 tile, got 0"), (["--review-file", "r.json"], "needs --review N"))
    for extra, words in refused:
        with pytest.raises(SystemExit) as exit_code:
            cli.main(["scan", str(path), "--model", str(models["plain"]), *extra])
        assert exit_code.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "reports").exists() and not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------- the desk
@pytest.fixture(scope="module")
def desk(models, review_run, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The desk with the plain stub and ``--site pier-3``, photos root = the review run's folder, on a free port."""
    import uvicorn

    from crackcls.app.desk import Desk
    from crackcls.app.web import create_app
    from crackcls.config import parse_config

    root = review_run["root"]
    work = tmp_path_factory.mktemp("desk")
    opened = Desk(
        parse_config({"scan": {"tile": SIZE}}), str(models["plain"]), work / "work", work / "field", work / "imported",
        "keras", site="pier-3",
    )  # fmt: skip
    spool_before = tempfile.tempdir
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(opened, root), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the desk did not start"
        time.sleep(0.05)
    yield {"url": url, "desk": opened, "root": root, "field": work / "field"}
    server.should_exit = True
    thread.join(10)
    tempfile.tempdir = spool_before  # create_app spools uploads into its work folder


def done(desk: dict, answer: requests.Response) -> str:
    assert answer.status_code == 201, answer.text
    batch_id = answer.json()["id"]
    deadline = time.monotonic() + 60
    while requests.get(f"{desk['url']}/api/batches/{batch_id}", timeout=10).json()["status"] != "done":
        assert time.monotonic() < deadline, "the batch was not scanned"
        time.sleep(0.1)
    return batch_id


def open_folder(desk: dict, folder: str) -> str:
    json_please = {"Accept": "application/json"}
    answer = requests.post(f"{desk['url']}/batches/folder", data={"folder": folder}, headers=json_please, timeout=30)
    return done(desk, answer)


def review(desk: dict, batch_id: str, n: int = 50) -> requests.Response:
    return requests.get(f"{desk['url']}/api/batches/{batch_id}/review", params={"n": n}, timeout=60)


def correct(desk: dict, batch_id: str, number: int, **body: object) -> requests.Response:
    url = f"{desk['url']}/api/batches/{batch_id}/photos/{number}/corrections"
    return requests.post(url, json={"reviewer": "ana", **body}, timeout=30)


def manifest(desk: dict) -> list[dict]:
    path = desk["field"] / "corrections.csv"
    return list(csv.DictReader(path.open(encoding="utf-8"))) if path.is_file() else []


def test_the_desk_lists_a_batchs_tiles_in_review_order_with_their_pictures(desk):
    batch_id = open_folder(desk, "photos")
    answer = review(desk, batch_id, 4).json()
    tiles = answer["tiles"]
    assert answer["site"] == "pier-3" and len(tiles) == 4 and [t["rank"] for t in tiles] == [1, 2, 3, 4]
    assert [t["priority"] for t in tiles] == sorted((t["priority"] for t in tiles), reverse=True)
    first, second = tiles[:2]  # the upside-down reader, then the tile at the threshold: as review_queue ranks them
    assert (first["name"], first["row"], first["col"]) == ("deck_a.png", 0, 2) and first["flip_disagreement"] > 0.5
    assert (second["name"], second["row"], second["col"]) == ("deck_a.png", 0, 1) and second["uncertainty"] > 0.95
    assert all(t["unfamiliarity"] is None for t in tiles)  # the plain stub has no familiarity reference
    picture = requests.get(desk["url"] + first["crop"], timeout=30)
    assert picture.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(picture.content)).size == (SIZE, SIZE)
    page = requests.get(f"{desk['url']}/batches/{batch_id}/review", params={"n": 4}, timeout=30).text
    assert page.count('class="tile-crack"') == page.count('class="tile-not-a-crack"') == 4
    assert first["reasons"][0] in page and "site: pier-3" in page and first["crop"].replace("&", "&amp;") in page
    unqueued = {"left": 1, "top": 0, "right": 17, "bottom": 16}  # only a queued tile's picture is served
    assert requests.get(f"{desk['url']}/batches/{batch_id}/photos/1/tile.jpg", params=unqueued, timeout=30).status_code == 404


def test_a_tile_correction_lands_under_its_site_and_leaves_the_queue(desk):
    batch_id = open_folder(desk, "photos")
    first, second = review(desk, batch_id, 2).json()["tiles"]
    answer = correct(desk, batch_id, first["number"], kind="not_a_crack", box=first["box"], site="bridge-12")
    assert answer.status_code == 200, answer.text
    (written,) = answer.json()["written"]  # that tile alone
    assert (desk["field"] / "bridge-12" / "Negative" / written).is_file() and answer.json()["site"] == "bridge-12"
    row = manifest(desk)[-1]
    assert (row["site"], row["kind"], row["label"]) == ("bridge-12", "not_a_crack", "Negative")
    assert row["box"] == ",".join(map(str, first["box"]))
    assert row["file"] == f"bridge-12/Negative/{written}" and row["reviewer"] == "ana"
    after = review(desk, batch_id, 2).json()
    assert after["corrected"] == 1 and [(t["number"], t["box"]) for t in after["tiles"]][0] == (second["number"], second["box"])
    assert (first["number"], first["box"]) not in [(t["number"], t["box"]) for t in review(desk, batch_id, 50).json()["tiles"]]

    crack = correct(desk, batch_id, second["number"], kind="missed_crack", box=second["box"])  # the desk's --site
    assert crack.status_code == 200 and len(crack.json()["written"]) == 1
    row = manifest(desk)[-1]
    assert (row["site"], row["label"]) == ("pier-3", "Positive") and row["file"].startswith("pier-3/Positive/")


def test_the_desk_refuses_a_bad_site_a_short_queue_and_a_review_file_outside_its_root(desk, tmp_path):
    batch_id = open_folder(desk, "photos")
    tile_box = review(desk, batch_id, 1).json()["tiles"][0]
    rows = len(manifest(desk))
    bad = correct(desk, batch_id, tile_box["number"], kind="not_a_crack", box=tile_box["box"], site="../etc")
    assert bad.status_code == 400 and "site '../etc' is not a usable name" in bad.json()["detail"]
    assert len(manifest(desk)) == rows
    for n in (0, -3, 501):
        short = review(desk, batch_id, n)
        assert short.status_code == 400 and "between 1 and 500" in short.json()["detail"], n
    outside = tmp_path / "review.json"
    outside.write_text(desk["root"].joinpath("reports", "review.json").read_text())
    elsewhere = json.loads(outside.read_text())  # inside the root, but naming a photo outside it
    elsewhere["tiles"][0]["path"] = str(photo(tmp_path / "elsewhere.png", [[tile(AT_THRESHOLD)]]))
    (desk["root"] / "reports" / "elsewhere.json").write_text(json.dumps(elsewhere))
    for path, status, words in (
        (str(outside), 400, "only files inside"), ("../" * 6 + "etc/passwd", 400, "only files inside"),
        ("reports/elsewhere.json", 400, "only photos inside"),
        ("reports/missing.json", 404, "no file"), ("photos/deck_b.png", 400, "cannot read the review file"),
    ):  # fmt: skip
        answer = requests.post(f"{desk['url']}/batches/review-file", data={"path": path}, timeout=30)
        assert answer.status_code == status and words in answer.json()["detail"], (path, answer.text)


def test_a_bad_site_on_the_command_line_is_refused_before_the_model_loads(models, capsys):
    from crackcls import cli

    with pytest.raises(SystemExit) as exit_code:
        cli.main(["app", "--model", str(models["plain"]), "--site", "deck 7/west"])
    assert exit_code.value.code == 2 and "site 'deck 7/west' is not a usable name" in capsys.readouterr().err


def test_a_review_file_opens_on_the_desk_in_its_own_order(desk, review_run):
    form = {"path": "reports/review.json"}
    opened = requests.post(f"{desk['url']}/batches/review-file", data=form, headers={"Accept": "application/json"}, timeout=30)
    assert opened.json()["url"].endswith("/review")
    batch_id = done(desk, opened)
    file_tiles = json.loads(review_run["file"].read_text())["tiles"]
    answer = review(desk, batch_id).json()
    assert answer["review_file"] == str(review_run["file"].resolve()) and answer["ranked_by"] != desk["desk"].version
    same = ("path", "box", "priority")
    assert [[t[key] for key in same] for t in answer["tiles"]] == [[t[key] for key in same] for t in file_tiles]
    assert answer["tiles"][0]["unfamiliarity"] is not None  # the file's own signals, from the model that ranked it
    page = requests.get(f"{desk['url']}/batches/{batch_id}/review", timeout=30).text
    assert "this desk answers with" in page and "reports/review.json" in page
    first = answer["tiles"][0]
    assert correct(desk, batch_id, first["number"], kind="not_a_crack", box=first["box"]).status_code == 200
    assert [t["box"] for t in review(desk, batch_id).json()["tiles"]] == [t["box"] for t in file_tiles[1:]]
