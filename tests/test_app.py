"""The inspector's desk, as a user meets it: upload, scan, review, correct, report, retrain; and what it refuses.

A tiny pipeline run gives a registered model; ``crackcls app`` serves it on 127.0.0.1
from the project folder. Photos are mosaics of bundled sample patches the model never saw
(and, for the browser, a real SDNET2018 photo from ../shared). The browser test drives
Debian's headless Chromium with Selenium and skips without it.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
from conftest import (
    BIN_DIR,
    PATCH,
    REPO_ROOT,
    SHARED,
    build_mosaic,
    free_port,
    local_server,
    subprocess_env,
    trained_tiny_project,
)
from PIL import Image

pytestmark = pytest.mark.e2e

MODEL = "models:/crackcls@challenger"
REAL_PHOTO = SHARED / "data" / "sdnet2018-photos" / "Positive" / "decks_7029.jpg"
MAX_FILE_MB = 12
MAX_MEGAPIXELS = 20
SAMPLE = REPO_ROOT / "sample" / "mendeley"
SKIP_TRAINED = 40  # the tiny project trains on the first 40 patches of each class


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):
    with trained_tiny_project(tmp_path_factory, "desk") as folder:
        yield folder


@pytest.fixture(scope="module")
def photos(project: Path) -> dict[str, dict]:
    """20 photos of 3 x 3 sample patches in ``inbox/``: 10 with one crack patch (its box noted), 10 without."""
    inbox = project / "inbox"
    inbox.mkdir()
    made = {}
    for i in range(20):
        cells = [(i % 3, (i // 3) % 3)] if i < 10 else []
        name = f"site7_{'crack' if cells else 'clear'}_{i:02d}.jpg"
        Image.fromarray(build_mosaic(SAMPLE, 3, 3, cells, seed=100 + i, skip=SKIP_TRAINED)).save(inbox / name, quality=92)
        box = [(c * PATCH, r * PATCH, (c + 1) * PATCH, (r + 1) * PATCH) for r, c in cells]
        made[name] = {"path": inbox / name, "crack_box": box[0] if box else None}
    return made


def app_command(port: int, *extra: str) -> list[str]:
    return [
        str(BIN_DIR / "crackcls"), "app", "--model", MODEL, "--port", str(port), "--photos-root", ".",
        "--max-file-mb", str(MAX_FILE_MB), "--max-megapixels", str(MAX_MEGAPIXELS), *extra,
    ]  # fmt: skip


def desk_env(project: Path) -> dict[str, str]:
    return {**subprocess_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}


def served_version(desk: str) -> str:
    return requests.get(f"{desk}/api/desk", timeout=10).json()["model"]


@pytest.fixture(scope="module")
def desk(project: Path, photos: dict, tmp_path_factory: pytest.TempPathFactory) -> str:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("desk-log") / "app.log"
    with local_server(app_command(port), project, desk_env(project), f"{url}/healthz", log, timeout_s=180):
        yield url


def scanned(desk: str, answer: requests.Response, timeout_s: float = 180) -> dict:
    """The batch's state once the desk has scanned it."""
    assert answer.status_code == 201, answer.text
    batch_id = answer.json()["id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = requests.get(f"{desk}/api/batches/{batch_id}", timeout=10).json()
        if state["status"] in ("done", "failed"):
            assert state["status"] == "done", state
            return state
        time.sleep(0.3)
    pytest.fail(f"batch {batch_id} not scanned in {timeout_s} s")


def upload(desk: str, files: list[tuple[str, bytes]]) -> requests.Response:
    return requests.post(
        f"{desk}/batches", files=[("photos", (name, data, "image/jpeg")) for name, data in files],
        headers={"Accept": "application/json"}, timeout=120,
    )  # fmt: skip


def manifest_rows(project: Path) -> list[dict]:
    path = project / "field" / "corrections.csv"
    return list(csv.DictReader(path.open(encoding="utf-8"))) if path.is_file() else []


def field_files(project: Path) -> list[Path]:
    return sorted(p for label in ("Positive", "Negative") for p in (project / "field" / label).glob("*.jpg"))


def test_upload_scans_every_photo_and_reports_them(desk: str, project: Path, photos: dict) -> None:
    names = sorted(photos)[:3]
    state = scanned(desk, upload(desk, [(name, photos[name]["path"].read_bytes()) for name in names]))
    assert [row["name"] for row in state["results"]] == names
    assert state["tiles_done"] == state["tiles_total"] == 3 * 9  # 681 px photos: 3 x 3 tiles of 256 px
    for row in state["results"]:
        assert row["verdict"] in ("crack", "no_crack") and row["threshold"] > 0
    page = requests.get(f"{desk}/batches/{state['id']}", timeout=30).text
    assert served_version(desk) in page and all(name in page for name in names)
    overlay = requests.get(f"{desk}/batches/{state['id']}/photos/1/overlay.png", timeout=30)
    assert overlay.headers["content-type"] == "image/png" and Image.open(io.BytesIO(overlay.content)).width > 0

    report = requests.get(f"{desk}/batches/{state['id']}/report", timeout=60)
    assert report.status_code == 200 and all(name in report.text for name in names)
    assert report.text.count("data:image/jpeg;base64,") == len(names)
    assert (project / "reports" / "app" / state["id"] / "report.html").is_file()


def test_a_folder_inside_the_root_opens_and_one_outside_is_refused(desk: str, photos: dict) -> None:
    answer = requests.post(f"{desk}/batches/folder", data={"folder": "inbox"}, headers={"Accept": "application/json"}, timeout=60)
    assert len(scanned(desk, answer)["results"]) == len(photos)
    for folder in ("../", "inbox/../../", "/etc"):
        refused = requests.post(f"{desk}/batches/folder", data={"folder": folder}, timeout=30)
        assert refused.status_code == 400 and "only folders inside" in refused.json()["detail"], folder


def test_bad_uploads_are_refused_with_their_reason_and_leave_nothing(desk: str, project: Path, photos: dict) -> None:
    batches = project / "reports" / "app"
    before = sorted(p.name for p in batches.iterdir())
    good = photos[sorted(photos)[0]]["path"].read_bytes()
    huge = io.BytesIO()
    Image.new("RGB", (5000, 5000)).save(huge, "PNG")  # 25 MP in a small file
    cases = [
        ([("notes.jpg", b"site notes, not a photo")], 415, "not an image"),
        ([("big.jpg", os.urandom(MAX_FILE_MB * 1024 * 1024 + 10))], 413, f"larger than {MAX_FILE_MB} MB"),
        ([("wide.png", huge.getvalue())], 415, f"more than the {MAX_MEGAPIXELS} MP allowed"),
        ([("../../escape.jpg", good)], 400, "refused file name"),
        ([("ok.jpg", good), ("..\\..\\escape.jpg", good)], 400, "refused file name"),
    ]
    for files, status, words in cases:
        answer = upload(desk, files)
        assert answer.status_code == status, (files[0][0], answer.text)
        assert words in answer.json()["detail"]
    assert sorted(p.name for p in batches.iterdir()) == before  # no batch folder, no upload left behind
    assert not list(project.parent.glob("escape.jpg")) and not list(project.glob("escape.jpg"))

    mixed = scanned(desk, upload(desk, [("ok.jpg", good), ("notes.jpg", b"not a photo")]))
    assert [row["name"] for row in mixed["results"]] == ["ok.jpg"]
    page = requests.get(f"{desk}/batches/{mixed['id']}", timeout=30).text
    assert "notes.jpg: not an image" in page


def find_chromedriver() -> str | None:
    return shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.access("/usr/bin/chromedriver", os.X_OK) else None)


def browser():  # noqa: ANN201 - a selenium Chrome driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--window-size=1300,1900"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(find_chromedriver()))


@pytest.mark.skipif(find_chromedriver() is None or not shutil.which("chromium"), reason="chromium and chromium-driver are not installed")
@pytest.mark.skipif(not REAL_PHOTO.is_file(), reason="the shared SDNET2018 photos are not here (../shared/data/sdnet2018-photos)")
def test_in_a_browser_a_real_photo_is_scanned_and_a_false_region_lands_in_the_field_folder(
    desk: str, project: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    rows_before = len(manifest_rows(project))
    driver = browser()
    try:
        wait = WebDriverWait(driver, 180)
        driver.get(desk)
        driver.find_element(By.ID, "photos").send_keys(str(REAL_PHOTO))
        driver.find_element(By.ID, "scan-button").click()
        card = wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, ".photo")))
        assert REAL_PHOTO.name in card.find_element(By.TAG_NAME, "h3").text
        verdict = card.find_element(By.CSS_SELECTOR, ".verdict").text
        assert verdict in ("CRACK", "NO CRACK")
        image = card.find_element(By.CSS_SELECTOR, "img.overlay")
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
        assert driver.execute_script("return arguments[0].naturalWidth", image) > 500
        regions = card.find_elements(By.CSS_SELECTOR, "button.not-a-crack")
        if not regions:
            pytest.fail(f"the served model found no region on {REAL_PHOTO.name} (verdict {verdict}); nothing to mark false")
        driver.find_element(By.ID, "reviewer").send_keys("ana")
        regions[-1].click()
        wait.until(lambda d: card.find_element(By.CSS_SELECTOR, ".message").text.startswith("Saved"))
        assert "not a crack" in card.find_element(By.CSS_SELECTOR, ".notes").text
    finally:
        driver.quit()
    new_rows = manifest_rows(project)[rows_before:]
    assert new_rows and {row["photo"] for row in new_rows} == {REAL_PHOTO.name}
    assert {row["kind"] for row in new_rows} == {"not_a_crack"} and {row["reviewer"] for row in new_rows} == {"ana"}
    assert all(row["label"] == "Negative" and row["model"] == served_version(desk) for row in new_rows)
    for row in new_rows:
        tile = project / "field" / row["file"]
        assert tile.is_file() and tile.parent.name == "Negative"
        left, top, right, bottom = map(int, row["box"].split(","))
        assert Image.open(tile).size == (right - left, bottom - top) == (256, 256)


def correct(desk: str, batch_id: str, number: int, **body: object) -> requests.Response:
    return requests.post(f"{desk}/api/batches/{batch_id}/photos/{number}/corrections", json={"reviewer": "ben", **body}, timeout=60)


def test_twenty_corrections_then_a_retrain_give_a_challenger_measured_on_the_field_source(
    desk: str, project: Path, photos: dict
) -> None:
    from conftest import run_pipeline_in_process

    names = sorted(photos)
    state = scanned(desk, upload(desk, [(name, photos[name]["path"].read_bytes()) for name in names]))
    files_before, rows_before = len(field_files(project)), len(manifest_rows(project))
    for result in state["results"]:
        crack_box = photos[result["name"]]["crack_box"]
        if crack_box is not None:  # the crack patch, marked as missed (or confirmed) crack
            answer = correct(desk, state["id"], result["number"], kind="missed_crack", box=list(crack_box))
        elif result["verdict"] == "no_crack":
            answer = correct(desk, state["id"], result["number"], kind="confirmed_no_crack")
        else:  # every region of a photo without a crack is false
            answer = correct(desk, state["id"], result["number"], kind="not_a_crack", region=1)
        assert answer.status_code == 200, answer.text
        assert answer.json()["written"], result["name"]
    rows = manifest_rows(project)[rows_before:]
    assert len({row["photo"] for row in rows}) == 20 and len(field_files(project)) == files_before + len(rows)
    assert all(row["model"] and row["time"] and row["reviewer"] == "ben" for row in rows)
    positives = {row["photo"] for row in rows if row["label"] == "Positive"}
    assert positives == {name for name in names if photos[name]["crack_box"] is not None}

    # the same correction again writes nothing new: exact duplicates are dropped
    first = next(r for r in state["results"] if photos[r["name"]]["crack_box"] is not None)
    again = correct(desk, state["id"], first["number"], kind="missed_crack", box=list(photos[first["name"]]["crack_box"]))
    assert again.json()["written"] == [] and again.json()["duplicates"] >= 1
    bad = correct(desk, state["id"], 1, kind="missed_crack", box=[0, 0, 99999, 10])
    assert bad.status_code == 400 and "not inside the photo" in bad.json()["detail"]
    assert requests.get(f"{desk}/api/desk", timeout=10).json()["waiting"] == len(manifest_rows(project))

    # what `dvc update data.dvc` does: the pipeline's copy of the field folder, then the retrain
    shutil.rmtree(project / "data" / "field", ignore_errors=True)
    shutil.copytree(project / "field", project / "data" / "field")
    results = run_pipeline_in_process(project)
    by_source = results["evaluate"]["test"].by_source
    assert "field" in by_source and by_source["field"]["n"] >= 1, sorted(by_source)
    assert "| field |" in results["evaluate"]["card"].read_text()
    assert requests.get(f"{desk}/api/desk", timeout=10).json()["waiting"] == 0


def test_any_address_but_loopback_needs_logins(project: Path, tmp_path: Path) -> None:
    refused = subprocess.run(
        app_command(free_port(), "--host", "0.0.0.0"), cwd=project, env=desk_env(project), capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0 and "--auth-db" in refused.stderr

    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    auth_db = f"sqlite:///{tmp_path / 'basic_auth.db'}"
    users = SqlAlchemyStore()
    users.init_db(auth_db)
    users.create_user("ana", "s3cret-Passw0rd")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = app_command(port, "--host", "0.0.0.0", "--auth-db", auth_db)
    with local_server(command, project, desk_env(project), f"{url}/healthz", tmp_path / "app.log", timeout_s=180):
        assert requests.get(url, timeout=30).status_code == 401
        assert requests.get(url, auth=("ana", "wrong"), timeout=30).status_code == 401
        assert requests.post(f"{url}/batches", files={"photos": ("a.jpg", b"x")}, timeout=30).status_code == 401
        page = requests.get(url, auth=("ana", "s3cret-Passw0rd"), timeout=30)
        assert page.status_code == 200 and "signed in as ana" in page.text



def test_the_screenshot_script_explains_itself() -> None:
    shown = subprocess.run(
        [str(BIN_DIR / "python"), str(REPO_ROOT / "docs" / "screenshots.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    assert "docs/desk.jpg" in shown.stdout and "--photo" in shown.stdout and "--model" in shown.stdout


@pytest.mark.skipif(find_chromedriver() is None or not shutil.which("chromium"), reason="chromium and chromium-driver are not installed")
def test_in_a_browser_a_tile_of_the_review_queue_is_corrected_and_filed_under_its_site(desk: str, project: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    fresh = []  # photos no earlier test corrected: their tiles are not in the field folder yet
    for seed in (900, 901):
        buffer = io.BytesIO()
        mosaic = build_mosaic(SAMPLE, 3, 3, [(1, seed % 3)], seed=seed, skip=SKIP_TRAINED)
        Image.fromarray(mosaic).save(buffer, "JPEG", quality=92)
        fresh.append((f"pier4_{seed}.jpg", buffer.getvalue()))
    state = scanned(desk, upload(desk, fresh))
    rows_before = len(manifest_rows(project))
    driver = browser()
    try:
        wait = WebDriverWait(driver, 120)
        driver.get(f"{desk}/batches/{state['id']}")
        driver.find_element(By.ID, "review-link").click()
        first = wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, ".queue .tile")))
        box, number = first.get_attribute("data-box"), int(first.get_attribute("data-number"))
        picture = first.find_element(By.TAG_NAME, "img")
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", picture))
        assert driver.execute_script("return arguments[0].naturalWidth", picture) == 256  # the tile itself, at full size
        assert first.find_elements(By.CSS_SELECTOR, ".reasons li") and "uncertainty" in first.text
        driver.find_element(By.ID, "reviewer").send_keys("cleo")
        site = driver.find_element(By.ID, "site")
        site.clear()
        site.send_keys("deck-7")
        queued = len(driver.find_elements(By.CSS_SELECTOR, ".queue .tile"))
        first.find_element(By.CSS_SELECTOR, "button.tile-not-a-crack").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".queue .tile")) == queued - 1)  # it left the queue
    finally:
        driver.quit()
    (row,) = manifest_rows(project)[rows_before:]  # that tile alone
    assert (row["site"], row["kind"], row["label"], row["reviewer"]) == ("deck-7", "not_a_crack", "Negative", "cleo")
    assert row["box"] == box and row["photo"] == fresh[number - 1][0] and row["file"].startswith("deck-7/Negative/")
    assert (project / "field" / row["file"]).is_file()
    answer = requests.get(f"{desk}/api/batches/{state['id']}/review", params={"n": 500}, timeout=60).json()
    assert [int(v) for v in box.split(",")] not in [t["box"] for t in answer["tiles"] if t["number"] == number]
