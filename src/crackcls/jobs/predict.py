"""``crackcls predict``: label image files with a registered (or any) model, and show why.

Inputs are files, folders (searched recursively) and glob patterns. The default model is
the registry's ``champion``, the one promotion vouched for; ``--model`` takes anything
:func:`crackcls.tracking.registry.load_model` does. Unreadable files never stop a run: they are
counted, with their reasons, at the end. Scoring is :func:`crackcls.model.inference.score_files`,
the same code the served model runs, so both give the same probabilities.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from crackcls.config import Config, load_config
from crackcls.data.images import SkipReport, header_size, iter_images
from crackcls.model import portable
from crackcls.model.scoring import CRACK, Scores, label_for, set_shift
from crackcls.trust import companions
from crackcls.trust.shift import ShiftTest
from crackcls.util import atomic, paths, progress
from crackcls.util.errors import CrackclsError

CHAMPION = "champion"
FORMATS = ("table", "json", "csv")
COLUMNS = ("path", "label", "crack_probability", "threshold")
FAMILIARITY_COLUMNS = ("familiarity", "unfamiliar")  # present when the model carries a familiarity reference
GLOB_CHARS = frozenset("*?[")
# keras: the .keras model with TensorFlow; onnx: its ONNX export with ONNX Runtime, TensorFlow never imported
RUNTIMES = ("keras", "onnx")
# Images per forward pass. On a CPU the activations of one batch dominate memory
# (MobileNetV2 at 224 px: about 16 MB an image, released to the allocator, not the
# system), while throughput is flat from 8 to 64; 16 keeps `predict` lean.
BATCH_SIZE = 16


@dataclass
class Prediction:
    path: str
    label: str
    crack_probability: float
    threshold: float
    familiarity: float | None = None  # crackcls.trust.familiarity score: above 1 is unlike the training images
    unfamiliar: bool | None = None
    explanation: str | None = None  # the Grad-CAM overlay, with --explain
    warning: str | None = None  # set for whole photos, which predict squashes to one patch


@dataclass
class PredictResult:
    model: str
    predictions: list[Prediction]
    skipped: SkipReport = field(default_factory=SkipReport)
    shift: ShiftTest | None = None  # all these images' familiarity tested against the validation images'


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files named, found under folders (recursively) and matched by globs, in order, once each.

    A path that does not exist, or a glob that matches nothing, is an error: it is
    almost always a typo, and silently predicting on fewer files would hide it.
    """
    found: dict[str, Path] = {}
    for spec in inputs:
        if GLOB_CHARS & set(spec):
            matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
            if not matches:
                raise CrackclsError(f"{spec}: matches no files")
        else:
            matches = [os.path.expanduser(spec)]
        for match in matches:
            path = Path(match)
            if path.is_dir():
                candidates = list(iter_images(path))
            elif path.exists() or path.is_symlink():
                candidates = [path]
            else:
                raise CrackclsError(f"{spec}: no such file or folder")
            for candidate in candidates:
                found.setdefault(os.path.abspath(candidate), candidate)
    if not found:
        raise CrackclsError(f"no image files found in {', '.join(inputs) or 'the given paths'}")
    return list(found.values())


def _config() -> Config:
    """params.yaml's settings; the defaults when run outside a project."""
    if (paths.workspace_root() / "params.yaml").is_file():
        return load_config()
    return Config()


def champion_spec(config: Config) -> str:
    """``models:/<name>@champion``, checked first so a missing champion gets an actionable message."""
    from crackcls.tracking import store  # MLflow: imported only where the registry is asked

    name = config.registry.model_name
    store.configure_uri_only()
    if store.alias_or_none(name, CHAMPION) is None:
        raise CrackclsError(
            f"registered model '{name}' has no @{CHAMPION} version in {store.tracking_uri()}: "
            f"promote one with `crackcls promote`, or pass --model (e.g. models:/{name}@challenger or a .keras file)"
        )
    return f"models:/{name}@{CHAMPION}"


def checked_batch_size(config: Config, batch_size: int | None) -> int:
    """``--batch-size``, else params ``evaluate.batch_size``; at least 1."""
    batch_size = batch_size or config.evaluate.batch_size
    if batch_size < 1:
        raise CrackclsError(f"--batch-size must be at least 1, got {batch_size}")
    return batch_size


def runtime_for(spec: str, runtime: str | None, explain: bool = False) -> str:
    """The runtime asked for. Else ONNX Runtime wherever the model has an up-to-date ONNX export (a ``.onnx`` file,
    an export folder, a ``.keras`` file whose ``export/`` was made from it, an MLflow model whose run holds one), since
    it is faster and lighter on a CPU; else Keras. Grad-CAM (``explain``) needs Keras."""
    if runtime is not None:
        if runtime not in RUNTIMES:
            raise CrackclsError(f"unknown runtime '{runtime}'; use one of {', '.join(RUNTIMES)}")
        return runtime
    if explain:
        return "keras"
    if paths.is_model_uri(spec):
        from crackcls.tracking import store

        return "onnx" if store.run_has_artifact(spec, f"export/{portable.ONNX_FILE}") else "keras"
    path = paths.resolve(spec)
    if path.suffix == ".onnx" or (path.is_dir() and (path / portable.ONNX_FILE).is_file()):
        return "onnx"
    return "onnx" if path.suffix == ".keras" and path.is_file() and portable.export_of(path) is not None else "keras"


def load_for(spec: str, runtime: str):  # noqa: ANN201 - a keras.Model or a portable.PortableModel
    """The model at ``spec`` for ``runtime``. For ONNX: a .onnx file, an export folder, the ``export/`` folder
    beside a ``.keras`` file (made from that file), or the ``export/`` artifacts of an MLflow model's run."""
    if runtime == "keras":
        from crackcls.tracking.registry import load_model  # TensorFlow is imported only on this path

        return load_model(spec)[0]
    if paths.is_model_uri(spec):
        from crackcls.tracking import store

        with tempfile.TemporaryDirectory() as tmp:  # the session and companions are read into memory
            return portable.load(store.download_run_folder(spec, "export", Path(tmp)))
    path = paths.resolve(spec)
    if path.suffix == ".keras":
        folder = portable.export_of(path)
        if folder is None:
            raise CrackclsError(
                f"no ONNX export made from {spec} (models/export/ is missing or was made from another model file): "
                f"run `crackcls export --model {spec}`"
            )
        path = folder
    return portable.load(path)


def model_label(spec: str, runtime: str) -> str:
    """How the summary names the model: the spec, and the runtime when it is not Keras."""
    return spec if runtime == "keras" else f"{spec} (ONNX Runtime)"


def score_with(model, files: Sequence[Path], batch_size: int, progress_update) -> Scores:  # noqa: ANN001
    if portable.is_portable(model):
        return portable.score_files(model, files, batch_size, base=Path.cwd(), progress=progress_update)
    from crackcls.model.inference import score_files

    return score_files(model, files, batch_size, base=Path.cwd(), progress=progress_update)


def run(
    inputs: Sequence[str],
    model_spec: str | None = None,
    threshold: float | None = None,
    batch_size: int | None = None,
    explain_dir: str | os.PathLike[str] | None = None,
    runtime: str | None = None,
) -> PredictResult:
    config = _config()
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise CrackclsError(f"--threshold must be between 0 and 1, got {threshold:g}")
    batch_size = checked_batch_size(config, batch_size or BATCH_SIZE)
    files = expand_inputs(inputs)
    spec = model_spec or champion_spec(config)
    runtime = runtime_for(spec, runtime, explain=explain_dir is not None)
    if runtime == "onnx" and explain_dir is not None:
        raise CrackclsError("--explain needs the Keras model (Grad-CAM reads its gradients): drop --runtime onnx")
    model = load_for(spec, runtime)
    threshold = companions.threshold(model, threshold, config.evaluate.threshold)

    with progress.bar(len(files), "predict", min_total=batch_size) as bar:
        scores = score_with(model, files, batch_size, bar.update)
    result = PredictResult(model_label(spec, runtime), [])
    familiar = scores.familiarity if scores.familiarity is not None else [None] * len(files)
    for path, probability, reason, score in zip(files, scores.probabilities, scores.reasons, familiar):
        if reason is not None:
            result.skipped.add(path, reason)
            continue
        probability = float(probability)
        warning = photo_warning(path, config.scan.tile)
        prediction = Prediction(str(path), label_for(probability, threshold), probability, threshold, warning=warning)
        if score is not None:
            prediction.familiarity, prediction.unfamiliar = float(score), bool(score > 1.0)
        result.predictions.append(prediction)
    result.shift = set_shift(model, scores.familiarity, scores.probabilities >= threshold)
    if explain_dir is not None and result.predictions:
        _explain(model, result, Path(explain_dir))
    return result


# An image more than this many training tiles wide and high is a whole photo: squashed to the
# model's input, a crack in it shrinks to a few pixels, so its label means little.
PHOTO_TILES = 2


def photo_warning(path: Path, tile: int) -> str | None:
    """Why this image's label is unreliable (a whole photo), or None for a patch-sized image."""
    size = header_size(path)
    if size is None or min(size) <= PHOTO_TILES * tile:
        return None
    return f"whole photo ({size[0]}x{size[1]}): squashed to one patch, use `crackcls scan`"


def _explain(model, result: PredictResult, out_dir: Path) -> None:  # noqa: ANN001 - a keras.Model
    """One Grad-CAM overlay per predicted image, named after it (``name-2`` and so on on collisions)."""
    from crackcls.photos import gradcam

    cam = gradcam.GradCam(model)
    by_path = {Path(p.path): p for p in result.predictions}
    targets = overlay_names(list(by_path), out_dir)
    skips = SkipReport()
    with progress.bar(len(by_path), "Grad-CAM", min_total=gradcam.BATCH_SIZE) as bar:
        for path, rgb in cam.explain_files(list(by_path), skips):
            by_path[path].explanation = str(gradcam.save_png(rgb, targets[path]))
            bar.update(1)
    for path, reason in skips.skipped:  # changed on disk since it was scored
        result.skipped.add(path, f"explanation: {reason}")


def overlay_names(files: Sequence[Path], out_dir: Path, suffix: str = "_gradcam.png") -> dict[Path, Path]:
    """``<stem><suffix>`` per file, unique within this run."""
    used: set[str] = set()
    names: dict[Path, Path] = {}
    for path in files:
        stem, n = path.stem, 1
        name = f"{stem}{suffix}"
        while name.lower() in used:  # case-insensitive, for macOS and Windows file systems
            n += 1
            name = f"{stem}-{n}{suffix}"
        used.add(name.lower())
        names[path] = out_dir / name
    return names


def render(result: PredictResult, fmt: str) -> str:
    """The predictions as an aligned table, a JSON list of rows, or CSV."""
    columns = list(COLUMNS)
    if any(p.familiarity is not None for p in result.predictions):
        columns += FAMILIARITY_COLUMNS
    columns += [name for name in ("explanation", "warning") if any(getattr(p, name) for p in result.predictions)]
    rows = [{key: asdict(p)[key] for key in columns} for p in result.predictions]
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(
            {**row, "crack_probability": f"{row['crack_probability']:.6f}",
             **({"familiarity": f"{row['familiarity']:.4f}"} if row.get("familiarity") is not None else {})}
            for row in rows
        )
        return buffer.getvalue()
    if fmt == "table":
        return _table(rows, columns)
    raise CrackclsError(f"unknown format '{fmt}'; use one of {', '.join(FORMATS)}")


def _table(rows: list[dict], columns: list[str]) -> str:
    cells = [
        [f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value)) for value in row.values()]
        for row in rows
    ]
    widths = [max([len(name), *(len(line[i]) for line in cells)]) for i, name in enumerate(columns)]
    numeric = {"crack_probability", "threshold", "familiarity"}

    def line(values: list[str]) -> str:
        return "  ".join(
            value.rjust(width) if name in numeric else value.ljust(width)
            for name, value, width in zip(columns, values, widths)
        ).rstrip()

    return "\n".join([line(list(columns)), *(line(values) for values in cells)]) + "\n"


def summary(result: PredictResult) -> str:
    """The closing lines for stderr: counts, and every skipped file with its reason."""
    cracks = sum(p.label == CRACK for p in result.predictions)
    lines = [
        f"{len(result.predictions)} images predicted with {result.model}: "
        f"{cracks} crack, {len(result.predictions) - cracks} no crack"
    ]
    unfamiliar = sum(bool(p.unfamiliar) for p in result.predictions)
    if unfamiliar:
        lines.append(f"{unfamiliar} images look unlike the training images (unfamiliar): do not trust their labels")
    if result.shift is not None and len(result.predictions) > 1:  # one image is not a set
        lines.append(result.shift.line())
    photos = sum(p.warning is not None for p in result.predictions)
    if photos:
        lines.append(
            f"{photos} whole photos (more than {PHOTO_TILES}x a training tile on both sides) were squashed to one patch: "
            f"their labels are unreliable; `crackcls scan` cuts them into tiles"
        )
    lines.extend(result.skipped.summary_lines())
    return "\n".join(lines)


def output_format(fmt: str | None, output: str | os.PathLike[str] | None) -> str:
    """The format asked for; else the one ``--output``'s suffix names (.json, .csv); else a table."""
    if fmt:
        return fmt
    suffix = Path(output).suffix.lower().lstrip(".") if output else ""
    return suffix if suffix in ("json", "csv") else "table"


def write(result: PredictResult, fmt: str | None = None, output: str | os.PathLike[str] | None = None) -> str:
    """Render the predictions; to ``output`` (atomically) when given, else return the text for stdout."""
    text = render(result, output_format(fmt, output))
    if output:
        atomic.write_text(output, text)
        return ""
    return text
