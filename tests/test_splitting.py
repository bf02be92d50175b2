"""Dedupe, stratification and no overlap between splits."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from crackcls.data.balance import balance_weights, weight_shares
from crackcls.data.splitting import (
    Item,
    cap_per_class,
    collapse_duplicates,
    grouped_split,
    split_by_source,
    stratified_split,
)


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


def tiles(source: str, parents: dict[str, tuple[int, int]]) -> list[Item]:
    """Tiles named like SDNET2018's: per parent, (cracked, uncracked) counts."""
    items = []
    for parent, (cracked, clean) in parents.items():
        for i in range(cracked + clean):
            label = int(i < cracked)
            items.append(Item(f"{source}/{parent}-{i}.jpg", label, f"{source}{parent}{i}", source, parent))
    return items


def test_no_parent_spans_two_splits_and_each_source_gets_its_share():
    rng = random.Random(0)
    decks = tiles("decks", {f"7{p:03d}": (rng.randint(0, 12), rng.randint(10, 40)) for p in range(40)})
    walls = tiles("walls", {f"8{p:03d}": (rng.randint(0, 20), rng.randint(5, 30)) for p in range(30)})
    mendeley = [Item(it.path, it.label, it.sha256, "mendeley") for it in make_items(300, 300, "m/")]
    parts = split_by_source(decks + walls + mendeley, 0.7, 0.15, 0.15, seed=5)

    owner: dict[tuple[str, str], str] = {}
    for name, part in parts.items():
        for item in part:
            if item.parent:
                assert owner.setdefault((item.source, item.parent), name) == name, f"{item.parent} in two splits"
    assert sum(len(p) for p in parts.values()) == len(decks) + len(walls) + len(mendeley)
    for source, members in (("decks", decks), ("walls", walls), ("mendeley", mendeley)):
        for name, ratio in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
            share = [it for it in parts[name] if it.source == source]
            assert len(share) == pytest.approx(ratio * len(members), rel=0.25), (source, name)
            for label in (0, 1):
                wanted = ratio * sum(1 for it in members if it.label == label)
                assert sum(1 for it in share if it.label == label) == pytest.approx(wanted, rel=0.35), (source, name, label)
    # Mendeley names no parents: split image by image, exactly as a single-source run does
    alone = stratified_split(mendeley, 0.7, 0.15, 0.15, seed=5)
    assert {n: [it for it in parts[n] if it.source == "mendeley"] for n in parts} == alone


def test_grouped_split_is_reproducible_and_seed_dependent():
    items = tiles("decks", {f"{p:03d}": (p % 5, 10) for p in range(30)})
    first = grouped_split(items, 0.7, 0.15, 0.15, seed=1)
    assert first == grouped_split(list(reversed(items)), 0.7, 0.15, 0.15, seed=1)
    other = grouped_split(items, 0.7, 0.15, 0.15, seed=2)
    assert {it.parent for it in first["test"]} != {it.parent for it in other["test"]}


def test_a_tiny_source_still_reaches_train():
    items = [Item("field/Positive/a.jpg", 1, "a", "field"), Item("field/Negative/b.jpg", 0, "b", "field")]
    parts = split_by_source(items, 0.7, 0.15, 0.15, seed=0)
    assert sum(len(p) for p in parts.values()) == 2 and parts["train"]


def test_duplicates_collapse_across_sources():
    mendeley = Item("raw/mendeley/Positive/a.jpg", 1, "same", "mendeley")
    copy = Item("raw/site/Positive/a_copy.jpg", 1, "same", "site")
    conflict = [Item("raw/decks/Positive/x.jpg", 1, "x", "decks", "7001"), Item("raw/walls/Negative/x.jpg", 0, "x", "walls", "8001")]
    kept, report = collapse_duplicates([mendeley, copy, *conflict])
    assert kept == [mendeley] and report.duplicates_removed == 1 and report.label_conflicts == 2


def test_cap_per_source_keeps_whole_parents():
    decks = tiles("decks", {f"{p:03d}": (0, 10) for p in range(20)})
    mendeley = [Item(it.path, it.label, it.sha256, "mendeley") for it in make_items(50, 50, "m/")]
    capped = cap_per_class(decks + mendeley, None, seed=1, caps={"decks": 55})
    kept_decks = [it for it in capped if it.source == "decks"]
    assert 45 <= len(kept_decks) <= 55
    by_parent = Counter(it.parent for it in kept_decks)
    assert set(by_parent.values()) == {10}  # every kept parent whole
    assert len([it for it in capped if it.source == "mendeley"]) == 100  # uncapped source untouched
    assert cap_per_class(decks + mendeley, 30, seed=1) == cap_per_class(decks + mendeley, 30, seed=1)


def test_balance_weights_even_out_sources_and_classes():
    decks = tiles("decks", {"a": (20, 180)})
    mendeley = [Item(it.path, it.label, it.sha256, "mendeley") for it in make_items(400, 400, "m/")]
    items = decks + mendeley
    weights = balance_weights(items, "source_class")
    assert weights.mean() == pytest.approx(1.0)
    shares = weight_shares(items, weights)
    assert shares == pytest.approx({"decks/negative": 0.25, "decks/positive": 0.25, "mendeley/negative": 0.25, "mendeley/positive": 0.25})
    by_class = weight_shares(items, balance_weights(items, "class"))
    assert by_class["decks/positive"] + by_class["mendeley/positive"] == pytest.approx(0.5)
    assert balance_weights(items, "none") is None


def test_split_stage_warns_when_a_source_has_too_few_parents_for_the_test_split(tmp_path, monkeypatch, capsys):
    import shutil

    import yaml
    from conftest import REPO_ROOT

    from crackcls.stages import fetch, split

    project = tmp_path / "project"
    for label in ("Positive", "Negative"):
        (project / "site" / label).mkdir(parents=True)
        images = sorted((REPO_ROOT / "sample" / "mendeley" / label).glob("*.jpg"))
        for i, image in enumerate(images[:6]):  # two parent photos of three tiles per class
            shutil.copy(image, project / "site" / label / f"photo{i % 2}-{i}.jpg")
    site = {"name": "site", "path": "site", "parent_pattern": r"^(?P<parent>photo\d)-\d+$"}
    (project / "params.yaml").write_text(yaml.safe_dump({"data": {"sources": [site]}}))
    monkeypatch.chdir(project)
    fetch.main()
    split.main()
    out = capsys.readouterr().out
    assert "split: site: 2 parent photos, each in one split" in out
    assert "split: WARNING: site has no test images" in out


def grid_parent(source: str, parent: str, rows: int, cracked: set[int], skip: set[int] = frozenset()) -> list[Item]:
    """Every tile of an SDNET2018-style parent photo (rows of 18, numbered from 1), less ``skip``."""
    return [
        Item(f"{source}/{'Positive' if n in cracked else 'Negative'}/{parent}-{n}.jpg", int(n in cracked), f"{source}{parent}-{n}", source, parent)
        for n in range(1, rows * 18 + 1)
        if n not in skip
    ]  # fmt: skip


def test_only_parents_with_every_tile_in_place_are_whole_grids():
    from crackcls.data.grids import tile_number, whole_grids
    from crackcls.data.splitting import whole_grid_groups

    whole = grid_parent("decks", "7001", 14, {3, 4, 5})
    holed = grid_parent("decks", "7002", 14, {3}, skip={200})
    loose = [Item(f"decks/Positive/7003-{n}.jpg", 1, f"l{n}", "decks", "7003") for n in (5, 9, 40)]
    assert tile_number("decks/Positive/7001-17.jpg") == 17 and tile_number("Positive/00017.jpg") is None
    assert whole_grid_groups(whole + holed + loose) == ["decks/7001"]
    grids = whole_grids([it.path for it in whole], [it.group for it in whole])
    grid = grids["decks/7001"]
    assert grid.shape == (14, 18) and whole[grid[0, 2]].path.endswith("-3.jpg") and whole[grid[1, 0]].path.endswith("-19.jpg")
    doubled = whole + [Item("decks/Negative/7001-5.jpg", 0, "d", "decks", "7001")]
    assert whole_grids([it.path for it in doubled], [it.group for it in doubled]) == {}
    # no parent, no grid: Mendeley's numbered files are not tiles of one photo
    assert whole_grid_groups([Item(f"m/Negative/x-{n}.jpg", 0, f"m{n}", "mendeley") for n in range(1, 37)]) == []


def test_the_split_places_whole_grid_parents_in_validation_and_the_report_counts_them():
    from crackcls.data.splitting import split_counts

    items = []
    for p in range(8):
        items += grid_parent("walls", f"70{p:02d}", 14, set(range(10 + p, 30 + p)))
    for p in range(30):  # partial parents: a few cracked tiles and as many uncracked
        items += [Item(f"walls/Positive/71{p:02d}-{n}.jpg", 1, f"pp{p}-{n}", "walls", f"71{p:02d}") for n in range(1, 9)]
        items += [Item(f"walls/Negative/71{p:02d}-{n}.jpg", 0, f"pn{p}-{n}", "walls", f"71{p:02d}") for n in range(50, 58)]
    greedy = split_counts(split_by_source(items, 0.7, 0.15, 0.15, seed=3))["sources"]["walls"]["whole_grid_parents"]
    assert greedy["val"] < 2  # the largest groups fill train first: on its own, validation gets one real photo at most
    for asked in (2, 3):
        parts = split_by_source(items, 0.7, 0.15, 0.15, seed=3, val_whole_grids=asked)
        counts = split_counts(parts)["sources"]["walls"]["whole_grid_parents"]
        assert counts["val"] == asked and sum(counts.values()) == 8
        groups = {name: {it.group for it in part} for name, part in parts.items()}
        assert not (groups["train"] & groups["val"]) and not (groups["val"] & groups["test"])
    assert split_by_source(items, 0.7, 0.15, 0.15, seed=3, val_whole_grids=2) == split_by_source(
        list(reversed(items)), 0.7, 0.15, 0.15, seed=3, val_whole_grids=2
    )
    no_val = split_counts(split_by_source(items, 0.7, 0.0, 0.3, seed=3, val_whole_grids=2))
    assert no_val["val"]["total"] == 0
