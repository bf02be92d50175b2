"""How unlike the training images a photo is: nearest-neighbour distances on the model's own features.

A model trained on one surface answers confidently on any other; the sign that a photo
is out of its depth is that its features lie far from every training image's. Near
shifts (the same material, another camera, distance or lighting) show in the early
blocks, which see texture and tone, long before the last pooled features, which the
classifier has taught to ignore everything but cracks. So the score looks at every
block of a ``compact_cnn`` backbone, at three *levels* per block and for the photo as
a whole:

- the direction of the block's mean activation (which channels fire),
- the direction of its spread (the standard deviation of each channel over the image),
- the overall strength of each block (how much fires at all: dark, washed-out photos).

Each level's distance is the cosine distance to the ``K``-th nearest of a bounded bank of
training images' features (Euclidean for the strength), divided by that level's 99th
percentile on the validation images. A photo's score is the largest of these, divided
once more by the 99th percentile of that maximum on the validation images, so a score
above 1 (``unfamiliar``) is stranger than 99% of held-out images of the kind the model
was trained on. Other backbones give their pooled features (layer ``pool``) as one block.

A model trained on several sources keeps one bank and one set of thresholds per source,
and a photo's score is the smallest over the sources: a deck tile is judged against the
decks the model knows, not against a mix. The validation images' scores travel too, with
their classes, so a whole set of images can be tested against them
(:mod:`crackcls.trust.shift`).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crackcls.util import atomic
from crackcls.util.errors import CrackclsError

FLAG_QUANTILE = 0.99
POOL_LAYER = "pool"  # the GlobalAveragePooling output in crackcls.model.build
# compact_cnn's blocks end in a ReLU, then (all but a strided stem) a max-pooling: the block's output is the last
BLOCK_OUTPUT = re.compile(r"(block\d+)_(relu|pool)$")
FORMAT_VERSION = 2
K = 10  # the neighbour whose distance counts
BANK_ROWS = 8192  # training images kept in the banks, all sources together (a few MB, a cheap matrix product)
MIN_SOURCE_VAL = 50  # a source with fewer validation images shares the pooled bank and thresholds
POOLED = "all"
_EPS = 1e-12


@dataclass(frozen=True)
class Layout:
    """How a raw feature vector splits: one width per block, and whether spreads follow the means."""

    dims: tuple[int, ...]
    spread: bool  # True: [means of every block, mean squares of every block]; False: means only

    @property
    def width(self) -> int:
        return sum(self.dims) * (2 if self.spread else 1)


def levels(raw: np.ndarray, layout: Layout) -> list[np.ndarray]:
    """Raw features → the compared vectors: per block the mean's and the spread's direction, then the strengths."""
    raw = np.asarray(raw, np.float32)
    if raw.ndim != 2 or raw.shape[1] != layout.width:
        raise CrackclsError(f"familiarity features have shape {raw.shape}, expected (n, {layout.width})")
    cuts = np.cumsum(layout.dims)[:-1]
    means = np.split(raw[:, : sum(layout.dims)], cuts, axis=1)
    roots = [np.sign(m) * np.sqrt(np.abs(m)) for m in means]  # power normalisation, as for pooled descriptors
    found = [_unit(r) for r in roots]
    if layout.spread:
        squares = np.split(raw[:, sum(layout.dims) :], cuts, axis=1)
        found += [_unit(np.sqrt(np.sqrt(np.maximum(s - m * m, 0.0)))) for m, s in zip(means, squares)]
    found.append(np.stack([np.log(np.linalg.norm(r, axis=1) + 1e-6) for r in roots], 1))
    return found


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + _EPS)


def _kth_distance(x: np.ndarray, bank: np.ndarray, k: int, cosine: bool, chunk: int = 1024) -> np.ndarray:
    """Distance from each row of ``x`` to its ``k``-th nearest bank row (in chunks: bounded memory)."""
    k = min(k, len(bank))
    if len(x) > chunk:
        return np.concatenate([_kth_distance(x[i : i + chunk], bank, k, cosine) for i in range(0, len(x), chunk)])
    if cosine:
        similarity = x @ bank.T
        return 1.0 - np.partition(similarity, len(bank) - k, axis=1)[:, len(bank) - k]
    squared = (x * x).sum(1)[:, None] - 2.0 * x @ bank.T + (bank * bank).sum(1)[None, :]
    return np.sqrt(np.maximum(np.partition(squared, k - 1, axis=1)[:, k - 1], 0.0))


@dataclass(frozen=True)
class SourceBank:
    """One source's training features (per level) and the validation thresholds that scale them."""

    name: str
    bank: list[np.ndarray]  # per level, (rows, width) float32
    level_thresholds: np.ndarray  # per level: the validation images' 99th-percentile distance
    threshold: float  # the validation images' 99th percentile of the largest scaled level distance
    val_scores: np.ndarray  # this source's validation images' final scores (the shift test's reference)
    val_labels: np.ndarray  # their classes (1: crack)

    def raw_score(self, compared: list[np.ndarray], k: int) -> np.ndarray:
        scaled = [
            _kth_distance(x, bank, k, cosine=i < len(compared) - 1) / t
            for i, (x, bank, t) in enumerate(zip(compared, self.bank, self.level_thresholds))
        ]
        return np.max(scaled, axis=0) / self.threshold


@dataclass(frozen=True)
class Reference:
    """What the model knows, per source: the banks, their thresholds and the validation scores."""

    layout: Layout
    sources: list[SourceBank]
    k: int = K
    n_train: int = 0
    n_val: dict[str, int] = field(default_factory=dict)

    def score(self, features: np.ndarray) -> np.ndarray:
        """In units of the flag threshold: above 1 is unfamiliar to every source the model knows."""
        features = np.asarray(features)
        if len(features) == 0:
            return np.zeros(0)
        compared = levels(features, self.layout)
        return np.min([source.raw_score(compared, self.k) for source in self.sources], axis=0).astype(np.float64)

    def unfamiliar(self, features: np.ndarray) -> np.ndarray:
        return self.score(features) > 1.0

    def validation_scores(self) -> dict[str, dict[int, np.ndarray]]:
        """Per known source and class (1: crack), its validation images' scores: what a set is tested against."""
        return {
            source.name: {int(c): source.val_scores[source.val_labels == c] for c in np.unique(source.val_labels)}
            for source in self.sources
        }

    @property
    def bank_bytes(self) -> int:
        return sum(b.size * 2 for s in self.sources for b in s.bank)  # stored as float16


def feature_model(model):  # noqa: ANN001, ANN201 - keras.Model in and out
    """``images → (crack probability, familiarity features)`` in one forward pass, or None.

    A ``compact_cnn`` gives each block's mean activation and mean square activation; other
    backbones their ``pool`` layer. None when the model has neither.
    """
    import keras

    stack = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    nested = [i for i, layer in enumerate(stack) if isinstance(layer, keras.Model) and not isinstance(layer, keras.Sequential)]
    taps = []
    if len(nested) == 1:
        backbone = stack[nested[0]]
        taps = [layer.output for layer in block_outputs(backbone)]
    if not taps:
        if not any(layer.name == POOL_LAYER for layer in model.layers):
            return None
        return keras.Model(model.inputs, [model.outputs[0], model.get_layer(POOL_LAYER).output])
    at = nested[0]
    tapped = keras.Model(backbone.inputs, [backbone.outputs[0], *taps])
    inputs = keras.Input(model.input_shape[1:])
    x = inputs
    for layer in stack[:at]:  # augmentation (identity at inference) and preprocessing
        x = layer(x, training=False)
    out, *maps = tapped(x, training=False)
    for layer in stack[at + 1 :]:  # pooling, dropout, the classifier
        out = layer(out, training=False)
    maps = [keras.ops.cast(m, "float32") for m in maps]
    means = [keras.ops.mean(m, axis=(1, 2)) for m in maps]
    squares = [keras.ops.mean(keras.ops.square(m), axis=(1, 2)) for m in maps]
    return keras.Model(inputs, [out, keras.ops.concatenate([*means, *squares], axis=-1)])


def block_outputs(backbone):  # noqa: ANN001, ANN201 - a keras.Model in, its layers out
    """The last layer of each ``compact_cnn`` block: the pooled maps (4x fewer values than the ReLU's)."""
    last: dict[str, object] = {}
    for layer in backbone.layers:
        if match := BLOCK_OUTPUT.match(layer.name):
            last[match.group(1)] = layer
    return list(last.values())


def layout_of(model) -> Layout | None:  # noqa: ANN001 - a keras.Model
    """The layout of :func:`feature_model`'s features for ``model``."""
    import keras

    stack = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    nested = [layer for layer in stack if isinstance(layer, keras.Model) and not isinstance(layer, keras.Sequential)]
    if len(nested) == 1:
        dims = [int(layer.output.shape[-1]) for layer in block_outputs(nested[0])]
        if dims:
            return Layout(tuple(dims), spread=True)
    if any(layer.name == POOL_LAYER for layer in model.layers):
        return Layout((int(model.get_layer(POOL_LAYER).output.shape[-1]),), spread=False)
    return None


def fit(
    train_features: np.ndarray,
    val_features: np.ndarray,
    layout: Layout,
    train_sources: Sequence[str] | None = None,
    val_sources: Sequence[str] | None = None,
    val_labels: Sequence[int] | None = None,
    *,
    quantile: float = FLAG_QUANTILE,
    bank_rows: int = BANK_ROWS,
    seed: int = 0,
) -> Reference:
    """Banks from training images; every threshold from validation images (never test), per source.

    ``val_labels`` (1: crack) travel with the validation scores, so that a set of images can be
    compared class by class (:mod:`crackcls.trust.shift`); without them every image counts as one class.
    """
    train = np.asarray(train_features, np.float32)
    val = np.asarray(val_features, np.float32)
    if train.ndim != 2 or len(train) < 2:
        raise CrackclsError("the familiarity reference needs the features of at least 2 training images")
    train_names = np.asarray(train_sources if train_sources is not None else [""] * len(train), object)
    if len(val) == 0:  # no validation split: the training images set the thresholds (looser)
        val, val_names, val_labels = train, train_names, None
    else:
        val_names = np.asarray(val_sources if val_sources is not None else [""] * len(val), object)
    labels = np.zeros(len(val), np.int8) if val_labels is None else np.asarray(val_labels, np.int8)
    groups = _groups(train_names, val_names)
    rng = np.random.default_rng(seed)
    per_group = max(K, bank_rows // len(groups))
    train_levels, val_levels = levels(train, layout), levels(val, layout)
    banks = []
    for name, (train_mask, val_mask) in groups.items():
        rows = np.flatnonzero(train_mask)
        if len(rows) > per_group:
            rows = np.sort(rng.choice(rows, per_group, replace=False))
        bank = [level[rows].astype(np.float16).astype(np.float32) for level in train_levels]  # as stored
        held_out = [level[val_mask] for level in val_levels]
        distances = [_kth_distance(x, b, K, cosine=i < len(bank) - 1) for i, (x, b) in enumerate(zip(held_out, bank))]
        level_thresholds = np.array([_positive(np.quantile(d, quantile)) for d in distances])
        largest = np.max([d / t for d, t in zip(distances, level_thresholds)], axis=0)
        banks.append(
            SourceBank(name, bank, level_thresholds, _positive(np.quantile(largest, quantile)), np.zeros(0), np.zeros(0))
        )
    reference = Reference(layout, banks, K, len(train))
    scores = reference.score(val)
    sources = [
        SourceBank(b.name, b.bank, b.level_thresholds, b.threshold, scores[mask].astype(np.float32), labels[mask])
        for b, (_, mask) in zip(banks, groups.values())
    ]
    return Reference(layout, sources, K, len(train), {b.name: int(m.sum()) for b, (_, m) in zip(banks, groups.values())})


def _positive(value: float) -> float:
    return max(float(value), 1e-9)


def _groups(train_names: np.ndarray, val_names: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(train mask, validation mask) per group: each source with enough validation images on its own, and,
    when some source has too few (a handful of field images), every image together as ``all``."""
    everything = (np.ones(len(train_names), bool), np.ones(len(val_names), bool))
    own = [
        name
        for name in sorted(set(train_names) & set(val_names))
        if (val_names == name).sum() >= MIN_SOURCE_VAL and (train_names == name).sum() >= 2
    ]
    if len(own) <= 1:
        distinct = set(train_names)
        return {(str(next(iter(distinct))) or POOLED) if len(distinct) == 1 else POOLED: everything}
    groups = {str(name): (train_names == name, val_names == name) for name in own}
    if (~np.isin(train_names, own)).sum() >= 2:
        groups[POOLED] = everything
    return groups


def path_for(model_file: str | os.PathLike[str]) -> Path:
    """``models/model.keras`` → ``models/model.familiarity.npz``."""
    model_file = Path(model_file)
    return model_file.with_name(f"{model_file.stem}.familiarity.npz")


def save(reference: Reference, target: str | os.PathLike[str]) -> Path:
    arrays: dict[str, np.ndarray] = {
        "version": np.array(FORMAT_VERSION),
        "k": np.array(reference.k),
        "dims": np.array(reference.layout.dims),
        "spread": np.array(reference.layout.spread),
        "n_train": np.array(reference.n_train),
        "names": np.array([s.name for s in reference.sources], dtype=str),
        "n_val": np.array([reference.n_val.get(s.name, 0) for s in reference.sources]),
    }
    for i, source in enumerate(reference.sources):
        arrays[f"s{i}_level_thresholds"] = source.level_thresholds
        arrays[f"s{i}_threshold"] = np.array(source.threshold)
        arrays[f"s{i}_val_scores"] = source.val_scores.astype(np.float32)
        arrays[f"s{i}_val_labels"] = source.val_labels.astype(np.int8)
        for j, bank in enumerate(source.bank):
            arrays[f"s{i}_bank{j}"] = bank.astype(np.float16)
    with atomic.atomic_path(target, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    return Path(target)


def load(source: str | os.PathLike[str]) -> Reference | None:
    """The stored reference; None (with a warning) for a file of an older format."""
    try:
        with np.load(source, allow_pickle=False) as data:
            version = int(data["version"])
            if version < FORMAT_VERSION:
                warnings.warn(
                    f"{source}: familiarity format {version} (a Mahalanobis density) is no longer read; "
                    "retrain the model to get familiarity scores",
                    stacklevel=2,
                )
                return None
            if version != FORMAT_VERSION:
                raise CrackclsError(f"{source}: familiarity format {version}, expected {FORMAT_VERSION}")
            layout = Layout(tuple(int(d) for d in data["dims"]), bool(data["spread"]))
            n_levels = len(layout.dims) * (2 if layout.spread else 1) + 1
            sources = [
                SourceBank(
                    str(name),
                    [data[f"s{i}_bank{j}"].astype(np.float32) for j in range(n_levels)],
                    data[f"s{i}_level_thresholds"].astype(np.float64),
                    float(data[f"s{i}_threshold"]),
                    data[f"s{i}_val_scores"].astype(np.float64),
                    data[f"s{i}_val_labels"].astype(np.int8),
                )
                for i, name in enumerate(data["names"])
            ]
            n_val = {str(n): int(v) for n, v in zip(data["names"], data["n_val"])}
            return Reference(layout, sources, int(data["k"]), int(data["n_train"]), n_val)
    except (OSError, KeyError, ValueError) as exc:
        raise CrackclsError(f"cannot read the familiarity reference {source}: {exc}") from None


def separation(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """ROC AUC of the score telling ``out`` images (positives) from ``in`` images."""
    from sklearn.metrics import roc_auc_score

    if len(in_scores) == 0 or len(out_scores) == 0:
        return float("nan")
    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return float(roc_auc_score(labels, np.r_[in_scores, out_scores]))


def flagged_report(scores: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """How many images are flagged, and the accuracy on flagged and unflagged ones."""
    flagged = np.asarray(scores) > 1.0
    correct = np.asarray(correct, bool)

    def accuracy(mask: np.ndarray) -> float:
        return float(correct[mask].mean()) if mask.any() else float("nan")

    return {
        "unfamiliar": int(flagged.sum()),
        "unfamiliar_fraction": float(flagged.mean()) if flagged.size else float("nan"),
        "accuracy_unfamiliar": accuracy(flagged),
        "accuracy_familiar": accuracy(~flagged),
    }
