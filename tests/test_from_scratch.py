"""Training from random initialisation: it learns, it is reproducible, and BatchNorm never collapses it.

These run the project's own stages (split → features → train → evaluate) on real
Mendeley images, then score images the model never saw, so a broken decoder, a
preprocessing mismatch between training and inference, labels swapped in the split,
or BatchNorm statistics that do not match the weights all show up as lost accuracy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import deep_merge, run_pipeline_in_process, use_project_store, write_params

from crackcls.util import paths
from crackcls.model.evaluation import evaluate_items
from crackcls.model.inference import load_model_file
from crackcls.data.splitting import Item

# Measured (compact_cnn, 64 px, 8 epochs, 150 + 150 training images, 400 unseen images),
# train.seed 42, 1, 2, 3: accuracy 0.980-0.985, precision 0.985-0.990, recall 0.970-0.980.
# A model that stopped learning scores about 0.5; one trained on swapped labels about 0.
LEARNING_FLOOR = 0.90
TRAIN_PER_CLASS = 150
UNSEEN = slice(1000, 1200)  # 200 + 200 shared-sample images, disjoint from the training ones


def shared_files(sample: Path, label: str, part: slice) -> list[Path]:
    return sorted((sample / label).glob("*.jpg"))[part]


def folder_project(root: Path, images: Path, override: dict) -> Path:
    """A project whose data.source is a folder of real images (Positive/, Negative/)."""
    root.mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "dvc.yaml", root / "dvc.yaml")
    write_params(
        root,
        deep_merge(
            {
                "data": {"sources": [str(images)], "download": {"mendeley": {"mirror_url": None}}},
                "model": {"backbone": "compact_cnn", "weights": "none", "image_size": 64},
                "train": {"epochs": 8, "patience": 8, "batch_size": 32},
                "mlflow": {"experiment": "tests"},
            },
            override,
        ),
    )
    return root


def copy_images(target: Path, sample: Path, part: slice) -> Path:
    for label in paths.LABELS:
        (target / label).mkdir(parents=True)
        for image in shared_files(sample, label, part):
            shutil.copy(image, target / label / image.name)
    return target


def unseen_items(sample: Path) -> list[Item]:
    return [
        Item(str(f), label, "") for label, name in enumerate(paths.LABELS) for f in shared_files(sample, name, UNSEEN)
    ]


@pytest.mark.e2e
def test_from_scratch_training_learns_to_find_cracks_in_unseen_images(shared_sample, tmp_path, monkeypatch):
    images = copy_images(tmp_path / "images", shared_sample, slice(0, TRAIN_PER_CLASS))
    project = folder_project(tmp_path / "project", images, {})
    use_project_store(monkeypatch, project)
    run_pipeline_in_process(project)

    model = load_model_file(project / paths.MODEL_FILE)
    result = evaluate_items(model, unseen_items(shared_sample), threshold=0.5, batch_size=64)
    assert result.metrics["n"] == 400
    assert result.metrics["accuracy"] >= LEARNING_FLOOR, result.metrics
    assert result.metrics["recall"] >= LEARNING_FLOOR and result.metrics["precision"] >= LEARNING_FLOOR, result.metrics


def run_tiny(root: Path, monkeypatch: pytest.MonkeyPatch, override: dict | None = None) -> dict:
    from conftest import build_tiny_project

    project = build_tiny_project(root, per_class=30)
    if override:
        write_params(project, deep_merge(yaml_params(project), override))
    use_project_store(monkeypatch, project)
    run_pipeline_in_process(project)
    predictions = (project / paths.REPORTS_DIR / "predictions.csv").read_text()
    return {"metrics": (project / paths.REPORTS_DIR / "metrics.json").read_text(), "predictions": predictions}


def yaml_params(project: Path) -> dict:
    import yaml

    return yaml.safe_load((project / "params.yaml").read_text())


def test_same_params_data_and_seed_give_identical_metrics(tmp_path, monkeypatch):
    first = run_tiny(tmp_path / "a" / "project", monkeypatch)
    second = run_tiny(tmp_path / "b" / "project", monkeypatch)
    assert first["metrics"] == second["metrics"]  # metrics.json, byte for byte
    assert first["predictions"] == second["predictions"]  # every test image's probability, to 6 decimals

    other_seed = run_tiny(tmp_path / "c" / "project", monkeypatch, {"train": {"seed": 7}})
    assert other_seed["predictions"] != first["predictions"], "the seed must matter, or the test proves nothing"


@pytest.mark.parametrize("backbone", ["compact_cnn", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "resnet50", "efficientnet_b0"])
def test_recalibrated_batchnorm_makes_inference_match_training_statistics(backbone):
    """The from-scratch collapse: inference with stale moving statistics is not the network that trained.

    Freshly built, every backbone's moving statistics are the defaults; inference-mode
    features then differ from training-mode (batch statistics) features. After
    recalibration on a batch, inference on that batch gives the training-mode features.
    """
    import keras
    from conftest import REPO_ROOT

    from crackcls.model.settings import ModelConfig, TrainConfig
    from crackcls.data.images import load_rgb
    from crackcls.model.build import build_model, calibrate_batchnorm

    keras.utils.set_random_seed(0)
    crack = build_model(ModelConfig(backbone=backbone, weights="none", image_size=48), TrainConfig())
    for layer in crack.backbone.layers:  # EfficientNet's stochastic depth would make training mode random
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    files = sorted((REPO_ROOT / "sample" / "mendeley" / "Positive").glob("*.jpg"))[:8] + sorted((REPO_ROOT / "sample" / "mendeley" / "Negative").glob("*.jpg"))[:8]
    batch = np.stack([load_rgb(f, 48) for f in files]).astype(np.float32)

    def pooled(training: bool) -> np.ndarray:
        x = batch
        for layer in crack.preprocess:
            x = layer(x)
        return np.asarray(keras.layers.GlobalAveragePooling2D()(crack.backbone(x, training=training)))

    target = pooled(training=True)
    scale = np.abs(target).mean()
    assert np.abs(pooled(training=False) - target).mean() > 0.05 * scale, "default statistics already match; nothing to test"
    assert calibrate_batchnorm(crack, [batch]) == 16
    np.testing.assert_allclose(pooled(training=False), target, atol=0.02 * scale, rtol=0.02)
    assert crack.backbone.trainable, "from scratch, the backbone stays trainable"
