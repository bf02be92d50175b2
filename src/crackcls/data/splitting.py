"""Pure split logic: collapse exact duplicates, then a stratified, seeded split.

Exact duplicates are collapsed *before* splitting; otherwise copies of one photo
land in train and test and inflate every test metric (the upstream set holds
1,598 extra copies).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from sklearn.model_selection import train_test_split


@dataclass(frozen=True)
class Item:
    path: str
    label: int
    sha256: str


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


def cap_per_class(items: list[Item], max_per_class: int | None, seed: int) -> list[Item]:
    """Subsample each class to at most ``max_per_class`` items, reproducibly."""
    if max_per_class is None:
        return items
    rng = random.Random(seed)
    by_label: dict[int, list[Item]] = defaultdict(list)
    for item in items:
        by_label[item.label].append(item)
    capped: list[Item] = []
    for label in sorted(by_label):
        group = by_label[label]
        capped.extend(group if len(group) <= max_per_class else rng.sample(group, max_per_class))
    return sorted(capped, key=lambda it: it.path)


def stratified_split(
    items: list[Item], train: float, val: float, test: float, seed: int
) -> dict[str, list[Item]]:
    """Split into train/val/test with class proportions preserved in each part.

    Items are sorted first, so the result depends on the seed and the set of
    images, never on the order a file system happened to list them in.
    """
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
