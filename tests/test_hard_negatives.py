"""Hard negatives: the uncracked training images a model scores highest, weighted up in a last phase."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import build_tiny_project, deep_merge, pretrained_params, use_project_store, write_params

from crackcls.data.balance import balance_weights, emphasised, hard_negatives
from crackcls.data.splitting import Item


def items(spec: list[tuple[str, int]]) -> list[Item]:
    return [Item(f"{source}/{n}.jpg", label, f"{n:064x}", source) for n, (source, label) in enumerate(spec)]


def test_the_hard_ones_are_each_sources_highest_scored_uncracked_images():
    train = items([("a", 0)] * 10 + [("a", 1)] * 4 + [("b", 0)] * 5)
    scores = np.concatenate([np.linspace(0.0, 0.9, 10), [0.99] * 4, [0.01, 0.02, 0.03, 0.04, 0.05]])
    hard = hard_negatives(train, scores, share=0.2)
    assert np.flatnonzero(hard).tolist() == [8, 9, 18]  # a's two highest of ten, b's one of five; never a cracked one
    assert not hard[10:14].any()  # the cracked images score highest of all and are never picked
    with pytest.raises(ValueError, match="probabilities for"):
        hard_negatives(train, scores[:-1], 0.2)


def test_emphasis_multiplies_the_hard_ones_and_keeps_a_mean_of_one():
    train = items([("a", 0)] * 6 + [("a", 1)] * 2)
    base = balance_weights(train, "class")
    hard = np.array([1, 0, 0, 0, 0, 0, 0, 0], bool)
    weights = emphasised(base, hard, 3.0)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[0] == pytest.approx(3 * weights[1])  # the same cell, three times the weight
    assert weights[6] / weights[1] == pytest.approx(base[6] / base[1])  # the other cells keep their proportions
    assert emphasised(None, np.zeros(3, bool), 3.0).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("path", ["scratch", "feature_cache"])
def test_the_phase_runs_after_training_and_says_what_it_weighted(tmp_path, monkeypatch, path):
    from crackcls.config import load_config
    from crackcls.data import manifest
    from crackcls.model import training
    from crackcls.stages import features, fetch, split
    from crackcls.util import paths

    project = build_tiny_project(tmp_path / "project", per_class=30)
    override = {"train": {"epochs": 2, "hard_negatives": {"epochs": 2, "share": 0.25}}}
    if path == "feature_cache":
        override = deep_merge(override, pretrained_params(tmp_path / "weights"))
    write_params(project, deep_merge(yaml.safe_load((project / "params.yaml").read_text()), override))
    use_project_store(monkeypatch, project)
    config = load_config(project / "params.yaml")
    for stage in (fetch, split, features):
        stage.run(config, project)

    trained = training.fit(config.model, config.train, project)
    phases = trained.history["phase"]
    first = "scratch" if path == "scratch" else "frozen"
    assert phases[0] == first and phases[-1] == "hard_negatives" and phases.count("hard_negatives") <= 2
    negatives = sum(it.label == 0 for it in manifest.read(manifest.manifest_path("train", project / paths.SPLIT_DIR)))
    assert trained.metrics["hard_negative_images"] == round(0.25 * negatives)
    assert 0.0 <= trained.metrics["hard_negative_min_score"] <= 1.0
    assert len(trained.history["loss"]) == len(phases)
