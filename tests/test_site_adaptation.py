"""A site's corrections as their own source, a champion adapted to them, and the promotion that judges it on the site.

Field tiles under ``field/<site>/`` become source ``field-<site>`` with every tile of a
photo in one split. ``train.init: champion`` starts from the champion's weights (not a
new initialisation) and records which version it started from and the field data
version. Promotion of an adapted challenger is decided on the site's own test images
and refused where any source got significantly worse.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, TINY_PARAMS, deep_merge, trained_tiny_project, write_params
from PIL import Image

from crackcls.data.collection import field_folders
from crackcls.data.field_labels import Correction, FieldFolder, LabelledTile, is_field_source, site_source
from crackcls.data.splitting import Item, split_by_source
from crackcls.trust.promotion import McNemar, SourceCheck, mcnemar_from_counts, on_sites, with_source_checks
from crackcls.util.errors import CrackclsError

SITE = "bridge-7"
WALLS = REPO_ROOT / "sample" / "sdnet2018" / "walls"
PHOTOS, TILES_PER_PHOTO = 12, 4


def add_site_tiles(field: Path, site: str = SITE, photos: int = PHOTOS) -> FieldFolder:
    """Reviewed tiles of ``photos`` wall photos (half cracked) written the way the desk writes them."""
    folder = FieldFolder(field)
    for label in ("Positive", "Negative"):
        images = sorted((WALLS / label).glob("*.jpg"))
        for photo in range(photos // 2):
            name = f"{label.lower()}-wall-{photo}.jpg"
            correction = Correction(
                photo=name, photo_sha256=hashlib.sha256(name.encode()).hexdigest(),
                kind="missed_crack" if label == "Positive" else "not_a_crack", box=(0, 0, 512, 512),
                model="1", reviewer="ana", time="2026-12-07T10:00:00Z", site=site,
            )  # fmt: skip
            tiles = []
            for t in range(TILES_PER_PHOTO):
                with Image.open(images[photo * TILES_PER_PHOTO + t]) as image:
                    tiles.append(LabelledTile(image.convert("RGB"), label, (256 * (t % 2), 256 * (t // 2), 256 * (t % 2 + 1), 256 * (t // 2 + 1))))
            folder.add(correction, tiles)
    return folder


def test_a_site_writes_its_own_folder_and_manifest_column(tmp_path: Path) -> None:
    folder = add_site_tiles(tmp_path / "field", photos=2)
    written = sorted((tmp_path / "field" / SITE).rglob("*.jpg"))
    assert len(written) == 2 * TILES_PER_PHOTO
    assert {p.parent.name for p in written} == {"Positive", "Negative"}
    assert not (tmp_path / "field" / "Positive").exists()
    rows = folder.rows()
    assert {row["site"] for row in rows} == {SITE} and all(row["file"].startswith(f"{SITE}/") for row in rows)
    assert folder.waiting(tmp_path / "imported") == len(rows)

    # the same bytes under another site are still one image: a duplicate, not a second copy
    again = add_site_tiles(tmp_path / "field", site="other-site", photos=2)
    assert not (tmp_path / "field" / "other-site").exists() and len(again.rows()) == len(rows)


@pytest.mark.parametrize("bad", ["../up", "with space", "Positive", "a" * 49, "-lead"])
def test_a_site_name_that_cannot_be_a_folder_is_refused(bad: str) -> None:
    with pytest.raises(CrackclsError, match="not a usable name"):
        Correction("p.jpg", "0" * 64, "missed_crack", (0, 0, 1, 1), "1", "ana", "now", site=bad)


def test_each_site_is_a_source_and_keeps_a_photo_in_one_split(tmp_path: Path) -> None:
    field = tmp_path / "field"
    add_site_tiles(field)
    legacy = field / "Negative"
    legacy.mkdir()
    shutil.copy(next((WALLS / "Negative").glob("*.jpg")), legacy / "old--x0y0-0123456789.jpg")
    folders = {f.source: f for f in field_folders(field)}
    assert set(folders) == {"field", site_source(SITE)} and site_source(SITE) == f"field-{SITE}"
    assert all(is_field_source(name) for name in folders) and not is_field_source("fieldwork")

    site = folders[site_source(SITE)]
    items = [
        Item(str(path), int(path.parent.name == "Positive"), path.name, site.source, site.parents.match(path.stem)["parent"])
        for path in sorted(site.root.rglob("*.jpg"))
    ]
    assert len({item.parent for item in items}) == PHOTOS
    splits = split_by_source(items, 0.5, 0.25, 0.25, seed=3)
    where = {}
    for split, members in splits.items():
        for item in members:
            assert where.setdefault(item.parent, split) == split, f"photo {item.parent} is in {where[item.parent]} and {split}"
    assert sum(len(m) for m in splits.values()) == len(items)


def check(source: str, challenger: float, champion: float, challenger_only: int, champion_only: int, n: int = 100) -> SourceCheck:
    return SourceCheck(source, n, challenger, champion, mcnemar_from_counts(challenger_only, champion_only))


def test_an_adapted_challenger_is_judged_on_its_site_and_worse_on_no_source() -> None:
    better_site = check("field-bridge-7", 0.92, 0.70, 14, 1)
    flat_site = check("field-old", 0.80, 0.80, 2, 2)
    assert on_sites([better_site, flat_site], 0.0, "f1", 0.05).promote
    refused = on_sites([flat_site], 0.0, "f1", 0.05)
    assert not refused.promote and "site field-old" in refused.reason
    lucky = on_sites([check("field-bridge-7", 0.85, 0.80, 3, 1)], 0.0, "f1", 0.05)
    assert not lucky.promote and "luck" in lucky.reason

    decks_worse = check("decks", 0.70, 0.80, 1, 15)
    kept = with_source_checks(on_sites([better_site], 0.0, "f1", 0.05), [better_site, decks_worse], 0.05, "f1")
    assert not kept.promote and "significantly worse on decks" in kept.reason
    assert [c.verdict(0.05, 0.0, "f1") for c in (better_site, flat_site, decks_worse)] == ["BETTER", "ok", "WORSE"]
    assert better_site.verdict(1.0, 0.0, "f1") == "ok"  # the paired test off: no word either way
    with pytest.raises(ValueError):
        on_sites([], 0.0, "f1", 0.05)


def test_promotion_rows_put_the_sites_first_with_their_verdicts() -> None:
    from crackcls.jobs.promote import source_rows

    rows = source_rows([check("decks", 0.8, 0.8, 2, 2), check("field-bridge-7", 0.92, 0.70, 14, 1)], "f1", 0.05)
    assert rows[2].startswith("field-bridge-7") and rows[2].rstrip().endswith("BETTER")
    assert rows[3].startswith("decks") and rows[3].rstrip().endswith("ok")
    assert isinstance(check("x", 1, 1, 0, 0).paired, McNemar)


# --- the whole loop on a tiny project: champion, site corrections, adaptation, promotion


@pytest.fixture(scope="module")
def adapted(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A tiny champion, then 8 wall photos of site corrections and ``train.init: champion`` for one epoch."""
    from crackcls.config import load_config
    from crackcls.jobs import promote
    from crackcls.stages import evaluate, split, train
    from crackcls.tracking import store

    with trained_tiny_project(tmp_path_factory, "site") as project:
        first = promote.run()
        assert first.decision.promote, first.decision.reason
        store.configure_uri_only()
        champion = store.client().get_model_version_by_alias("crackcls", "champion")
        add_site_tiles(project / "field")
        shutil.copytree(project / "field", project / "data" / "field")  # what `dvc update data.dvc` does
        write_params(project, deep_merge(TINY_PARAMS, {"train": {"init": "champion", "adapt": {"epochs": 1, "learning_rate": 1e-9}}}))
        config = load_config(project / "params.yaml")
        split.run(config, project)
        info = train.run(config, project)
        evaluated = evaluate.run(config, project)
        yield {"project": project, "champion": champion, "info": info, "evaluated": evaluated, "config": config, "promote": promote.run()}


def first_kernel(model) -> np.ndarray:  # noqa: ANN001
    return next(w for w in model.weights if "kernel" in w.path and len(w.shape) == 4).numpy()


def test_adaptation_starts_from_the_champion_and_records_it(adapted) -> None:
    import mlflow

    from crackcls.model.build import build_model
    from crackcls.model.inference import load_model_file
    from crackcls.tracking import lineage, store
    from crackcls.tracking.registry import load_model

    project, champion, info = adapted["project"], adapted["champion"], adapted["info"]
    assert info["adapted_from"] == f"models:/crackcls/{champion.version}" and info["adapted_from_spec"] == "champion"
    assert info["adapted_from_version"] == str(champion.version) and info["adapted_from_run"] == champion.run_id
    assert info["field_data_md5"] == lineage.dir_hash(project / "data" / "field")

    store.configure_uri_only()
    run = mlflow.get_run(info["run_id"])
    assert run.data.tags["adapted_from_version"] == str(champion.version)
    assert run.data.tags["field_data_md5"] == info["field_data_md5"]
    assert run.data.params["train.init"] == "champion"
    version = store.client().get_model_version("crackcls", info["registered_model_version"])
    assert version.tags["adapted_from_version"] == str(champion.version)
    history = (project / "reports" / "train_history.csv").read_text().splitlines()
    assert [row.split(",")[1] for row in history[1:]] == ["adapt"], history

    # at a learning rate of 1e-9 the first convolution is the champion's, not a new initialisation
    adapted_kernel = first_kernel(load_model_file(project / "models" / "model.keras"))
    champion_kernel = first_kernel(load_model(f"models:/crackcls/{champion.version}")[0])
    config = adapted["config"]
    fresh_kernel = first_kernel(build_model(config.model, config.train).model)
    assert np.allclose(adapted_kernel, champion_kernel, atol=1e-5)
    assert not np.allclose(fresh_kernel, champion_kernel, atol=1e-3)


def test_the_site_is_a_source_of_every_figure(adapted) -> None:
    project, evaluated = adapted["project"], adapted["evaluated"]
    source = site_source(SITE)
    split = json.loads((project / "reports" / "split.json").read_text())
    assert source in json.dumps(split)
    assert source in evaluated["test"].by_source, sorted(evaluated["test"].by_source)
    assert f"| {source} |" in evaluated["card"].read_text()


def test_promotion_of_the_adapted_challenger_is_decided_on_the_site(adapted) -> None:
    outcome = adapted["promote"]
    assert outcome.adapted_from == str(adapted["champion"].version)
    sources = {check.source for check in outcome.sources}
    assert site_source(SITE) in sources and "mendeley" in sources
    assert f"site {site_source(SITE)}" in outcome.decision.reason


def test_a_start_model_of_other_settings_is_a_clear_error(adapted) -> None:
    from crackcls.stages import train

    config = adapted["config"]
    narrower = config.model.compact.model_copy(update={"filters": [16, 32, 64, 64]})
    other = config.model_copy(update={"model": config.model.model_copy(update={"compact": narrower})})
    with pytest.raises(CrackclsError, match="does not fit this model's settings"):
        train.run(other, adapted["project"])
    missing = config.model_copy(update={"train": config.train.model_copy(update={"init": "models:/no-such-model@champion"})})
    with pytest.raises(CrackclsError, match="train.init"):
        train.run(missing, adapted["project"])
