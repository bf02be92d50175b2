"""The inspector's desk as a web page (FastAPI and Jinja2): upload or open photos, watch them scan, review, correct, report.

Safe by default: it listens on 127.0.0.1, and any other address needs logins, checked
against the team server's basic-auth users (``make server``'s ``--auth-db``). Uploads are
bounded in bytes, files and pixels, and anything that is not an image is refused with its
reason. A file name with a path in it, or a folder or review file outside ``--photos-root``
(or one naming photos outside it), is refused.
The page writes only into its work folder and the field folder.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from PIL import Image
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.middleware.base import BaseHTTPMiddleware

from crackcls.app.desk import DONE, MAX_REVIEW, Desk
from crackcls.data.images import EMPTY, MAX_PIXELS, NOT_IMAGE, UNSUPPORTED, probe
from crackcls.jobs.predict import expand_inputs
from crackcls.jobs.scan import regions_text
from crackcls.photos.review import FLIPS, decimals_for, read_review
from crackcls.util.errors import CrackclsError

HERE = Path(__file__).parent
RETRAIN_COMMAND = "dvc update data.dvc && dvc repro"
CHUNK = 1 << 20
_NAME_OK = re.compile(r"^[^/\\\x00]+$")


@dataclass(frozen=True)
class Limits:
    """What one upload may hold: bytes per file, files per batch, pixels per photo."""

    max_file_mb: float = 64.0
    max_files: int = 500
    max_pixels: int = MAX_PIXELS

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)

    @property
    def max_request_bytes(self) -> int:
        return self.max_file_bytes * self.max_files + CHUNK  # room for the form's own bytes


class Logins:
    """HTTP basic auth against MLflow's basic-auth user store (the team server's users)."""

    def __init__(self, auth_db: str) -> None:
        from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

        self.store = SqlAlchemyStore()
        self.store.init_db(auth_db)

    def user(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            username, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return username if username and self.store.authenticate_user(username, password) else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def safe_name(name: str | None) -> str:
    """An upload's file name, refused when it holds a path, a parent step or a control character."""
    name = (name or "").strip()
    if not name or not _NAME_OK.match(name) or name in (".", "..") or name.startswith(".") or any(ord(c) < 32 for c in name):
        raise HTTPException(400, f"refused file name {name!r}: a photo's name, with no folder or path in it")
    return name


def resolved_inside(root: Path, name: str, what: str = "folder") -> Path:
    """``name`` (relative to ``root``, or absolute) once resolved, refused unless it lies inside ``root``."""
    target = (root / name).resolve()
    if not target.is_relative_to(root.resolve()):
        raise HTTPException(400, f"refused {what} {name!r}: only {what}s inside {root} can be opened")
    return target


def inside(root: Path, folder: str) -> Path:
    """``folder`` (relative to ``root``, or absolute) once resolved, refused unless it is a folder inside ``root``."""
    target = resolved_inside(root, folder)
    if not target.is_dir():
        raise HTTPException(404, f"no folder {folder!r} inside {root}")
    return target


def file_inside(root: Path, name: str) -> Path:
    """As :func:`inside`, for a file."""
    target = resolved_inside(root, name, "file")
    if not target.is_file():
        raise HTTPException(404, f"no file {name!r} inside {root}")
    return target


def checked_image(path: Path, limits: Limits) -> str | None:
    """Why a stored upload cannot be scanned, in words (None if it can): judged from its header."""
    reason = probe(path)  # format, size and pixel bounds, as every stage judges them
    if reason is not None:
        return f"{reason}: not a photo this app can scan" if reason in (NOT_IMAGE, UNSUPPORTED, EMPTY) else reason
    with Image.open(path) as im:
        width, height = im.size
    if width * height > limits.max_pixels:
        return f"too large: {width}x{height} is {width * height / 1e6:.0f} MP, more than the {limits.max_pixels / 1e6:.0f} MP allowed"
    return None


class CorrectionIn(BaseModel):
    kind: str
    reviewer: str = ""
    region: int | None = None
    box: tuple[int, int, int, int] | None = None
    site: str | None = None  # None: the desk's --site


class _Guard(BaseHTTPMiddleware):
    """Logins (when on) and the request-size cap, before any route reads the body."""

    def __init__(self, app, logins: Logins | None, limits: Limits) -> None:  # noqa: ANN001
        super().__init__(app)
        self.logins, self.limits = logins, limits

    async def dispatch(self, request: Request, call_next):  # noqa: ANN201
        request.state.user = None
        if self.logins is not None and request.url.path != "/healthz":  # a liveness probe says nothing else
            user = self.logins.user(request)
            if user is None:
                return Response("login required", 401, {"WWW-Authenticate": 'Basic realm="crackcls"'})
            request.state.user = user
        if request.method == "POST" and request.url.path == "/batches":
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"detail": "an upload must say its length (Content-Length)"}, 411)
            if int(length) > self.limits.max_request_bytes:
                return JSONResponse({"detail": f"upload too large: more than {self.limits.max_request_bytes >> 20} MB"}, 413)
        return await call_next(request)


def create_app(desk: Desk, photos_root: Path, limits: Limits = Limits(), logins: Logins | None = None) -> FastAPI:
    """The FastAPI app around ``desk``; ``photos_root`` bounds the folders a user may open."""
    app = FastAPI(title="crackcls inspector's desk", docs_url=None, redoc_url=None)
    app.add_middleware(_Guard, logins=logins, limits=limits)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals["regions_text"] = regions_text
    templates.env.globals["decimals_for"] = decimals_for
    # spooled uploads stay inside the work folder, like everything else the app writes
    spool = desk.work_dir / ".spool"
    spool.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(spool)

    def page(request: Request, name: str, **context: object) -> HTMLResponse:
        shared = {"desk": desk, "waiting": desk.waiting(), "retrain": RETRAIN_COMMAND, "user": request.state.user, "limits": limits}
        return templates.TemplateResponse(request, name, {**shared, **context})

    def batch_or_404(batch_id: str):  # noqa: ANN202
        try:
            return desk.batch(batch_id)
        except KeyError:
            raise HTTPException(404, f"no batch {batch_id!r}") from None

    def answer(request: Request, batch, page: str = "") -> Response:  # noqa: ANN001
        url = f"/batches/{batch.id}{page}"
        if "text/html" in request.headers.get("accept", "") and "application/json" not in request.headers.get("accept", ""):
            return RedirectResponse(url, 303)
        return JSONResponse({"id": batch.id, "url": url, "photos": len(batch.photos), "skipped": batch.skipped}, 201)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        return page(request, "index.html", batches=desk.listed(), photos_root=photos_root)

    @app.post("/batches")
    async def upload(request: Request) -> Response:
        form = await request.form(max_files=limits.max_files, max_fields=20, max_part_size=CHUNK)
        files = [value for value in form.getlist("photos") if isinstance(value, UploadFile)]
        if not files:
            raise HTTPException(400, "no photos in the upload (the form field is 'photos')")
        names = [safe_name(upload.filename) for upload in files]  # a bad name refuses the upload before anything is written
        batch_id, folder = desk.new_batch_folder()
        uploads = folder / "uploads"
        uploads.mkdir()
        accepted, refused, too_large = [], [], 0
        for number, (name, upload) in enumerate(zip(names, files), 1):
            target = uploads / f"{number:04d}-{name}"
            size = 0
            with target.open("wb") as handle:
                while chunk := await upload.read(CHUNK):
                    size += len(chunk)
                    if size > limits.max_file_bytes:
                        break
                    handle.write(chunk)
            if size > limits.max_file_bytes:
                target.unlink()
                too_large += 1
                refused.append((name, f"larger than {limits.max_file_mb:g} MB"))
            elif (reason := checked_image(target, limits)) is not None:
                target.unlink()
                refused.append((name, reason))
            else:
                accepted.append((name, target))
        if not accepted:
            shutil.rmtree(folder)
            status = 413 if too_large == len(files) else 415
            raise HTTPException(status, "; ".join(f"{name}: {reason}" for name, reason in refused))
        return answer(request, desk.submit(batch_id, folder, accepted, refused))

    @app.post("/batches/folder")
    def open_folder(request: Request, folder: str = Form(...)) -> Response:
        target = inside(photos_root, folder)
        try:
            files = expand_inputs([str(target)])
        except CrackclsError as exc:
            raise HTTPException(400, str(exc)) from None
        accepted, refused = [], []
        for path in files:
            name = str(path.relative_to(target))
            reason = checked_image(path, limits)
            (refused.append((name, reason)) if reason else accepted.append((name, path)))
        if not accepted:
            raise HTTPException(415, f"no photo this app can read in {folder!r}")
        if len(accepted) > limits.max_files:  # never a silent cut: the user picks a smaller folder
            raise HTTPException(400, f"{folder!r} holds {len(accepted)} photos, more than the {limits.max_files} a batch may have")
        batch_id, batch_folder = desk.new_batch_folder()
        return answer(request, desk.submit(batch_id, batch_folder, accepted, refused))

    @app.post("/batches/review-file")
    def open_review_file(request: Request, path: str = Form(...)) -> Response:
        """A review file of `crackcls scan --review`: its photos scanned here, its tiles in its order."""
        target = file_inside(photos_root, path)
        try:
            header, tiles = read_review(target)
        except CrackclsError as exc:
            raise HTTPException(400, str(exc)) from None
        accepted, refused = [], []
        for photo in dict.fromkeys(tile.path for tile in tiles):
            found = resolved_inside(photos_root, photo, "photo")
            name = str(found.relative_to(photos_root.resolve()))
            reason = checked_image(found, limits) if found.is_file() else "not found"
            (refused.append((name, reason)) if reason else accepted.append((name, found)))
        if not accepted:
            if not tiles:
                raise HTTPException(400, f"{path!r} queues no tile")
            raise HTTPException(415, f"no photo of {path!r} this app can read")
        if len(accepted) > limits.max_files:
            raise HTTPException(400, f"{path!r} names {len(accepted)} photos, more than the {limits.max_files} a batch may have")
        batch_id, batch_folder = desk.new_batch_folder()
        return answer(request, desk.submit(batch_id, batch_folder, accepted, refused, target, header, tiles), "/review")

    @app.get("/batches/{batch_id}", response_class=HTMLResponse)
    def batch_page(request: Request, batch_id: str) -> HTMLResponse:
        return page(request, "batch.html", batch=batch_or_404(batch_id), done=DONE)

    @app.get("/api/batches/{batch_id}")
    def batch_status(batch_id: str) -> dict:
        batch = batch_or_404(batch_id)
        return {**batch.progress(), "results": [{"number": p.number, "name": p.name, **p.scan.row(), "path": p.name} for p in batch.scanned]}

    @app.get("/batches/{batch_id}/photos/{number}/overlay.png")
    def overlay(batch_id: str, number: int) -> FileResponse:
        try:
            photo = batch_or_404(batch_id).photo(number)
        except KeyError:
            raise HTTPException(404, f"no scanned photo {number}") from None
        return FileResponse(photo.scan.overlay, media_type="image/png")

    @app.post("/api/batches/{batch_id}/photos/{number}/corrections")
    def correct(request: Request, batch_id: str, number: int, body: CorrectionIn) -> dict:
        batch = batch_or_404(batch_id)
        reviewer = request.state.user or body.reviewer
        try:
            written = desk.correct(batch.id, number, body.kind, reviewer, body.region, body.box, body.site)
        except KeyError:
            raise HTTPException(404, f"no scanned photo {number}") from None
        except CrackclsError as exc:
            raise HTTPException(400, str(exc)) from None
        return {
            "written": [f.name for f in written.files], "duplicates": written.duplicates, "waiting": desk.waiting(),
            "note": batch.photo(number).notes[-1], "site": written.site,
        }  # fmt: skip

    def queued_or_error(batch, n: int) -> list:  # noqa: ANN001
        try:
            return desk.review(batch.id, n)
        except CrackclsError as exc:
            raise HTTPException(409 if batch.status != DONE else 400, str(exc)) from None

    def review_answer(batch, n: int) -> dict:  # noqa: ANN001
        queued = queued_or_error(batch, n)
        header = batch.review_header or {}
        return {
            "id": batch.id, "model": desk.version, "site": desk.site, "n": n,
            "ranked_by": header.get("model", desk.version), "review_file": str(batch.review_file) if batch.review_file else None,
            "corrected": sum(len(photo.corrected) for photo in batch.scanned),
            "tiles": [{"rank": rank, **q.as_dict(batch.id)} for rank, q in enumerate(queued, 1)],
        }  # fmt: skip

    @app.get("/api/batches/{batch_id}/review")
    def review_json(batch_id: str, n: int = 50) -> dict:
        return review_answer(batch_or_404(batch_id), n)

    @app.get("/batches/{batch_id}/review", response_class=HTMLResponse)
    def review_page(request: Request, batch_id: str, n: int = 50) -> HTMLResponse:
        batch = batch_or_404(batch_id)
        if batch.status != DONE:
            return page(request, "batch.html", batch=batch, done=DONE)  # it reloads itself when the scan is done
        return page(request, "review.html", batch=batch, review=review_answer(batch, n), flips=FLIPS, max_review=MAX_REVIEW)

    @app.get("/batches/{batch_id}/photos/{number}/tile.jpg")
    def tile_picture(batch_id: str, number: int, left: int, top: int, right: int, bottom: int) -> Response:
        try:
            data = desk.tile_picture(batch_or_404(batch_id).id, number, (left, top, right, bottom))
        except KeyError:
            raise HTTPException(404, f"no tile {left},{top}-{right},{bottom} of photo {number} in the review queue") from None
        except CrackclsError as exc:
            raise HTTPException(409, str(exc)) from None
        return Response(data, media_type="image/jpeg")

    @app.get("/batches/{batch_id}/report")
    def report(batch_id: str) -> FileResponse:
        try:
            path = desk.report(batch_or_404(batch_id).id)
        except CrackclsError as exc:
            raise HTTPException(409, str(exc)) from None
        return FileResponse(path, media_type="text/html", filename=f"crackcls-report-{batch_id}.html")

    @app.get("/healthz")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/api/desk")
    def about() -> dict:
        return {"model": desk.version, "waiting": desk.waiting(), "field": str(desk.field.root), "site": desk.site}

    return app


def serve(
    desk: Desk, photos_root: Path, host: str = "127.0.0.1", port: int = 8080, limits: Limits = Limits(), auth_db: str | None = None
) -> None:
    """Run the page with uvicorn; anything but loopback needs ``auth_db``."""
    import uvicorn

    serve_check(host, auth_db)
    logins = Logins(auth_db) if auth_db else None
    app = create_app(desk, photos_root, limits, logins)
    print(f"crackcls desk on http://{host}:{port} with {desk.version} (Ctrl+C stops it)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=os.environ.get("CRACKCLS_APP_LOG", "warning"))


def serve_check(host: str, auth_db: str | None) -> None:
    """Refuse, before the model loads, to open the desk to the network without logins."""
    if not is_loopback(host) and not auth_db:
        raise CrackclsError(
            f"binding to {host} would open the desk to the network without logins; add --auth-db "
            "(the team server's users, e.g. sqlite:///basic_auth.db) or listen on 127.0.0.1"
        )
