"""CSV text with a header line, shared by every report and output format that writes rows."""

from __future__ import annotations

import csv
import io


def csv_text(rows: list[dict], columns: list[str]) -> str:
    """Rows as CSV text with a header line."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


