"""Pure split logic: collapse exact duplicates, then a seeded split stratified by source and label.

Exact duplicates are collapsed *before* splitting, across sources; otherwise copies of
one photo land in train and test and inflate every test metric (the Mendeley set holds
1,598 extra copies). Where a source names the parent photo each tile was cut from, all
tiles of one parent go to the same split: neighbouring tiles look alike, so a split by
tile would test on near-copies of training images.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from crackcls.data.grids import whole_grids


def parent_group(source: str, parent: str) -> str:
    """The key of the parent photo ``parent`` of ``source`` ("" for an image with no parent named)."""
    return f"{source}/{parent}" if parent else ""


@dataclass(frozen=True)
class Item:
    path: str
    label: int
    sha256: str
    source: str = ""  # the source it counts under in the split and the metrics (e.g. mendeley, decks)
    parent: str = ""  # the photo it was cut from, where the source names one

    @property
    def group(self) -> str:
        """What must stay in one split: the parent photo, or the image itself."""
        return parent_group(self.source, self.parent) or f"{self.source}//{self.path}"


@dataclass
class DedupeReport:
    duplicates_removed: int = 0
    label_conflicts: int = 0  # copies of one image filed under both classes: all dropped
    conflict_paths: list[str] = field(default_factory=list)


def collapse_duplicates(items: Iterable[Item]) -> tuple[list[Item], DedupeReport]:
    """Keep one item per content hash (the first path in sorted order)."""
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        groups[item.sha256].append(item)
    kept: list[Item] = []
    report = DedupeReport()
    for digest in sorted(groups):
        group = sorted(groups[digest], key=lambda it: it.path)
        if len({it.label for it in group}) > 1:
            report.label_conflicts += len(group)
            report.conflict_paths.extend(it.path for it in group)
            continue
        kept.append(group[0])
        report.duplicates_removed += len(group) - 1
    kept.sort(key=lambda it: it.path)
    return kept, report


def by_source(items: Iterable[Item]) -> dict[str, list[Item]]:
    grouped: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        grouped[item.source].append(item)
    return dict(sorted(grouped.items()))


def cap_per_class(items: list[Item], max_per_class: int | None, seed: int, caps: dict[str, int] | None = None) -> list[Item]:
    """Subsample each class of each source to at most its cap, reproducibly, whole parents at a time.

    ``caps`` overrides ``max_per_class`` for the sources it names. A source with parents
    loses whole parent photos, at random, until the class fits, so a capped set still
    splits by parent.
    """
    caps = caps or {}
    if max_per_class is None and not caps:
        return items
    rng = random.Random(seed)
    capped: list[Item] = []
    for source, members in by_source(items).items():
        cap = caps.get(source, max_per_class)
        for label in sorted({it.label for it in members}):
            group = [it for it in members if it.label == label]
            capped.extend(group if cap is None or len(group) <= cap else _sample_whole_groups(group, cap, rng))
    return sorted(capped, key=lambda it: it.path)


def _sample_whole_groups(items: list[Item], cap: int, rng: random.Random) -> list[Item]:
    if not any(it.parent for it in items):
        return rng.sample(items, cap)
    groups = _groups(items)
    order = sorted(groups)
    rng.shuffle(order)
    kept: list[Item] = []
    for key in order:
        if len(kept) + len(groups[key]) <= cap:
            kept.extend(groups[key])
    return kept


def _groups(items: Iterable[Item]) -> dict[str, list[Item]]:
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        groups[item.group].append(item)
    return groups


SPLIT_NAMES = ("train", "val", "test")


def split_by_source(
    items: list[Item], train: float, val: float, test: float, seed: int, val_whole_grids: int = 0
) -> dict[str, list[Item]]:
    """Each source split on its own, so every source has its share of train, val and test.

    A source whose images name their parent photo is split by parent
    (:func:`grouped_split`), with up to ``val_whole_grids`` of its whole-grid parents
    (:mod:`crackcls.data.grids`) placed in validation first, so that the photo rule is fitted
    on real photos; the others image by image (:func:`stratified_split`).
    """
    parts: dict[str, list[Item]] = {name: [] for name in SPLIT_NAMES}
    for members in by_source(items).values():
        # sklearn cannot stratify a class of one or two images; whole groups of one image each can
        too_few = min(sum(1 for it in members if it.label == label) for label in (0, 1)) < 3
        if too_few or any(it.parent for it in members):
            reserved = whole_grid_groups(members, val_whole_grids, seed) if val > 0 else []
            split = grouped_split(members, train, val, test, seed, reserve_val=reserved)
        else:
            split = stratified_split(members, train, val, test, seed)
        for name in SPLIT_NAMES:
            parts[name].extend(split[name])
    return {name: sorted(part, key=lambda it: it.path) for name, part in parts.items()}


def whole_grid_groups(items: list[Item], count: int | None = None, seed: int = 0) -> list[str]:
    """The groups of ``items`` that are whole parent grids: all of them, or ``count`` drawn at random (seeded)."""
    ordered = sorted(items, key=lambda it: it.path)
    groups = sorted(whole_grids([it.path for it in ordered], [parent_group(it.source, it.parent) for it in ordered]))
    if count is None:
        return groups
    return sorted(random.Random(seed).sample(groups, min(count, len(groups))))


def grouped_split(
    items: list[Item], train: float, val: float, test: float, seed: int, reserve_val: Iterable[str] = ()
) -> dict[str, list[Item]]:
    """Whole groups (parent photos) to train/val/test, near the ratios and each class's share.

    The groups named in ``reserve_val`` go to validation first. The others are visited
    largest first (ties in a seeded random order), and each goes to the split furthest below
    its target, counted per class: the greedy rule of iterative stratification, which keeps
    both the sizes and the class balance close on a few dozen parents, where a random
    assignment of groups would not.
    """
    rng = random.Random(seed)
    groups = _groups(sorted(items, key=lambda it: it.path))
    reserved = [key for key in sorted(set(reserve_val)) if key in groups]
    keys = sorted(set(groups) - set(reserved))
    rng.shuffle(keys)
    keys.sort(key=lambda k: len(groups[k]), reverse=True)  # stable: the shuffle breaks ties
    ratios = dict(zip(SPLIT_NAMES, (train, val, test)))
    totals = {label: sum(1 for it in items if it.label == label) for label in (0, 1)}
    filled = {name: {0: 0, 1: 0} for name in SPLIT_NAMES}
    parts: dict[str, list[Item]] = {name: [] for name in SPLIT_NAMES}
    for key in reserved + keys:
        members = groups[key]
        counts = {label: sum(1 for it in members if it.label == label) for label in (0, 1)}

        def deficit(name: str) -> float:
            return sum(ratios[name] * totals[lab] - filled[name][lab] for lab in (0, 1) if counts[lab])

        target = "val" if key in reserved else max((n for n in SPLIT_NAMES if ratios[n] > 0), key=lambda n: (deficit(n), ratios[n]))
        parts[target].extend(members)
        for label in (0, 1):
            filled[target][label] += counts[label]
    return {name: sorted(part, key=lambda it: it.path) for name, part in parts.items()}


def stratified_split(
    items: list[Item], train: float, val: float, test: float, seed: int
) -> dict[str, list[Item]]:
    """Split into train/val/test with class proportions preserved in each part.

    Items are sorted first, so the result depends on the seed and the set of
    images, never on the order a file system happened to list them in.
    """
    from sklearn.model_selection import train_test_split  # here: predict and scan import this module, not sklearn

    items = sorted(items, key=lambda it: it.path)
    labels = [it.label for it in items]
    if len(set(labels)) < 2:
        raise ValueError("the split needs images of both classes")
    rest, test_items = train_test_split(items, test_size=test, stratify=labels, random_state=seed)
    if val > 0:
        rest_labels = [it.label for it in rest]
        train_items, val_items = train_test_split(
            rest, test_size=val / (train + val), stratify=rest_labels, random_state=seed
        )
    else:
        train_items, val_items = rest, []
    return {
        "train": sorted(train_items, key=lambda it: it.path),
        "val": sorted(val_items, key=lambda it: it.path),
        "test": sorted(test_items, key=lambda it: it.path),
    }


def split_counts(parts: dict[str, list[Item]]) -> dict:
    """Images per split and class, overall and per source, and each source's parent photos: the split report."""

    def counts(items: list[Item]) -> dict[str, int]:
        labels = Counter(it.label for it in items)
        return {"total": len(items), "negative": labels.get(0, 0), "positive": labels.get(1, 0)}

    report: dict = {name: counts(part) for name, part in parts.items()}
    everything = [it for part in parts.values() for it in part]
    report["sources"] = {}
    for source, members in by_source(everything).items():
        entry: dict = {"total": len(members)}
        for name, part in parts.items():
            entry[name] = counts([it for it in part if it.source == source])
        if parents := {it.parent for it in members if it.parent}:
            entry["parents"] = len(parents)
            if whole := set(whole_grid_groups(members)):
                entry["whole_grid_parents"] = {
                    name: len({it.group for it in part if it.source == source and it.group in whole}) for name, part in parts.items()
                }
        report["sources"][source] = entry
    return report
