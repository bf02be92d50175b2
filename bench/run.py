"""Every benchmark part in turn, into one JSON: what ``make bench`` runs.

    python bench/run.py                          # every part (hours on 2 cores)
    python bench/run.py --quick                  # every part's smoke run
    python bench/run.py --parts predict split    # some parts
    python bench/<part>.py --help                # one part on its own, with its options

Each part is a script of its own in ``bench/`` (its options, its JSON in
``bench/results/<part>.json``); this runs each with its defaults (or ``--quick``) in a
process of its own and gathers their results in ``bench/results/bench.json``. A part
whose prerequisite is missing (a trained champion in this project, the shared data)
is recorded as skipped with its reason; a part that fails is recorded as failed, the
others still run, and the exit status is 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness

BENCH = Path(__file__).resolve().parent
# in this order; export, real_photos and desk measure the champion of the project they run in (after make demo);
# adaptation trains its own champion
PARTS = ("training", "throughput", "without_imagenet", "predict", "split", "scan", "trust", "sources", "familiarity", "multi_worker",
         "survey", "export", "real_photos", "desk", "adaptation")  # fmt: skip


def run_part(name: str, quick: bool) -> dict:
    """One part in its own process; its JSON, or why there is none."""
    with tempfile.TemporaryDirectory(prefix=f"crackcls-bench-{name}-") as tmp:
        out = Path(tmp) / f"{name}.json"
        command = [sys.executable, str(BENCH / f"{name}.py"), "--out", str(out), *(["--quick"] if quick else [])]
        print(f"\n## {name}: {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, stderr=subprocess.PIPE, text=True, check=False)
        seconds = round(time.perf_counter() - started, 1)
        sys.stderr.write(done.stderr)
        last = (done.stderr.strip().splitlines() or [""])[-1]
        if done.returncode == harness.SKIPPED:
            return {"skipped": last.removeprefix("skipped: "), "seconds": seconds}
        if done.returncode != 0 or not out.is_file():
            return {"failed": f"exit {done.returncode}: {last}", "seconds": seconds}
        return {**json.loads(out.read_text()), "seconds": seconds}


def main() -> None:
    parser = harness.parser(__doc__, "bench")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS), help="the parts to run (default: all)")
    args = parser.parse_args()
    results = {name: run_part(name, args.quick) for name in args.parts}
    summary = [f"{name}: " + (f"skipped ({r['skipped']})" if "skipped" in r else f"FAILED ({r['failed']})" if "failed" in r else "done")
               + f" in {r['seconds']} s" for name, r in results.items()]  # fmt: skip
    harness.write({"quick": args.quick, "parts": results, "table": "\n".join(summary)}, args.out)
    if any("failed" in r for r in results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
