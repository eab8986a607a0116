"""Grad-CAM and embeddings signatures, the t-SNE source check, the Evaluator's and the report's
explanation outputs, and `cxrflow predict --gradcam`."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxrflow.cli import main
from cxrflow.report import GRADCAM_PNG, TSNE_JSON, TSNE_PNG, build_report
from cxrflow.report.embeddings import tsne_perplexity, tsne_report, write_tsne
from cxrflow.report.gradcam import pick_examples
from cxrflow.trainer.models import FEATURE_LAYER, build_model, set_backbone_trainable
from tests.conftest import TINY_SIZE, png_bytes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sample_images() -> list[bytes]:
    # Different sizes and modes: the signature decodes and resizes them like serving_default.
    return [png_bytes(), png_bytes("RGB", (50, 90)), png_bytes("JPEG", (64, 64)), png_bytes(bits16=True)]


@pytest.mark.parametrize("name", ["cnn", "mobilenetv2"])
def test_both_families_pool_the_last_conv_map_in_the_gap_layer(name):
    model = build_model(name, 64, 3, weights="none", seed=1)
    gap = model.get_layer(FEATURE_LAYER)
    assert len(gap.input.shape) == 4 and gap.input.shape[1] > 1  # a spatial conv feature map
    assert [layer.name for layer in model.layers[-3:]] == [FEATURE_LAYER, "dropout", "probabilities"]
    set_backbone_trainable(model, None)  # still finds (or, for the CNN, skips) the backbone
    if name != "cnn":
        assert not model.get_layer("backbone").trainable
        set_backbone_trainable(model, 5)
        top = model.get_layer("backbone").layers[-6:]
        # The top 5 train, except BatchNorm, which keeps its statistics when fine-tuning.
        assert [layer.trainable for layer in top] == [False] + [
            not isinstance(layer, keras.layers.BatchNormalization) for layer in top[1:]]


def test_gradcam_maps_have_the_image_shape_lie_in_0_1_and_are_not_constant(trained_model):
    model = tf.saved_model.load(trained_model)
    images = tf.constant(sample_images())
    out = model.signatures["gradcam"](images=images)
    heatmap = out["heatmap"].numpy()
    assert heatmap.shape == (4, TINY_SIZE, TINY_SIZE) and heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0 and np.isfinite(heatmap).all()
    for h in heatmap:
        assert h.std() > 1e-3 and h.max() == pytest.approx(1.0)  # normalised per image, with structure
    # It explains the class that serving_default predicts.
    served = model.signatures["serving_default"](images=images)["class_id"].numpy()
    np.testing.assert_array_equal(out["class_id"].numpy(), served)
    empty = model.signatures["gradcam"](images=tf.constant([], tf.string))
    assert empty["heatmap"].shape == (0, TINY_SIZE, TINY_SIZE) and empty["class_id"].shape == (0,)


def test_gradcam_of_a_transfer_backbone_without_saving():
    """The transfer family's map comes from inside the backbone (its last conv block)."""
    from cxrflow import features as fk
    from cxrflow.stages.transform import decode_batch
    from cxrflow.trainer.export import CxrServingModule

    class DecodeOnly(tf.Module):  # stands in for the TFT layer: decode + resize, unit range
        def __call__(self, inputs):
            return {fk.IMAGE_XF_KEY: decode_batch(inputs[fk.IMAGE_KEY], 64)}

    model = build_model("resnet50", 64, 3, weights="none", seed=1)
    # Keras applications draw their initial kernels from Keras' global generator, so an untrained
    # backbone differs run to run, and about one in six gave no positive evidence at all (an
    # all-zero map, which is correct Grad-CAM). Seeded kernels make the case the same every time;
    # every other weight starts from a constant.
    rng = np.random.default_rng(1)
    for var in model.weights:
        if var.path.endswith("kernel"):
            fan_in = int(np.prod(var.shape[:-1]))
            var.assign(rng.normal(0.0, np.sqrt(2.0 / fan_in), var.shape).astype(var.dtype))
    module = CxrServingModule(model, DecodeOnly(), ["a", "b", "c"], 64, "unit", 1)
    out = module.gradcam(tf.constant(sample_images()[:2]))
    heatmap = out["heatmap"].numpy()
    assert heatmap.shape == (2, 64, 64) and heatmap.min() >= 0 and heatmap.max() <= 1
    assert all(h.std() > 1e-3 for h in heatmap)
    assert module.embeddings(tf.constant(sample_images()[:2]))["embedding"].shape == (2, 2048)


def test_embeddings_are_batch_by_feature(trained_model):
    signature = tf.saved_model.load(trained_model).signatures["embeddings"]
    emb = signature(images=tf.constant(sample_images()))["embedding"].numpy()
    assert emb.ndim == 2 and emb.shape[0] == 4 and emb.shape[1] > 1 and np.isfinite(emb).all()
    assert not np.allclose(emb[0], emb[1])
    assert signature(images=tf.constant([], tf.string))["embedding"].shape == (0, emb.shape[1])


def synthetic(n: int = 60, seed: int = 0, shift_sources: bool = True):
    """Embeddings where the source moves the features and the class does not (or the reverse)."""
    rng = np.random.default_rng(seed)
    sources = np.array(["hospital_a", "hospital_b"])[np.arange(n) % 2]
    classes = np.array(["covid", "normal", "pneumonia"])[rng.integers(0, 3, n)]
    emb = rng.normal(size=(n, 16))
    if shift_sources:
        emb[sources == "hospital_b", :4] += 6.0
    else:
        emb[:, :3] += 6.0 * (classes[:, None] == np.array(["covid", "normal", "pneumonia"]))
    return emb, classes, sources


def test_tsne_note_says_when_sources_separate_more_than_classes(tmp_path):
    emb, classes, sources = synthetic()
    info = write_tsne(emb, classes, sources, 0, str(tmp_path / TSNE_PNG), str(tmp_path / TSNE_JSON))
    assert info["sources_separate_more_than_classes"] is True
    assert info["source_separation"] > info["class_separation"]
    assert "learned the dataset rather than the disease" in info["note"]
    assert json.load(open(tmp_path / TSNE_JSON)) == info
    assert open(tmp_path / TSNE_PNG, "rb").read(8) == PNG_MAGIC
    # The same data with the shift on the classes instead: no warning.
    _, info = tsne_report(*synthetic(shift_sources=False), seed=0)
    assert info["sources_separate_more_than_classes"] is False and "by class than by source" in info["note"]
    # One source: nothing to compare, and the note says so.
    _, info = tsne_report(emb, classes, ["only"] * len(emb), seed=0)
    assert info["source_separation"] is None and "single source" in info["note"]
    # Perplexity shrinks below n for tiny test sets; too few points give a note, not an error.
    assert tsne_perplexity(5) < 5 and tsne_perplexity(1000) == 30
    points, info = tsne_report(emb[:5], classes[:5], sources[:5], seed=0)
    assert points.shape == (5, 2)
    points, info = tsne_report(emb[:3], classes[:3], sources[:3], seed=0)
    assert points is None and "too few" in info["note"]


def test_tsne_is_reproducible_from_the_seed_alone():
    emb, classes, sources = synthetic(n=30)
    a, _ = tsne_report(emb, classes, sources, seed=3)
    b, _ = tsne_report(emb, classes, sources, seed=3)
    np.testing.assert_allclose(a, b)


def test_gradcam_examples_are_the_most_confident_correct_then_wrong_per_class():
    labels = np.array([0, 0, 0, 0, 1, 2])
    probs = np.array([[0.9, 0.1, 0], [0.6, 0.4, 0], [0.2, 0.8, 0], [0.95, 0.05, 0], [0, 1, 0], [0, 0.3, 0.7]])
    rows = pick_examples(labels, probs, 3)
    assert rows[0] == [(3, True), (0, True), (2, False)]
    assert rows[1] == [(4, True)] and rows[2] == [(5, True)]


def test_evaluator_writes_tsne_and_gradcam(tiny_config, stage_dirs, examples, trained_model):
    from cxrflow.stages.evaluator import run_evaluator
    from cxrflow.stages.example_gen import split_pattern

    out = os.path.join(stage_dirs["eval"], "explanations")
    run_evaluator(tiny_config, trained_model, split_pattern(stage_dirs["examples"], "test"), out)
    for name in (TSNE_PNG, GRADCAM_PNG):
        assert open(os.path.join(out, name), "rb").read(8) == PNG_MAGIC, name
    info = json.load(open(os.path.join(out, TSNE_JSON)))
    assert set(info) >= {"class_separation", "source_separation", "sources_separate_more_than_classes", "note"}
    assert info["note"] and isinstance(info["sources_separate_more_than_classes"], bool)
    # The tiny dataset has one source: the note says so rather than comparing.
    assert "single source" in info["note"]
    # The run report shows both, with the t-SNE finding in words.
    html = open(build_report(out), encoding="utf-8").read()
    assert f"{TSNE_PNG} not found" not in html and f"{GRADCAM_PNG} not found" not in html
    assert "single source" in html


def test_report_flags_a_source_effect_in_the_tsne_section(tmp_path):
    from tests.test_report import fake_run_dir

    run_dir = fake_run_dir(tmp_path / "run")
    with open(os.path.join(run_dir, TSNE_JSON), "w") as f:
        json.dump({"sources_separate_more_than_classes": True, "note": "the model may have learned the dataset"}, f)
    html = open(build_report(run_dir), encoding="utf-8").read()
    section = html.split('<section id="tsne">', 1)[1].split("</section>", 1)[0]
    assert '<p class="note">the model may have learned the dataset</p>' in section


def test_cli_predict_gradcam_writes_one_png_per_image(trained_model, tmp_path, capsys):
    from PIL import Image

    paths = []
    for name, data in (("chest.png", png_bytes()), ("other.jpg", png_bytes("JPEG", (70, 60)))):
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    out = tmp_path / "cams"
    assert main(["predict", *paths, "--model", trained_model, "--gradcam", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for stem, row in zip(("chest", "other"), result["predictions"], strict=True):
        path = out / f"{stem}_gradcam.png"
        assert row["gradcam"] == str(path) and open(path, "rb").read(8) == PNG_MAGIC
        assert Image.open(path).size[0] > 200
    # Without --gradcam nothing changes: no key, no files.
    assert main(["predict", paths[0], "--model", trained_model, "--json"]) == 0
    assert "gradcam" not in json.loads(capsys.readouterr().out)["predictions"][0]
    # A REST endpoint returns no gradients: a clear error, before any request is made.
    assert main(["predict", paths[0], "--endpoint", "http://127.0.0.1:9/v1/models/x", "--gradcam", str(out)]) == 2
    assert "--gradcam needs --model" in capsys.readouterr().err
