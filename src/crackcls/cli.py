"""The ``crackcls`` console command: pipeline stages and the jobs around them."""

from __future__ import annotations

import argparse
import importlib
import sys

from crackcls.util.errors import CrackclsError, user_errors_exit

STAGES = ("fetch", "split", "features", "train", "evaluate")

# Plain text for a terminal (argparse prints it as written).
DESCRIPTION = """\
Train, evaluate, promote and use a concrete-crack image classifier.
The pipeline itself runs through DVC (dvc repro, dvc exp run); these
commands are the jobs around it."""

EPILOG = """\
examples:
  crackcls predict photos/ 'site-7/**/*.jpg'       label images with the @champion model
  crackcls predict photos/ --explain gradcam/      ... and write a Grad-CAM overlay per image
  crackcls scan site-7/ --overlay scans/           find crack regions in whole photos, tile by tile
  crackcls scan site-7/ --report site-7.html       ... and write an inspection report, printable to PDF
  crackcls survey bridge-12/ --out survey/         a whole survey on Spark (local[*] or --master), resumable
  crackcls evaluate --data /path/to/labelled       score models/model.keras on Positive/ + Negative/
  crackcls promote                                 crown @challenger if it beats @champion
  crackcls app                                     the inspector's desk on http://127.0.0.1:8080
  crackcls export                                  @champion as SavedModel, ONNX and LiteRT, parity-checked
  crackcls predict photos/ --runtime onnx          label images with ONNX Runtime, without TensorFlow
  crackcls ui-link                                 the MLflow UI address that opens on the runs

Run 'crackcls <command> --help' for a command's options."""


def _stage(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"crackcls.stages.{args.name}")
    module.main()
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from crackcls.jobs import evaluate
    from crackcls.model.evaluation import metrics_text, sources_text

    if args.tile_truth and not args.scan:
        raise CrackclsError("--tile-truth needs --scan")
    if args.scan:
        if not args.data:
            raise CrackclsError("--scan needs --data: a folder of whole photos in Positive/ and Negative/")
        outcome = evaluate.run_scan(args.model, args.data, args.out, args.tile_truth)
    else:
        outcome = evaluate.run(args.model, args.data, args.out)
    print(metrics_text(f"{args.model} on {args.data or 'the test split'}", outcome["result"].metrics))
    if table := sources_text(outcome["result"].by_source):
        print(table)
    if outcome["result"].shift is not None:
        print(outcome["result"].shift.line(outcome.get("shift_unit", "images")))
    for key, value in outcome.get("tile_metrics", {}).items():
        print(f"  {key:<20} {value:.4f}" if isinstance(value, float) else f"  {key:<20} {value}")
    skipped = outcome["result"].skipped.count
    if skipped:
        print(f"  skipped    {skipped} unreadable files (listed in {outcome['files']['skipped']})")
    print(f"reports: {outcome['out_dir']}")
    print(f"mlflow run: {outcome['run_id']}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from crackcls.jobs import promote

    outcome = promote.run(args.version)
    for role, version, metrics in (
        ("challenger", outcome.challenger_version, outcome.challenger_metrics),
        ("champion", outcome.champion_version, outcome.champion_metrics),
    ):
        print(f"{role:<10} v{version or '-'}: {promote.describe(metrics)}")
    if outcome.paired is not None:
        paired = outcome.paired
        print(
            f"disagreements: {paired.challenger_only} only the challenger gets right, "
            f"{paired.champion_only} only the champion; exact McNemar p={paired.p_value:.4g}"
        )
    if outcome.adapted_from is not None:
        print(f"challenger adapted from v{outcome.adapted_from}: judged on its sites' own test images, worse on no source")
    if outcome.sources:
        print("\n".join(promote.source_rows(outcome.sources, outcome.metric, outcome.max_p_value, outcome.min_improvement)))
    print(("PROMOTED: " if outcome.decision.promote else "REFUSED: ") + outcome.decision.reason)
    already = outcome.champion_version == outcome.challenger_version
    return 0 if outcome.decision.promote or already else 1


def _predict(args: argparse.Namespace) -> int:
    from crackcls.jobs import predict

    result = predict.run(args.paths, args.model, args.threshold, args.batch_size, args.explain, args.runtime)
    sys.stdout.write(predict.write(result, args.format, args.output))
    if args.output:
        print(f"wrote {len(result.predictions)} predictions to {args.output}", file=sys.stderr)
    if args.explain and result.predictions:
        print(f"Grad-CAM overlays in {args.explain}", file=sys.stderr)
    print(predict.summary(result), file=sys.stderr)
    return 0 if result.predictions else 1


def _scan(args: argparse.Namespace) -> int:
    from crackcls.jobs import scan

    result = scan.run(
        args.paths, args.model, args.tile, args.stride, args.threshold, args.batch_size, args.overlay, args.runtime,
        report=args.report, review=args.review, review_file=args.review_file,
    )  # fmt: skip
    sys.stdout.write(scan.write(result, args.format, args.output, args.tiles))
    if args.output:
        print(f"wrote {len(result.scans)} photo rows to {args.output}", file=sys.stderr)
    if args.tiles:
        print(f"wrote per-tile probabilities to {args.tiles}", file=sys.stderr)
    if args.overlay and result.scans:
        print(f"overlays in {args.overlay}", file=sys.stderr)
    if args.report:
        print(f"report: {args.report}", file=sys.stderr)
    print(scan.summary(result), file=sys.stderr)
    return 0 if result.scans else 1


def _survey(args: argparse.Namespace) -> int:
    from crackcls.jobs import survey

    conf = {}
    for item in args.conf:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CrackclsError(f"--conf {item}: use KEY=VALUE, e.g. --conf spark.executor.memory=4g")
        conf[key] = value
    result = survey.run(
        args.paths, args.out, args.model, args.master, args.runtime, args.column, args.partitions, args.tile, args.stride,
        args.threshold, args.batch_size, args.report_photos, conf,
    )  # fmt: skip
    print(survey.summary_text(result), file=sys.stderr)
    return 0 if result.summary["rows"] - result.summary["by_verdict"]["error"] > 0 else 1


def _app(args: argparse.Namespace) -> int:
    from pathlib import Path

    from crackcls.app import desk, web
    from crackcls.jobs.predict import _config, champion_spec

    config = _config()
    folders = desk.default_folders()
    limits = web.Limits(args.max_file_mb, args.max_files, int(args.max_megapixels * 1e6))
    web.serve_check(args.host, args.auth_db)  # before the model loads
    opened = desk.Desk(
        config, args.model or champion_spec(config), Path(args.work or folders["work"]), Path(args.field or folders["field"]),
        folders["imported"], args.runtime, site=args.site,
    )  # fmt: skip
    web.serve(opened, Path(args.photos_root).resolve(), args.host, args.port, limits, args.auth_db)
    return 0


def _ui_link(args: argparse.Namespace) -> int:
    from crackcls.config import load_config
    from crackcls.tracking import store

    print(store.runs_url(args.base, store.configure(load_config().mlflow.experiment)))
    return 0


RUNTIME_HELP = "keras (TensorFlow) or onnx (ONNX Runtime on the model's export, TensorFlow never loaded). Default: onnx when the model has an export made from it (crackcls export), else keras"


def _export(args: argparse.Namespace) -> int:
    from crackcls.jobs import export

    formats = tuple(f.strip() for f in args.formats.split(",")) if args.formats else None
    result = export.run(args.model, args.out, formats, args.representative, args.check_data)
    print(export.summary(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crackcls", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    stage = sub.add_parser("stage", help="run one DVC stage's command (what dvc.yaml calls)")
    stage.add_argument("name", choices=STAGES)
    stage.set_defaults(func=_stage)

    evaluate = sub.add_parser("evaluate", help="score a model on the test split or a labelled folder")
    evaluate.add_argument("--model", default="models/model.keras", help="a .keras file, models:/<name>@<alias> or runs:/<id>/model")
    evaluate.add_argument("--data", default=None, help="a folder with Positive/ and Negative/ (default: the test split)")
    evaluate.add_argument("--out", default=None, help="report folder (default: reports/eval/<model>-<data>)")
    evaluate.add_argument("--scan", action="store_true", help="--data holds whole photos: scan each tile by tile and score the photo verdicts")
    evaluate.add_argument("--tile-truth", default=None, metavar="FILE", help="with --scan: JSON of crack boxes per photo (docs/scan.md) for tile-level recall and precision")
    evaluate.set_defaults(func=_evaluate)

    promote = sub.add_parser("promote", help="move @champion to the @challenger version if it is better on the test split")
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
    predict.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: 16; memory grows with it)")
    predict.add_argument("--runtime", choices=("keras", "onnx"), default=None, help=RUNTIME_HELP)
    predict.set_defaults(func=_predict)

    scan = sub.add_parser(
        "scan",
        help="scan whole photos tile by tile: verdict, crack tiles and crack regions per photo",
        description="Cut each photo into tiles at the training scale (never shrinking the photo), score every tile, "
        "and report per photo: the verdict, crack tiles and crack regions as boxes in photo pixels. "
        "Exits 1 when no photo could be read.",
    )
    scan.add_argument("paths", nargs="+", metavar="PHOTO", help="image files, folders (recursive) or quoted globs ('**/*.jpg')")
    scan.add_argument("--tile", type=int, default=None, help="tile side in photo pixels (default: params scan.tile, else 227, the training patch size)")
    scan.add_argument("--stride", type=int, default=None, help="step between tiles in pixels, at most --tile; smaller overlaps tiles (default: the tile)")
    scan.add_argument("--threshold", type=float, default=None, help="a tile is a crack when its probability is at least this (default: params evaluate.threshold, else 0.5)")
    scan.add_argument("--format", choices=("table", "json", "csv"), default=None, help="output format (default: from --output's suffix, else table)")
    scan.add_argument("--output", default=None, metavar="FILE", help="write the photo rows to FILE instead of the terminal")
    scan.add_argument("--tiles", default=None, metavar="FILE", help="also write every tile's box and probability to FILE (.json, else CSV)")
    scan.add_argument("--overlay", default=None, metavar="OUTDIR", help="write <photo>_scan.png per photo into OUTDIR: tile heat map and region boxes")
    scan.add_argument("--report", default=None, metavar="FILE", help="also write an inspection report to FILE: one self-contained HTML page (overlays, verdicts, regions, skipped files, the model card), printable to PDF from a browser")
    scan.add_argument("--model", default=None, help="as for predict (default: models:/<registry.model_name>@champion)")
    scan.add_argument("--batch-size", type=int, default=None, help="tiles per batch (default: params evaluate.batch_size, else 64)")
    scan.add_argument("--runtime", choices=("keras", "onnx"), default=None, help=RUNTIME_HELP)
    scan.add_argument("--review", type=int, default=None, metavar="N", help="also queue the N tiles most worth a reviewer's look (near the threshold, unfamiliar, read differently when flipped) in a JSON file the desk opens")
    scan.add_argument("--review-file", default=None, metavar="FILE", help="where --review writes (default: reports/review.json)")
    scan.set_defaults(func=_scan)

    survey = sub.add_parser(
        "survey",
        help="scan a survey of many photos on Apache Spark, resumable: rows per photo and region as Parquet",
        description="Scan every photo of a survey as `scan` does, on Spark (local[*] unless --master or Spark's own "
        "configuration names a cluster): one row per photo and one per crack region, written a few photos at a time "
        "as Parquet under --out, then summary.json, report.html (the photos most worth a look) and an MLflow run. "
        "A rerun skips the photos already scanned with the same model version and settings, and finishes the rest; "
        "an unreadable photo is a row with its error. Needs the survey extra (pyspark) and Java 17 or later. "
        "Exits 1 when no photo could be scanned.",
    )
    survey.add_argument("paths", nargs="+", metavar="SURVEY", help="folders (recursive), quoted globs ('**/*.jpg'), or one CSV/Parquet table of photo paths or URIs")
    survey.add_argument("--out", default=None, metavar="DIR", help="where the rows, summary and report go; a rerun into it resumes (default: reports/survey)")
    survey.add_argument("--master", default=None, help="the Spark master, e.g. spark://host:7077, yarn, local[4] (default: Spark's configuration, else local[*])")
    survey.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="a Spark setting, e.g. spark.executor.memory=4g (repeatable)")
    survey.add_argument("--column", default=None, help="the table's photo column (default: path, uri or file, or its only column)")
    survey.add_argument("--partitions", type=int, default=None, help="Spark tasks (default: one per 64 photos, at least one per core)")
    survey.add_argument("--model", default=None, help="as for predict (default: models:/<registry.model_name>@champion)")
    survey.add_argument("--runtime", choices=("keras", "onnx"), default=None, help=RUNTIME_HELP)
    survey.add_argument("--tile", type=int, default=None, help="as for scan (default: params scan.tile)")
    survey.add_argument("--stride", type=int, default=None, help="as for scan (default: the tile)")
    survey.add_argument("--threshold", type=float, default=None, help="as for scan (default: the model's fitted rule)")
    survey.add_argument("--batch-size", type=int, default=None, help="tiles per batch (default: params evaluate.batch_size, else 64)")
    survey.add_argument("--report-photos", type=int, default=24, metavar="N", help="photos in the summary's list and the report (default: %(default)s; 0: no report)")
    survey.set_defaults(func=_survey)

    export = sub.add_parser(
        "export",
        help="export a model as SavedModel, ONNX and LiteRT (float32, int8), checked against Keras",
        description="Write the model as a SavedModel, ONNX and LiteRT (float32, and int8 calibrated on training "
        "images) with its threshold and familiarity data and export.json, after checking every export against "
        "the Keras model on test images. A model from MLflow gets the folder logged to its run (export/, and "
        "onnx_model in MLflow's ONNX flavour) and its version tagged. Exits 1 when an export drifts.",
    )
    export.add_argument("--model", default=None, help="as for predict (default: models:/<registry.model_name>@champion)")
    export.add_argument("--out", default=None, metavar="DIR", help="export folder (default: models/export)")
    export.add_argument("--formats", default=None, help="comma-separated, of saved_model,onnx,litert,litert_int8 (default: all)")
    export.add_argument("--representative", default=None, metavar="FOLDER", help="int8 calibration images (default: 200 of the training split)")
    export.add_argument("--check-data", default=None, metavar="FOLDER", help="parity images, labelled if it has Positive/ and Negative/ (default: 500 of the test split)")
    export.set_defaults(func=_export)

    app = sub.add_parser(
        "app",
        help="the inspector's desk: a web page to scan photos, review and correct the answers, and report them",
        description="Serve the inspector's desk on http://127.0.0.1:8080: upload or open photos, watch them scan, "
        "mark false regions and missed cracks (their tiles go into the field folder with a manifest row), review the tiles "
        "worth a look first (a batch's review queue, or a file of `scan --review`), and download an inspection report. "
        "Any address but loopback needs --auth-db.",
    )
    app.add_argument("--model", default=None, help="as for predict (default: models:/<registry.model_name>@champion)")
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; anything else needs --auth-db)")
    app.add_argument("--port", type=int, default=8080)
    app.add_argument("--auth-db", default=None, help="the team server's users (make server's AUTH_DB, e.g. sqlite:///basic_auth.db): logins required")
    app.add_argument("--photos-root", default=".", help="folders inside this one can be opened from the page (default: the current folder)")
    app.add_argument("--field", default=None, metavar="DIR", help="where corrected tiles go (default: field/, which data.dvc imports)")
    app.add_argument("--work", default=None, metavar="DIR", help="uploads, overlays and reports (default: reports/app)")
    app.add_argument("--max-file-mb", type=float, default=64.0, help="largest upload per photo (default: %(default)s)")
    app.add_argument("--max-files", type=int, default=500, help="most photos per batch (default: %(default)s)")
    app.add_argument("--max-megapixels", type=float, default=150.0, help="largest photo (default: %(default)s)")
    app.add_argument("--runtime", choices=("keras", "onnx"), default=None, help=RUNTIME_HELP)
    app.add_argument("--site", default="", metavar="NAME", help="the site corrections are filed under, field/<NAME>/ (a correction may name another); default: none")
    app.set_defaults(func=_app)

    ui_link = sub.add_parser(
        "ui-link",
        help="print the MLflow UI link that opens on the training runs",
        description="Print the MLflow UI address of the experiment's training-runs table "
        "(the view `make ui` serves).",
    )
    ui_link.add_argument("--base", default="http://127.0.0.1:5000", help="where the UI listens (default: %(default)s)")
    ui_link.set_defaults(func=_ui_link)
    return parser


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
