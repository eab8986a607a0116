"""ROC plot, report.html from a fake run dir, the `cxrflow report` command, the run wiring,
and a headless-Chromium render of the report."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from html import escape

import numpy as np
import pytest

from cxrflow import cli, runs
from cxrflow.metrics import metrics_from_probabilities
from cxrflow.report import REPORT_FILE, ROC_PNG, build_report
from cxrflow.report.bootstrap import bootstrap_ci
from cxrflow.report.plots import LINE_STYLES, MARKERS, plot_roc

CLASSES = ("covid", "normal", "pneumonia")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTION_IDS = ("blessing", "data", "training", "metrics", "slices", "confusion", "gallery", "roc", "tsne", "gradcam")
EVIL = "<script>alert('x')</script>&"


def predictions(n: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    probs = rng.dirichlet(np.ones(3), n)
    probs[np.arange(n), labels] += rng.random(n)  # informative but imperfect
    return labels, probs / probs.sum(axis=1, keepdims=True), np.array([f"p{i // 2}" for i in range(n)])


def write_json(path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def gray_png(path) -> None:
    from PIL import Image

    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 256).astype("uint8")).save(path)


def fake_run_dir(root, with_optional: bool = True) -> str:
    """What `cxrflow run` leaves in its output dir, small: the headline JSON files and PNGs."""
    os.makedirs(root, exist_ok=True)
    labels, probs, pids = predictions()
    metrics = metrics_from_probabilities(labels, probs, CLASSES)
    metrics["ci95"] = bootstrap_ci(labels, probs, pids, CLASSES, n_boot=200)
    write_json(os.path.join(root, "metrics.json"), metrics)
    if not with_optional:
        return str(root)
    write_json(os.path.join(root, "slices.json"), {"overall": metrics, f"source={EVIL}": metrics})

    covid = metrics["per_class"]["covid"]["recall"]
    assert covid < 0.9  # the blessing below is NOT blessed because of it
    write_json(os.path.join(root, "blessing.json"), {
        "blessed": False, "rule": "bootstrap", "had_baseline": False,
        "gated": {"macro_recall": metrics["macro_recall"], "recall:covid": covid},
        "reasons": [f"macro_recall = {metrics['macro_recall']:.3f} >= 0.500", f"recall:covid = {covid:.3f} < 0.900",
                    "no served baseline model: change threshold not applied (first push)"],
    })
    write_json(
        os.path.join(root, "ingest_report.json"),
        {
            "classes": list(CLASSES),
            "sources": {
                "folders": {
                    "rows": 130,
                    "kept": {"covid": 40, "normal": 45, "pneumonia": 40},
                    "excluded": {"duplicate": 3, "unreadable": 2},
                },
                EVIL: {"rows": 4, "kept": {"covid": 4}, "excluded": {"view=AP": 7}},
            },
            "by_source": {
                "train": {"folders": {"covid": 28, "normal": 31, "pneumonia": 28}, EVIL: {"covid": 4}},
                "eval": {"folders": {"covid": 6, "normal": 7, "pneumonia": 6}},
                "test": {"folders": {"covid": 6, "normal": 7, "pneumonia": 6}},
            },
            "duplicates_removed": 3,
            "patient_overlap": 0,
        },
    )
    history = [
        {
            "phase": "head",
            "epoch": e + 1,
            "loss": 1.2 / (e + 1),
            "val_loss": 1.3 / (e + 1) + 0.05,
            "accuracy": 0.4 + 0.1 * e,
            "val_accuracy": 0.35 + 0.1 * e,
        }
        for e in range(5)
    ]
    history += [{**h, "phase": "finetune"} for h in history[:2]]
    write_json(os.path.join(root, "training_summary.json"), {"model": "cnn", "epochs_run": 7, "history": history,
                                                                    "warnings": ["learned nothing usable"]})
    gray_png(os.path.join(root, "confusion_matrix.png"))
    plot_roc(labels, probs, CLASSES, os.path.join(root, ROC_PNG))
    gray_png(os.path.join(root, "tsne.png"))
    gray_png(os.path.join(root, "gradcam.png"))
    fake_gallery(root, labels, probs)
    write_json(os.path.join(root, "tsne.json"), {"class_separation": 0.4, "source_separation": 0.1,
                                                 "sources_separate_more_than_classes": False,
                                                 "note": f"classes separate {EVIL}"})
    return str(root)


def fake_gallery(root, labels, probs, max_errors: int = 6) -> dict:
    """gallery/ and gallery.json as the Evaluator writes them, for the fake predictions."""
    from cxrflow.report.gallery import GALLERY_DIR, GALLERY_JSON, pick_gallery, picture_png

    wrong, correct, n_wrong = pick_gallery(labels, probs, max_errors=max_errors)
    os.makedirs(os.path.join(root, GALLERY_DIR), exist_ok=True)
    rng, entries = np.random.default_rng(1), []
    for k, i in enumerate(wrong + correct):
        name = f"{GALLERY_DIR}/{k:03d}.png"
        with open(os.path.join(root, name), "wb") as f:
            f.write(picture_png(rng.random((32, 32)), rng.random((32, 32))))
        pred = int(np.argmax(probs[i]))
        entries.append({"file": name, "index": int(i), "correct": bool(pred == labels[i]), "true": CLASSES[labels[i]],
                        "predicted": CLASSES[pred], "probability": float(probs[i][pred]),
                        "true_class_probability": float(probs[i][labels[i]]), "source": EVIL,
                        "patient_id": f"p{i // 2}", "image_id": f"img{i}"})
    gallery = {"classes": list(CLASSES), "n_test": len(labels), "n_wrong": n_wrong, "shown_wrong": len(wrong),
               "gradcam": True, "entries": entries}
    write_json(os.path.join(root, GALLERY_JSON), gallery)
    return gallery


def img_sources(html: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", html)


def test_roc_png_written_atomically_and_styles_differ_beyond_colour(tmp_path):
    from PIL import Image

    labels, probs, _ = predictions()
    path = plot_roc(labels, probs, CLASSES, str(tmp_path / ROC_PNG))
    data = open(path, "rb").read()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert Image.open(path).size[0] > 300
    assert os.listdir(tmp_path) == [ROC_PNG]  # no temp file left behind
    # Grayscale print: each of the first classes has its own (line style, marker) pair.
    assert len({(str(LINE_STYLES[i % len(LINE_STYLES)]), MARKERS[i % len(MARKERS)]) for i in range(6)}) == 6
    # A single-class test set has no ROC curve, but still gives a figure rather than an error.
    assert open(plot_roc(np.zeros(5, int), probs[:5], CLASSES, str(tmp_path / "one.png")), "rb").read(8) == PNG_MAGIC


def test_report_has_every_section_inline_images_and_escaped_text(tmp_path):
    run_dir = fake_run_dir(tmp_path / "run")
    path = build_report(run_dir)
    assert path == os.path.join(run_dir, REPORT_FILE)
    html = open(path, encoding="utf-8").read()
    for section in SECTION_IDS:
        assert f'<section id="{section}">' in html, section
    sources = img_sources(html)
    gallery = json.load(open(os.path.join(run_dir, "gallery.json")))["entries"]
    # training curves, confusion matrix, ROC, t-SNE, Grad-CAM, and one per gallery picture
    assert len(sources) == 5 + len(gallery)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert "<script" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;" in html
    assert "NOT BLESSED" in html and "recall:covid" in html  # the decision and its reasons
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    lo, hi = metrics["ci95"]["covid"]["recall"]
    assert f"[{lo:.3f}, {hi:.3f}]" in html
    for text in ("view=AP", "unreadable", "duplicates removed: 3", "source=", "finetune (2 epochs)",
                 '<p class="note">learned nothing usable</p>'):
        assert text in html, text
    assert "not found" not in html


def test_missing_optional_inputs_give_notes_not_a_crash(tmp_path):
    run_dir = fake_run_dir(tmp_path / "bare", with_optional=False)
    html = open(build_report(run_dir), encoding="utf-8").read()
    for name in (
        "training_summary.json",
        "ingest_report.json",
        "slices.json",
        "blessing.json",
        "confusion_matrix.png",
        ROC_PNG,
        "tsne.json",
        "tsne.png",
        "gradcam.png",
    ):
        assert f"{name} not found" in html, name
    for section in SECTION_IDS:
        assert f'<section id="{section}">' in html
    assert img_sources(html) == []


def test_unreadable_json_is_a_note_and_missing_metrics_is_an_error(tmp_path):
    run_dir = fake_run_dir(tmp_path / "run")
    open(os.path.join(run_dir, "training_summary.json"), "w").write("{truncated")
    assert "training_summary.json could not be read" in open(build_report(run_dir)).read()
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        build_report(str(tmp_path))


def test_roc_redrawn_from_saved_predictions_for_runs_that_predate_it(tmp_path):
    run_dir = fake_run_dir(tmp_path / "old")
    os.remove(os.path.join(run_dir, ROC_PNG))
    pred_dir = os.path.join(run_dir, "pipeline_root", "run-1", "evaluator", "evaluation", "predictions")
    os.makedirs(pred_dir)
    labels, probs, pids = predictions()
    np.savez(os.path.join(pred_dir, "predictions.npz"), labels=labels, probabilities=probs, patient_id=pids)
    html = open(build_report(run_dir)).read()
    gallery = json.load(open(os.path.join(run_dir, "gallery.json")))["entries"]
    assert "redrawn from the saved test predictions" in html and len(img_sources(html)) == 5 + len(gallery)


def test_cli_report_rebuilds_and_refuses_a_dir_without_metrics(tmp_path, capsys):
    run_dir = fake_run_dir(tmp_path / "run")
    assert cli.main(["report", run_dir]) == 0
    assert os.path.exists(os.path.join(run_dir, REPORT_FILE)) and REPORT_FILE in capsys.readouterr().out
    assert cli.main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no metrics.json" in err and "Traceback" not in err


@pytest.mark.parametrize("report_fails", [False, True])
def test_local_run_collects_roc_and_builds_the_report_without_failing_on_it(
    tmp_path, monkeypatch, capsys, report_fails
):
    import cxrflow.pipeline
    from cxrflow.config import PipelineConfig

    fake = fake_run_dir(tmp_path / "fake")

    def run_local(config, pipeline_root, output_dir=None, verbose=False):  # stands in for kfp.local
        evaluation = os.path.join(pipeline_root, "run-1", "evaluator", "evaluation")
        os.makedirs(evaluation)
        for name in ("metrics.json", "slices.json", "blessing.json", "confusion_matrix.png", ROC_PNG):
            shutil.copy(os.path.join(fake, name), evaluation)

    def broken(run_dir):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cxrflow.pipeline, "run_local", run_local)
    if report_fails:
        monkeypatch.setattr(runs, "build_report", broken)
    out = tmp_path / "out"
    (tmp_path / "data").mkdir()  # the run's preflight wants the data folder to exist
    config = PipelineConfig(data=(f"folders:{tmp_path / 'data'}",), serving_dir=str(tmp_path / "serving"))
    metrics = runs.run_pipeline_locally(config, str(out))
    assert metrics["classes"] == list(CLASSES) and "ci95" in metrics
    assert (out / ROC_PNG).exists()
    assert (out / REPORT_FILE).exists() != report_fails
    if report_fails:
        assert "warning: report.html not built: RuntimeError: disk full" in capsys.readouterr().err


def test_report_renders_in_headless_chromium(tmp_path):
    browser = "/usr/bin/chromium"
    if not os.path.exists(browser):
        pytest.skip("no /usr/bin/chromium: headless render check not run (apt-get install chromium)")
    from PIL import Image, ImageStat

    html = build_report(fake_run_dir(tmp_path / "run"))
    shot = tmp_path / "shot.png"
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        f"file://{html}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert shot.exists(), done.stderr[-2000:]
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 2000)
    # A blank (white) page has std ~0; text, tables and the embedded plots give a lot more.
    assert ImageStat.Stat(image).stddev[0] > 20, ImageStat.Stat(image).stddev


def test_evaluator_adds_patient_level_cis_and_the_roc_png(tiny_config, stage_dirs, examples, trained_model):
    from cxrflow.stages.evaluator import run_evaluator
    from cxrflow.stages.example_gen import split_pattern

    out = os.path.join(stage_dirs["eval"], "with-extras")
    result = run_evaluator(tiny_config, trained_model, split_pattern(stage_dirs["examples"], "test"), out)
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert set(metrics) >= {"classes", "n", "accuracy", "macro_recall", "per_class", "confusion_matrix", "ci95"}
    assert result["metrics"]["ci95"] == metrics["ci95"]
    for name in tiny_config.classes:
        for metric in ("recall", "specificity"):
            lo, hi = metrics["ci95"][name][metric]
            assert lo <= metrics["per_class"][name][metric] + 1e-9 and metrics["per_class"][name][metric] <= hi + 1e-9
    assert open(os.path.join(out, ROC_PNG), "rb").read(8) == PNG_MAGIC


def test_gallery_picks_every_mistake_most_confident_first_and_the_surest_correct_ones_per_class():
    from cxrflow.report.gallery import pick_gallery

    labels = np.array([0, 0, 1, 1, 2, 2, 0])
    probs = np.array([
        [0.90, 0.05, 0.05],  # 0: correct covid, 0.90
        [0.20, 0.70, 0.10],  # 1: WRONG (covid as normal), 0.70
        [0.10, 0.80, 0.10],  # 2: correct normal
        [0.60, 0.30, 0.10],  # 3: WRONG (normal as covid), 0.60
        [0.05, 0.05, 0.90],  # 4: correct pneumonia
        [0.10, 0.85, 0.05],  # 5: WRONG (pneumonia as normal), 0.85
        [0.50, 0.30, 0.20],  # 6: correct covid, 0.50
    ])
    assert pick_gallery(labels, probs) == ([5, 1, 3], [0, 6, 2, 4], 3)
    # Many mistakes: the most confident ones; one correct example per class when asked for one.
    assert pick_gallery(labels, probs, max_errors=2, correct_per_class=1) == ([5, 1], [0, 2, 4], 3)
    assert pick_gallery(np.zeros(0, int), np.zeros((0, 3))) == ([], [], 0)


def test_gallery_section_shows_each_picture_with_its_facts_escaped(tmp_path):
    from cxrflow.report.gallery import gallery_section

    root = fake_run_dir(tmp_path / "run")
    labels, probs, _ = predictions()
    n_wrong = int((probs.argmax(axis=1) != labels).sum())  # counted here, from the predictions
    assert n_wrong > 6  # so the fake gallery shows only the 6 most confident mistakes
    html = gallery_section(root)
    assert html.count('class="card wrong"') == 6
    assert html.count('class="card"') == sum(min(2, int(((labels == c) & (probs.argmax(axis=1) == c)).sum()))
                                             for c in range(3))
    assert f"{n_wrong} of {len(labels)} test images misclassified; shown: the 6 most confident mistakes" in html
    assert EVIL not in html and escape(EVIL) in html
    assert all(src.startswith("data:image/png;base64,") for src in img_sources(html))
    assert len(img_sources(html)) == len(json.load(open(os.path.join(root, "gallery.json")))["entries"])
    # A run from before the gallery: a note, not a crash.
    os.remove(os.path.join(root, "gallery.json"))
    assert "gallery.json not found" in gallery_section(root)


def test_gallery_renders_in_headless_chromium(tmp_path):
    """The gallery alone, screenshotted with and without its pictures: the pictures fill the cards
    and the mistakes' red dashed frames show."""
    browser = "/usr/bin/chromium"
    if not os.path.exists(browser):
        pytest.skip("no /usr/bin/chromium: headless render check not run (apt-get install chromium)")
    from PIL import Image

    from cxrflow.report.gallery import gallery_section

    def screenshot(body: str, name: str) -> np.ndarray:
        page, shot = tmp_path / f"{name}.html", tmp_path / f"{name}.png"
        page.write_text(f"<!DOCTYPE html><html><body>{body}</body></html>")
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1100,1400",
                        f"file://{page}"], capture_output=True, text=True, timeout=60)
        return np.asarray(Image.open(shot).convert("RGB")).astype(int)

    html = gallery_section(fake_run_dir(tmp_path / "run"))
    full = screenshot(html, "full")
    bare = screenshot(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', html), "bare")
    ink = [float((rgb.min(axis=2) < 200).mean()) for rgb in (full, bare)]
    assert ink[0] - ink[1] > 0.2, ink  # the pictures cover a good part of the page
    # Red (#a00) frames: on the page without pictures only they can be red.
    reddish = (bare[..., 0] > 120) & (bare[..., 0] > bare[..., 1] + 60)
    assert reddish.mean() > 0.002, reddish.mean()
