"""An inspection report for a batch of scanned photos: one self-contained HTML file, printable to PDF.

Everything it shows is inside the file (overlays as base64 JPEG thumbnails, the styles
inline, no script), so it can be mailed, archived or printed as it is. Every string is
escaped on the way in; the model card's Markdown is rendered without raw HTML, links or
images, so that nothing in it can reach outside the file either.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import jinja2
import markdown
from markdown.extensions import Extension
from markupsafe import Markup
from PIL import Image

from crackcls.data.images import UnreadableImage, decoded
from crackcls.model.scoring import CRACK
from crackcls.util import atomic

TEMPLATE = "report.html.j2"
THUMBNAIL_SIZE = 900  # px on the longest side: sharp on an A4 page, a few hundred kB per photo
THUMBNAIL_QUALITY = 85


@dataclass
class ReportPhoto:
    row: dict  # PhotoScan.row(): path, verdict, score, threshold, tiles, size, regions, familiarity where scored
    overlay: Path | None  # the overlay PNG written for it, or None
    notes: list[str] = field(default_factory=list)  # extra lines, e.g. reviewer corrections


class _CardMarkdown(Extension):
    """Markdown as text and tables only: raw HTML is escaped, links and images stay plain text."""

    BLOCKED_INLINE = ("html", "link", "image_link", "reference", "image_reference", "short_reference",
                      "short_image_ref", "autolink", "automail")  # fmt: skip

    def extendMarkdown(self, md: markdown.Markdown) -> None:  # noqa: N802 - Markdown's name
        md.preprocessors.deregister("html_block", strict=False)
        for name in self.BLOCKED_INLINE:
            md.inlinePatterns.deregister(name, strict=False)


def card_html(text: str) -> Markup:
    """The model card's Markdown (with its tables) as HTML that references nothing outside the report."""
    return Markup(markdown.markdown(text, extensions=["tables", _CardMarkdown()]))


def thumbnail_uri(overlay: Path, longest: int = THUMBNAIL_SIZE) -> str | None:
    """The overlay as a ``data:image/jpeg;base64,`` URI, no longer than ``longest`` px; None when it cannot be read."""
    try:
        with decoded(overlay) as im:
            picture = im.convert("RGB")
    except UnreadableImage:
        return None
    picture.thumbnail((longest, longest), Image.Resampling.LANCZOS)  # never enlarged
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def warnings_of(row: dict) -> list[str]:
    """What a reader should weigh before trusting the photo's verdict."""
    found = []
    if row.get("unfamiliar"):
        unfamiliar = row.get("unfamiliar_tiles")
        tiles = f"; {unfamiliar} of {row['tiles']} tiles unfamiliar" if unfamiliar is not None else ""
        median = f"median familiarity {row['familiarity']:.3g}"
        found.append(f"unfamiliar: {median} (above 1: unlike the training data){tiles}")
    return found


def _photo_view(number: int, photo: ReportPhoto) -> dict:
    row = photo.row
    crack = row["verdict"] == CRACK
    thumbnail = thumbnail_uri(photo.overlay) if photo.overlay is not None else None
    missing = None
    if thumbnail is None:
        missing = f"overlay {photo.overlay} is unreadable" if photo.overlay else "no overlay was written for this photo"
    familiarity = row.get("familiarity")
    return {
        "number": number,
        "anchor": f"photo-{number}",
        "name": Path(row["path"]).name,
        "path": row["path"],
        "crack": crack,
        "verdict": row["verdict"].replace("_", " "),
        "comparison": "≥" if crack else "<",
        "score": f"{row['score']:.3f}",
        "threshold": f"{row['threshold']:.3f}",
        "crack_tiles": row["crack_tiles"],
        "tiles": row["tiles"],
        "tile": row.get("tile"),
        "size": f"{row['width']} × {row['height']} px",
        "familiarity": None if familiarity is None else f"{familiarity:.3g}",
        "regions": [  # numbered as on the overlay
            {**region, "number": n, "peak": f"{region['max_probability']:.3f}"}
            for n, region in enumerate(row["regions"], 1)
        ],
        "thumbnail": thumbnail,
        "missing": missing,
        "warnings": warnings_of(row) + list(photo.notes),
    }


def _created_text(created: datetime) -> str:
    """``2026-12-03 10:12:05 +01:00 (CET)``: the moment, its offset, and the zone's name where it has one."""
    text = created.isoformat(sep=" ", timespec="seconds")
    offset = text[19:]
    text = f"{text[:19]} {'UTC' if offset == '+00:00' else offset}"
    name = created.tzname()
    named = name and name not in ("UTC", f"UTC{offset}") and not name.startswith(("+", "-"))
    return f"{text} ({name})" if named else text


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("crackcls.photos", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,  # a misspelt field fails loudly, never prints as nothing
    )


def render_report(
    photos: Sequence[ReportPhoto],
    model: str,
    card_markdown: str | None,
    created: datetime,
    shift_line: str | None = None,
    skipped: Sequence[tuple[str, str]] = (),
    title: str = "Crack inspection report",
) -> str:
    """The whole HTML document. ``created`` without a time zone is taken as local time."""
    if created.tzinfo is None:
        created = created.astimezone()
    views = [_photo_view(number, photo) for number, photo in enumerate(photos, 1)]
    cracks = sum(view["crack"] for view in views)
    return _environment().get_template(TEMPLATE).render(
        title=title,
        created=_created_text(created),
        created_iso=created.isoformat(timespec="seconds"),
        model=model,
        photos=views,
        cracks=cracks,
        clear=len(views) - cracks,
        tiles=sum(view["tiles"] for view in views),
        shift_line=shift_line,
        shifted=bool(shift_line and shift_line.startswith("SHIFT")),
        skipped=[{"path": path, "reason": reason} for path, reason in skipped],
        card=None if card_markdown is None or not card_markdown.strip() else card_html(card_markdown),
    )


def write_report(path: str | Path, html: str) -> Path:
    """Write the report whole or not at all; returns its path."""
    atomic.write_text(path, html)
    return Path(path)
