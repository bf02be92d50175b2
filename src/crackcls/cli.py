"""The ``crackcls`` console command: pipeline stages and the jobs around them."""

from __future__ import annotations

import argparse
import importlib
import sys

from crackcls.errors import user_errors_exit

STAGES = ("fetch", "split", "features", "train", "evaluate")


def _stage(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"crackcls.stages.{args.name}")
    module.main()
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from crackcls.jobs import evaluate
    from crackcls.stages.evaluate import print_metrics

    outcome = evaluate.run(args.model, args.data, args.out)
    print_metrics(f"{args.model} on {args.data or 'the test split'}", outcome["result"].metrics)
    skipped = outcome["result"].skipped.count
    if skipped:
        print(f"  skipped    {skipped} unreadable files (listed in {outcome['files']['skipped']})")
    print(f"reports: {outcome['out_dir']}")
    print(f"mlflow run: {outcome['run_id']}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from crackcls.jobs import promote

    outcome = promote.run(args.version)
    champion = "none" if outcome.champion_score is None else f"{outcome.champion_score:.4f}"
    print(f"challenger v{outcome.challenger_version}: {outcome.challenger_score:.4f}")
    print(f"champion   v{outcome.champion_version or '-'}: {champion}")
    print(("PROMOTED: " if outcome.decision.promote else "REFUSED: ") + outcome.decision.reason)
    already = outcome.champion_version == outcome.challenger_version
    return 0 if outcome.decision.promote or already else 1


def _predict(args: argparse.Namespace) -> int:
    from crackcls.jobs import predict

    result = predict.run(args.paths, args.model, args.threshold, args.batch_size, args.explain)
    sys.stdout.write(predict.write(result, args.format, args.output))
    if args.output:
        print(f"wrote {len(result.predictions)} predictions to {args.output}", file=sys.stderr)
    if args.explain and result.predictions:
        print(f"Grad-CAM overlays in {args.explain}", file=sys.stderr)
    print(predict.summary(result), file=sys.stderr)
    return 0 if result.predictions else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crackcls", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    stage = sub.add_parser("stage", help="run one DVC stage's command (what dvc.yaml calls)")
    stage.add_argument("name", choices=STAGES)
    stage.set_defaults(func=_stage)

    evaluate = sub.add_parser("evaluate", help="score a model on the test split or a labelled folder")
    evaluate.add_argument("--model", default="models/model.keras", help="a .keras file, models:/<name>@<alias> or runs:/<id>/model")
    evaluate.add_argument("--data", default=None, help="a folder with Positive/ and Negative/ (default: the test split)")
    evaluate.add_argument("--out", default=None, help="report folder (default: reports/eval/<model>-<data>)")
    evaluate.set_defaults(func=_evaluate)

    promote = sub.add_parser("promote", help="move @champion to @challenger if it is better on the test split")
    promote.add_argument("--version", default=None, help="promote this version instead of @challenger")
    promote.set_defaults(func=_promote)

    predict = sub.add_parser(
        "predict",
        help="label image files, folders or globs as crack / no_crack",
        description="Label images with a model (default: the registry's @champion). "
        "Exits 1 when no file could be read.",
    )
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or quoted globs ('**/*.jpg')")
    predict.add_argument("--model", default=None, help="a .keras file, models:/<name>@<alias>, models:/<name>/<version> or runs:/<id>/model (default: models:/<registry.model_name>@champion)")
    predict.add_argument("--threshold", type=float, default=None, help="crack when the probability is at least this (default: params evaluate.threshold, else 0.5)")
    predict.add_argument("--format", choices=("table", "json", "csv"), default=None, help="output format (default: from --output's suffix, else table)")
    predict.add_argument("--output", default=None, metavar="FILE", help="write the predictions to FILE instead of the terminal")
    predict.add_argument("--explain", default=None, metavar="OUTDIR", help="write a Grad-CAM overlay PNG per image into OUTDIR")
    predict.add_argument("--batch-size", type=int, default=None, help="images per batch (default: params evaluate.batch_size, else 64)")
    predict.set_defaults(func=_predict)
    return parser


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
