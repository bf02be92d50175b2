"""Dedupe, stratification and no overlap between splits."""

from __future__ import annotations

from collections import Counter

import pytest

from crackcls.data.splitting import Item, cap_per_class, collapse_duplicates, stratified_split


def make_items(n_pos: int, n_neg: int, prefix: str = "") -> list[Item]:
    items = [Item(f"{prefix}Positive/{i:05d}.jpg", 1, f"p{prefix}{i}") for i in range(n_pos)]
    items += [Item(f"{prefix}Negative/{i:05d}.jpg", 0, f"n{prefix}{i}") for i in range(n_neg)]
    return items


def test_exact_duplicates_collapse_to_one_item():
    items = make_items(10, 10)
    copies = [Item("Positive/copy_a.jpg", 1, "p3"), Item("Positive/copy_b.jpg", 1, "p3"), Item("Negative/dup.jpg", 0, "n0")]
    kept, report = collapse_duplicates(items + copies)
    assert len(kept) == 20
    assert report.duplicates_removed == 3
    assert len({it.sha256 for it in kept}) == len(kept)
    # the kept copy is the first path in sorted order, independent of input order
    kept_again, _ = collapse_duplicates(list(reversed(items + copies)))
    assert kept == kept_again


def test_one_image_under_both_labels_is_dropped_entirely():
    items = make_items(5, 5) + [Item("Negative/looks_like_p1.jpg", 0, "p1")]
    kept, report = collapse_duplicates(items)
    assert "p1" not in {it.sha256 for it in kept}
    assert report.label_conflicts == 2
    assert sorted(report.conflict_paths) == ["Negative/looks_like_p1.jpg", "Positive/00001.jpg"]


@pytest.mark.parametrize(("train", "val", "test"), [(0.70, 0.15, 0.15), (0.6, 0.2, 0.2), (0.7, 0.0, 0.3)])
def test_split_is_stratified_disjoint_and_complete(train, val, test):
    items = make_items(600, 400)
    parts = stratified_split(items, train, val, test, seed=7)
    all_paths = [it.path for part in parts.values() for it in part]
    assert len(all_paths) == len(set(all_paths)) == 1000
    for name, ratio in (("train", train), ("val", val), ("test", test)):
        part = parts[name]
        assert len(part) == pytest.approx(1000 * ratio, abs=2)
        if part:
            positives = Counter(it.label for it in part)[1] / len(part)
            assert positives == pytest.approx(0.6, abs=0.01)


def test_split_is_reproducible_and_seed_dependent():
    items = make_items(100, 100)
    first = stratified_split(items, 0.7, 0.15, 0.15, seed=1)
    again = stratified_split(list(reversed(items)), 0.7, 0.15, 0.15, seed=1)
    other = stratified_split(items, 0.7, 0.15, 0.15, seed=2)
    assert first == again
    assert {it.path for it in first["test"]} != {it.path for it in other["test"]}


def test_split_refuses_a_single_class():
    with pytest.raises(ValueError, match="both classes"):
        stratified_split(make_items(10, 0), 0.7, 0.15, 0.15, seed=0)


def test_cap_per_class_is_seeded_and_balanced():
    items = make_items(50, 20)
    capped = cap_per_class(items, 15, seed=3)
    assert Counter(it.label for it in capped) == {1: 15, 0: 15}
    assert capped == cap_per_class(items, 15, seed=3)
    assert cap_per_class(items, None, seed=3) == items
