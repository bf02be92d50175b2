"""The inspector's desk, timed as a user waits: from sending a photo to its result and overlay on the page.

    python bench/desk.py                                   # @champion, a shared 16 MP SDNET2018 photo, 5 times
    python bench/desk.py --model models/model.keras --photo site.jpg --repeat 10

Starts ``crackcls app`` on a free loopback port in this project, waits for it, then per
try uploads the photo, polls until the batch is scanned and fetches the batch page and the
overlay, as the browser does. Prints each try's seconds and the median; the first try
includes nothing the others skip (the model is loaded before the server answers).
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

import harness

REPO_ROOT = harness.REPO_ROOT
PHOTO = harness.SHARED_DATA / "sdnet2018-photos" / "Positive" / "decks_7029.jpg"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_try(url: str, photo: Path) -> float:
    start = time.perf_counter()
    with photo.open("rb") as handle:
        answer = requests.post(f"{url}/batches", files=[("photos", (photo.name, handle, "image/jpeg"))],
                               headers={"Accept": "application/json"}, timeout=120)  # fmt: skip
    answer.raise_for_status()
    batch = answer.json()["id"]
    while (state := requests.get(f"{url}/api/batches/{batch}", timeout=30).json())["status"] not in ("done", "failed"):
        time.sleep(0.05)
    if state["status"] != "done":
        raise SystemExit(f"the scan failed: {state['error']}")
    requests.get(f"{url}/batches/{batch}", timeout=30).raise_for_status()
    requests.get(f"{url}/batches/{batch}/photos/1/overlay.png", timeout=30).raise_for_status()
    return time.perf_counter() - start


def main() -> None:
    parser = harness.parser(__doc__, "desk")
    parser.add_argument("--model", default=None, help="as for crackcls app (default: the registry champion)")
    parser.add_argument("--photo", type=Path, default=PHOTO)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.quick:
        args.repeat = 2
    if not args.photo.is_file():
        harness.skip(f"{args.photo} not found; give --photo")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "crackcls"), "app", "--port", str(port), *(["--model", args.model] if args.model else [])]
    server = subprocess.Popen(command, cwd=REPO_ROOT)
    try:
        for _ in range(600):
            if server.poll() is not None:
                harness.skip(f"crackcls app exited with status {server.returncode} (no champion here? run make demo first)")
            try:
                if requests.get(f"{url}/healthz", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        about = requests.get(f"{url}/api/desk", timeout=10).json()
        from PIL import Image

        with Image.open(args.photo) as im:
            megapixels = im.width * im.height / 1e6
        times = [one_try(url, args.photo) for _ in range(args.repeat)]
        table = (f"{args.photo.name} ({megapixels:.1f} MP) with {about['model']}\n"
                 "seconds from upload to result and overlay on the page: " + ", ".join(f"{t:.2f}" for t in times) + "\n"
                 f"median {statistics.median(times):.2f} s, max {max(times):.2f} s")  # fmt: skip
        harness.write({"photo": str(args.photo), "megapixels": round(megapixels, 1), "model": about["model"],
                       "seconds": [round(t, 3) for t in times], "median_s": round(statistics.median(times), 3),
                       "table": table}, args.out)  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
