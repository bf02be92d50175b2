"""A model card per registered version: what it was trained on, how good it is, and where not to use it.

Rendered as Markdown into the version's description in the MLflow registry (the UI
shows it on the version's page) and logged as ``model_card.md`` beside the model.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path

from crackcls.data import manifest
from crackcls.trust.intervals import format_interval
from crackcls.trust.metrics import SOURCE_HEADLINE

CARD_FILE = "model_card.md"
INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc")

INTENDED_USE = (
    "Screening close-up photos of concrete surfaces (tiles of about 227 to 256 px, as in the "
    "Mendeley and SDNET2018 sets) for cracks, with a person reviewing what it flags. "
    "Not a replacement for a structural inspection."
)
KNOWN_LIMITS = (
    "Only as good on a kind of surface as the per-source table says; on surfaces that no "
    "training source holds (brick, painted walls, another camera) recall can collapse without "
    "warning in the probability itself. Trust `unfamiliar` answers least: their features lie "
    "outside what the model saw in training.",
    "The intervals are 95% intervals over the test images; they say nothing about images "
    "unlike the test split.",
    "Hairline cracks thinner than a pixel at the input size, stains, joints and shadows "
    "are the usual mistakes: see the error gallery in the run's artifacts.",
)


def data_version(split_dir: Path) -> dict[str, str]:
    """md5 of each split manifest, as DVC records file hashes: the exact images used."""
    found = {}
    for split in manifest.SPLITS:
        path = manifest.manifest_path(split, split_dir)
        if path.is_file():
            found[split] = hashlib.md5(path.read_bytes()).hexdigest()
    return found


def _value(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def shift_cell(metrics: Mapping[str, object]) -> str:
    """The set-level shift test in a few words (:mod:`crackcls.trust.shift`)."""
    p_value, ratio = metrics.get("shift_p_value"), metrics.get("shift_median_ratio")
    if p_value is None:
        return "not tested" if metrics.get("shift_n") is None else "too few images"
    verdict = "SHIFT" if metrics.get("shift") else "no shift"
    return f"{verdict} (p = {p_value:.2g}, median familiarity {ratio:.1f}× validation)"


def _metric_rows(metrics: Mapping[str, object]) -> list[str]:
    rows = ["| metric | value | 95% interval |", "|---|---|---|"]
    for name in INTERVAL_METRICS:
        if name in metrics:
            rows.append(f"| {name} | {_value(metrics[name])} | {format_interval(metrics, name) or 'n/a'} |")  # type: ignore[arg-type]
    return rows


PHOTOS_FROM = {
    "validation tiles": "photos drawn from validation tiles (the validation split holds no whole-grid parent photos)",
    "whole-grid parents and validation tiles": "validation photos: real ones rebuilt from the validation split's "
    "whole-grid parents, beside ones drawn from validation tiles",
}


def _photo_rule_lines(rule: Mapping[str, object]) -> list[str]:
    """What ``scan`` decides photos with, and what the photos it was fitted on were."""
    fit: Mapping[str, object] = rule.get("validation") or {}  # type: ignore[assignment]
    margin = rule.get("background_margin")
    lines = [
        f"- tile threshold {_value(rule.get('tile_threshold'))}; a region counts with at least "
        f"{_value(rule.get('min_region_tiles'))} tiles or a peak of {_value(rule.get('peak_threshold'))}"
        + (f"; a tile must also reach its photo's median plus {_value(margin)}" if margin is not None else ""),
    ]
    if fit:
        source = PHOTOS_FROM.get(str(fit.get("photos_from")), "validation photos")
        lines += [
            f"- fitted on {_value(fit.get('photos'))} {source}",
            f"- on them: photo recall {_value(fit.get('photo_recall'))} (target {_value(fit.get('target_photo_recall'))}"
            f"{'' if fit.get('reached_target', True) else ', not reached'}), tile F1 {_value(fit.get('tile_f1'))}, "
            f"{_value(fit.get('fp_tiles_per_photo'))} false crack tiles per photo",
        ]
        real: Mapping[str, object] = fit.get("whole_grid") or {}  # type: ignore[assignment]
        if real:
            lines.append(
                f"- on the {_value(real.get('photos'))} real validation photos alone: photo recall "
                f"{_value(real.get('photo_recall'))}, tile F1 {_value(real.get('tile_f1'))}, "
                f"{_value(real.get('fp_tiles_per_photo'))} false crack tiles per photo"
            )
    return lines


def render(
    name: str,
    version: str,
    params: Mapping[str, object],
    data: Mapping[str, str],
    test: Mapping[str, object],
    decision: Mapping[str, object],
    extra_sets: Mapping[str, Mapping[str, object]],
    sources: Mapping[str, Mapping[str, object]] | None = None,
    photo_rule: Mapping[str, object] | None = None,
) -> str:
    """The card as Markdown. ``decision``: threshold, target_recall, temperature, ece, ece_uncalibrated;
    ``sources``: the test split's metrics per source; ``photo_rule``: the stored whole-photo rule."""
    lines = [f"# {name} version {version}", "", "## Intended use", "", INTENDED_USE, ""]
    lines += ["## Data", "", "Split manifests (md5, as in `dvc.lock`):", ""]
    lines += [f"- `{split}.csv`: `{digest}`" for split, digest in data.items()] or ["- unknown"]
    lines += ["", "## Training parameters", "", "| parameter | value |", "|---|---|"]
    lines += [f"| `{key}` | `{value}` |" for key, value in sorted(params.items())]
    lines += ["", f"## Test split ({_value(test.get('n'))} images)", ""]
    lines += _metric_rows(test)
    if sources:
        lines += ["", "### Per source", "", "| source | n | " + " | ".join(SOURCE_HEADLINE) + " |"]
        lines.append("|---|---|" + "---|" * len(SOURCE_HEADLINE))
        for source, m in sources.items():
            cells = [f"{_value(m.get(key))} {format_interval(m, key)}".rstrip() for key in SOURCE_HEADLINE]  # type: ignore[arg-type]
            lines.append(f"| {source} | {_value(m.get('n'))} | " + " | ".join(cells) + " |")
    target = decision.get("target_recall")
    lines += [
        "",
        "## Decision threshold and calibration",
        "",
        f"- threshold: {_value(decision.get('threshold'))}"
        + (f", chosen on the validation split for a recall of {target}" if target is not None else " (fixed)"),
        f"- temperature: {_value(decision.get('temperature'))} (fitted on the validation split, folded into the model)",
        f"- expected calibration error on the test split: {_value(decision.get('ece_uncalibrated'))} before, "
        f"{_value(decision.get('ece'))} after",
        f"- test images flagged unfamiliar: {_value(test.get('unfamiliar'))} "
        f"({_value(test.get('unfamiliar_fraction'))})",
        f"- the test split as a set against the validation images: {shift_cell(test)}",
    ]
    if photo_rule:
        lines += ["", "## Whole-photo rule", ""] + _photo_rule_lines(photo_rule)
    if extra_sets:
        lines += ["", "## Other image sets", ""]
        lines += [
            "| set | n | recall | 95% interval | accuracy | familiarity AUROC vs test | flagged unfamiliar | "
            "accuracy flagged / unflagged | set shift test |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for set_name, m in extra_sets.items():
            lines.append(
                f"| {set_name} | {_value(m.get('n'))} | {_value(m.get('recall'))} | {format_interval(m, 'recall') or 'n/a'} "  # type: ignore[arg-type]
                f"| {_value(m.get('accuracy'))} | {_value(m.get('familiarity_auroc'))} | {_value(m.get('unfamiliar'))} "
                f"| {_value(m.get('accuracy_unfamiliar'))} / {_value(m.get('accuracy_familiar'))} | {shift_cell(m)} |"
            )
    lines += ["", "## Known limits", ""] + [f"- {limit}" for limit in KNOWN_LIMITS]
    return "\n".join(lines) + "\n"
