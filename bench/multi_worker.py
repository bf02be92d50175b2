"""Benchmark: image-level training in one process against MultiWorkerMirroredStrategy workers.

    python bench/multi_worker.py                     # bundled sample, 2 workers on this machine
    python bench/multi_worker.py --data DIR --per-class 200 --size 96 --epochs 3

Three runs of the ``train`` stage from scratch (``weights: none``) on the same prepared
project (fetch, split and features run once), early stopping off:

- ``fit``: one process, no TF_CONFIG: the single-process ``train`` stage (Keras ``model.fit``);
- ``loop x1``: the synchronous multi-worker loop with a one-worker cluster (its own overhead);
- ``loop xN``: N worker processes on 127.0.0.1, each with its own TF_CONFIG.

On one machine the workers share its cores, so N workers are not expected to be faster;
across machines each brings its own. Prints a table and writes bench/results/multi_worker.json.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

import harness

REPO_ROOT = harness.REPO_ROOT
DONE = re.compile(r"done: (\d+) steps in ([\d.]+) s")
ONE_WORKER_LOOP = (
    "import pathlib\nfrom crackcls.config import load_config\nfrom crackcls.model import distributed\n"
    "config, workspace = load_config(), pathlib.Path.cwd()\n"
    "with distributed.cluster() as cluster:\n    cluster.fit(config.model, config.train, workspace)\n"
)


def prepare(root: Path, data: Path, backbone: str, per_class: int, size: int, epochs: int, batch: int) -> Path:
    project = root / "project"
    for label in ("Positive", "Negative"):
        (project / "data_in" / label).mkdir(parents=True)
        for image in sorted((data / label).iterdir())[:per_class]:
            shutil.copy(image, project / "data_in" / label / image.name)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"].update({"sources": ["data_in"]})
    params["data"]["download"]["mendeley"]["mirror_url"] = None
    params["model"].update({"backbone": backbone, "weights": "none", "image_size": size})
    params["train"].update({"epochs": epochs, "patience": epochs, "batch_size": batch})
    params["mlflow"] = {"experiment": "bench-multi-worker"}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    code = "from crackcls.config import load_config; from crackcls.stages import fetch, split, features; import pathlib; c = load_config(); p = pathlib.Path.cwd(); [s.run(c, p) for s in (fetch, split, features)]"
    subprocess.run([sys.executable, "-c", code], cwd=project, check=True)
    return project


def ports(n: int) -> list[int]:
    found: list[int] = []
    while len(found) < n:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            if (port := sock.getsockname()[1]) not in found:
                found.append(port)
    return found


def run_workers(project: Path, workers: int, command: list[str]) -> dict:
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports(workers)]}
    copies = [project] + [Path(shutil.copytree(project, project.parent / f"worker{i}")) for i in range(1, workers)]
    started = time.perf_counter()
    processes = [
        subprocess.Popen(command, cwd=copy, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
        for i, copy in enumerate(copies)
    ]  # fmt: skip
    outputs = [p.communicate()[0] for p in processes]
    wall = time.perf_counter() - started
    for copy in copies[1:]:
        shutil.rmtree(copy)
    if any(p.returncode for p in processes):
        raise SystemExit("a worker failed:\n" + "\n".join(o[-3000:] for o in outputs))
    done = [DONE.search(o) for o in outputs]
    return {"workers": workers, "wall_s": round(wall, 1), "steps": int(done[0][1]), "train_s": max(float(d[2]) for d in done)}


def run_fit(project: Path) -> dict:
    started = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    subprocess.run([sys.executable, "-m", "crackcls.stages.train"], cwd=project, env={**env, "CUDA_VISIBLE_DEVICES": ""}, check=True, capture_output=True)
    info = json.loads((project / "models/run.json").read_text())
    return {"workers": 1, "wall_s": round(time.perf_counter() - started, 1), "train_s": info["training_time_s"]}


def main() -> None:
    parser = harness.parser(__doc__, "multi_worker")
    parser.add_argument("--data", type=Path, default=harness.BUNDLED_SAMPLE)
    parser.add_argument("--backbone", default="compact_cnn", help="trained from scratch (weights: none)")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="per-worker batch; the global batch is this times the workers")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.per_class, args.epochs = 20, 1

    with tempfile.TemporaryDirectory(prefix="crackcls-mw-") as tmp:
        project = prepare(Path(tmp), args.data, args.backbone, args.per_class, args.size, args.epochs, args.batch)
        results = {
            "fit": run_fit(project),
            "loop x1": run_workers(project, 1, [sys.executable, "-c", ONE_WORKER_LOOP]),
            f"loop x{args.workers}": run_workers(project, args.workers, [sys.executable, "-m", "crackcls.stages.train"]),
        }
    setup = {"backbone": args.backbone, "images": 2 * args.per_class, "size": args.size, "epochs": args.epochs, "batch_per_worker": args.batch,
             "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}  # fmt: skip
    lines = [f"setup: {setup}", f"{'run':<10} {'workers':>7} {'train s':>8} {'wall s':>7}"]
    lines += [f"{name:<10} {r['workers']:>7} {r['train_s']:>8.1f} {r['wall_s']:>7.1f}" for name, r in results.items()]
    harness.write({"setup": setup, "results": results, "table": "\n".join(lines)}, args.out)


if __name__ == "__main__":
    main()
