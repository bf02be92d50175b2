"""Split: seconds for the ``split`` stage on 40,000 files (row c).

    python bench/split.py                 # 10 copies of the shared 4,000-image sample
    python bench/split.py --quick         # 2 copies of the bundled sample

The files are copies of the sample, each made unique by a few trailing bytes, so that
every one is hashed, checked and placed, as in the full Mendeley set.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import yaml

import harness


def split_copies(source: Path, work: Path, copies: int) -> dict:
    """Split on copies × the source tree, each copy made unique by trailing bytes."""
    from crackcls.config import load_config
    from crackcls.stages import split
    from crackcls.util import paths

    raw = work / paths.RAW_DIR / "mendeley"  # as the fetch stage lays out the Mendeley source
    count = 0
    for label in paths.LABELS:
        (raw / label).mkdir(parents=True, exist_ok=True)
        for copy in range(copies):
            for original in sorted((source / label).glob("*.jpg")):
                (raw / label / f"{original.stem}_{copy}.jpg").write_bytes(original.read_bytes() + f"copy{copy}".encode())
                count += 1
    params = yaml.safe_load((harness.REPO_ROOT / "params.yaml").read_text())
    params["data"]["sources"] = ["mendeley"]
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    os.chdir(work)
    config = load_config(work / "params.yaml")
    os.sync()
    started = time.perf_counter()
    report = split.run(config, work)
    seconds = time.perf_counter() - started
    return {"files": count, "seconds": round(seconds, 2), "total": report["total"], "duplicates_removed": report["duplicates_removed"]}


def main() -> None:
    parser = harness.parser(__doc__, "split")
    harness.data_argument(parser)
    parser.add_argument("--copies", type=int, default=10, help="copies of the data (default: %(default)s)")
    args = parser.parse_args()
    if args.quick:
        args.copies = 2
    data = harness.default_data(args.data)
    with harness.scratch() as work:
        s = harness.in_child(split_copies, data, work / "split", args.copies)
    table = f"| benchmark | measured | target |\n|---|---|---|\n| c. Split ({s['files']:,} files) | **{s['seconds']} s** | ≤ 10 s |"
    harness.write({"data": str(data), "split": s, "table": table}, args.out)


if __name__ == "__main__":
    main()
