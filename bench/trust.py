"""Trust: the threshold for a recall target, calibration and familiarity, from one pipeline from scratch.

    python bench/trust.py                     # compact_cnn, 96 px, 15 epochs on the shared 4,000-image sample
    python bench/trust.py --quick             # a smoke run on the bundled sample

The whole pipeline from scratch (``--backbone``, ``weights: none``) with
``evaluate.target_recall`` and the painted-wall photos as an extra set (where the shared
data has them): test recall and precision at the validation-chosen threshold with their
95% intervals, ECE before and after temperature scaling, the share of test images flagged
unfamiliar, and the familiarity AUROC of the test split against each extra set.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import harness
from harness import ci


def trust_pipeline(project: Path, backbone: str, target_recall: float, extra: list[str]) -> dict:
    """The whole pipeline from scratch with a recall target; the trust figures from reports/metrics.json."""
    started = time.perf_counter()
    harness.run_pipeline(
        project,
        {"model": {"backbone": backbone, "weights": "none"}, "evaluate": {"target_recall": target_recall, "extra_sets": extra}},
    )
    metrics = json.loads((project / "reports/metrics.json").read_text())
    decision = json.loads((project / "models/model.decision.json").read_text())
    return {"wall_s": round(time.perf_counter() - started, 1), "backbone": backbone, "metrics": metrics, "decision": decision}


def table(trust: dict) -> str:
    m = trust["metrics"]
    rows = [
        "| figure | measured | target |",
        "|---|---|---|",
        f"| Trust: Test recall at the validation-chosen threshold ({m['threshold']:.4g}, target {m['target_recall']}) "
        f"| **{ci(m, 'recall')}**, precision {ci(m, 'precision')} (n={m['n']}) | ≥ 0.98 |",
        f"| Trust: Expected calibration error, test split | {m['ece_uncalibrated']:.4f} before, **{m['ece']:.4f}** after "
        f"(T={m['temperature']:.3f}) | ≤ 0.02 |",
        f"| Trust: Test images flagged unfamiliar | **{m['unfamiliar']} of {m['n']} ({100 * m['unfamiliar_fraction']:.1f}%)** | ≤ 2% |",
    ]
    for name, extra in (m.get("extra_sets") or {}).items():
        rows.append(
            f"| Trust: Familiarity AUROC, test split vs {name} | **{extra['familiarity_auroc']:.4f}**; flags "
            f"{extra['unfamiliar']} of {extra['n']}; recall there {ci(extra, 'recall')} | ≥ 0.95 |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = harness.parser(__doc__, "trust")
    harness.data_argument(parser)
    parser.add_argument("--backbone", default="compact_cnn", help="trained from scratch (default: %(default)s)")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--target-recall", type=float, default=0.99)
    args = parser.parse_args()
    if args.quick:
        args.size, args.epochs = 48, 2
    data = harness.default_data(args.data)
    extra = [str(harness.PAINTED_WALL)] if (harness.PAINTED_WALL / "Positive").is_dir() else []
    with harness.scratch() as work:
        project = harness.make_project(work / "project", data, args.size, args.epochs, args.batch)
        trust = harness.in_child(trust_pipeline, project, args.backbone, args.target_recall, extra)
    trust["table"] = table(trust)
    trust["table"] += (f"\n\n{trust['backbone']}, {args.size} px, {args.epochs} epochs; pipeline {trust['wall_s']} s, "
                       f"peak RSS {trust['peak_rss_mb']} MB")  # fmt: skip
    harness.write({"data": str(data), **trust}, args.out)


if __name__ == "__main__":
    main()
