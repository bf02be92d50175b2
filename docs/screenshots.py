"""Retake docs/desk.jpg: the inspector's desk in headless Chromium after a real photo was scanned.

Starts ``crackcls app`` on 127.0.0.1 (a free port) from the project folder with its
MLflow store, uploads one photo, waits for its result card, marks the last region
"Not a crack" into a temporary field folder (the project's field/ and reports/app are
not touched), and saves the whole page as a JPEG. The server is stopped in every case.

Needs Debian's ``chromium`` and ``chromium-driver`` and a registered model: run it
after ``make demo``, from the project folder (``make screenshots``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image

WIDTH = 1400  # px: the page at this width keeps the overlay, its legend and the region table readable
MAX_HEIGHT = 6000
CHROME_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)  # fmt: skip


class Failed(Exception):
    """One line for the user; the script exits 1 with it."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="docs/screenshots.py",
        description="Retake the desk screenshot (docs/desk.jpg): serve the model with `crackcls app` on 127.0.0.1, "
        "scan one real photo in headless Chromium, mark one region 'Not a crack' into a temporary field folder, "
        "and save the page as a JPEG. Run it from the project folder after `make demo`.",
    )
    parser.add_argument("--project", type=Path, default=Path.cwd(), help="the project folder (default: the current folder)")
    parser.add_argument("--model", default="models:/crackcls@champion", help="the model the desk serves (default: %(default)s)")
    parser.add_argument(
        "--store", default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db)",
    )  # fmt: skip
    parser.add_argument(
        "--photo", type=Path, default=None,
        help="the photo to scan (default: the first .jpg in <project>/../shared/data/sdnet2018-photos/Positive)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("docs/desk.jpg"), help="the JPEG to write (default: %(default)s)")
    parser.add_argument("--width", type=int, default=WIDTH, help="browser window width in px (default: %(default)s)")
    parser.add_argument("--quality", type=int, default=88, help="JPEG quality (default: %(default)s)")
    parser.add_argument("--reviewer", default="ana", help="the reviewer name typed on the page (default: %(default)s)")
    parser.add_argument("--no-correction", action="store_true", help="do not mark a region 'Not a crack'")
    parser.add_argument("--timeout", type=float, default=300, help="seconds for the desk to start and for the scan (default: %(default)s)")
    return parser.parse_args(argv)


def default_photo(project: Path) -> Path:
    folder = project.parent / "shared" / "data" / "sdnet2018-photos" / "Positive"
    photos = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not photos:
        raise Failed(f"no photo in {folder}: pass --photo PATH")
    return photos[0]


def find_browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.access("/usr/bin/chromedriver", os.X_OK) else None)
    if chromium is None or driver is None:
        raise Failed("chromium and chromedriver are needed: apt-get install chromium chromium-driver")
    return chromium, driver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def crackcls_command() -> str:
    beside = Path(sys.executable).parent / "crackcls"
    found = str(beside) if beside.is_file() else shutil.which("crackcls")
    if found is None:
        raise Failed("crackcls is not installed here: run make install, then .venv/bin/python docs/screenshots.py")
    return found


def last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def start_desk(command: list[str], project: Path, env: dict[str, str], url: str, log: Path, timeout_s: float) -> subprocess.Popen:
    """Start the desk in its own session (its workers stop with it) and wait until /healthz answers."""
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=project, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if process.poll() is not None:
                raise Failed(f"crackcls app exited with {process.returncode}: {last_line(log)}")
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
                    if response.status == 200:
                        return process
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise Failed(f"the desk did not answer on {url} in {timeout_s:.0f} s: {last_line(log)}")
            time.sleep(0.5)
    except BaseException:
        stop(process)
        raise


def stop(process: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def open_browser(chromium: str, driver_path: str, width: int):  # noqa: ANN201 - a selenium Chrome driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROME_FLAGS, f"--window-size={width},1200"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver_path))


def take(driver, url: str, photo: Path, reviewer: str, correct: bool, timeout_s: float) -> tuple[bytes, str]:  # noqa: ANN001
    """Upload ``photo``, wait for its card (and the correction), and return the full page as PNG and what was done."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout_s, ignored_exceptions=(StaleElementReferenceException,))
    driver.get(url)
    driver.find_element(By.ID, "photos").send_keys(str(photo))
    driver.find_element(By.ID, "scan-button").click()

    def outcome(d):  # noqa: ANN001, ANN202 - the card, or why there is none
        if cards := d.find_elements(By.CSS_SELECTOR, ".photo"):
            return cards[0]
        if d.find_elements(By.CSS_SELECTOR, "#batch[data-status='failed']"):
            return "the desk could not scan it"
        refused = d.find_elements(By.CSS_SELECTOR, "#upload-message.error")
        return f"the upload was refused: {refused[0].text}" if refused and refused[0].text else False

    try:
        card = wait.until(outcome)
    except TimeoutException:
        raise Failed(f"no result card for {photo.name} in {timeout_s:.0f} s (the desk's page: {driver.current_url})") from None
    if isinstance(card, str):
        raise Failed(f"{photo.name}: {card}")
    verdict = card.find_element(By.CSS_SELECTOR, ".verdict").text
    image = card.find_element(By.CSS_SELECTOR, "img.overlay")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
    done = f"{photo.name}: {verdict}"
    regions = card.find_elements(By.CSS_SELECTOR, "button.not-a-crack")
    if correct and regions:
        driver.find_element(By.ID, "reviewer").send_keys(reviewer)
        regions[-1].click()
        message = card.find_element(By.CSS_SELECTOR, ".message")
        try:
            wait.until(lambda d: message.text.startswith(("Saved", "Not saved")))
        except TimeoutException:
            raise Failed("the correction got no answer from the desk") from None
        if not message.text.startswith("Saved"):
            raise Failed(f"the correction was refused: {message.text}")
        done += f", region {len(regions)} marked not a crack"
    elif correct:
        done += ", no region to mark"
    # the whole page in one view: the window grown to the document's height plus the window's own frame
    for _ in range(2):
        page, view = driver.execute_script("return [document.documentElement.scrollHeight, window.innerHeight]")
        window = driver.get_window_size()
        driver.set_window_size(window["width"], min(int(page) + window["height"] - int(view), MAX_HEIGHT))
        time.sleep(0.5)
    return driver.get_screenshot_as_png(), done


def save_jpeg(png: bytes, out: Path, quality: int) -> tuple[int, int]:
    """Write ``out`` atomically: a temporary file beside it, then os.replace."""
    import io

    image = Image.open(io.BytesIO(png)).convert("RGB")
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{out.stem}-", suffix=".jpg", dir=out.parent)
    try:
        with os.fdopen(handle, "wb") as sink:
            image.save(sink, "JPEG", quality=quality, optimize=True, progressive=True)
        os.chmod(temp, 0o644)
        os.replace(temp, out)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return image.size


def run(args: argparse.Namespace) -> str:
    project = args.project.resolve()
    photo = (args.photo or default_photo(project)).resolve()
    if not photo.is_file():
        raise Failed(f"no such photo: {photo}")
    out = args.out if args.out.is_absolute() else Path.cwd() / args.out
    chromium, driver_path = find_browser()
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise Failed("selenium is not installed: make install (it is a dev dependency)") from None
    store = args.store or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_REGISTRY_URI", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    with tempfile.TemporaryDirectory(prefix="crackcls-screenshot-") as scratch:
        scratch_dir = Path(scratch)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [
            crackcls_command(), "app", "--model", args.model, "--host", "127.0.0.1", "--port", str(port),
            "--photos-root", str(scratch_dir), "--field", str(scratch_dir / "field"), "--work", str(scratch_dir / "work"),
        ]  # fmt: skip
        log = scratch_dir / "app.log"
        print(f"starting the desk with {args.model} ({store}) on {url}", file=sys.stderr)
        process = start_desk(command, project, env, url, log, args.timeout)
        try:
            from selenium.common.exceptions import WebDriverException

            try:
                driver = open_browser(chromium, driver_path, args.width)
            except WebDriverException as error:
                raise Failed(f"chromium did not start: {str(error.msg or error).strip().splitlines()[0]}") from None
            try:
                png, done = take(driver, url, photo, args.reviewer, not args.no_correction, args.timeout)
            except WebDriverException as error:
                raise Failed(f"the desk page failed: {str(error.msg or error).strip().splitlines()[0]}") from None
            finally:
                driver.quit()
        finally:
            stop(process)
    width, height = save_jpeg(png, out, args.quality)
    return f"wrote {out} ({width}x{height}): {done}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the server is stopped on SIGTERM too
    try:
        print(run(args))
    except Failed as error:
        print(f"screenshots.py: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("screenshots.py: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
