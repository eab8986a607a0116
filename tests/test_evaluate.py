"""`cxrflow evaluate` end to end (an existing model on a dataset it never saw), per-age-group
metrics, and the shortcut and external sections of the report."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from sklearn.metrics import recall_score

from cxrflow import features as fk
from cxrflow.cli import main
from cxrflow.sample_data import write_sample_dataset
from cxrflow.stages.evaluator import age_group_metrics


def _served_predictions(model_dir: str, files: list[str], classes) -> list[str]:
    """What the exported model says about each file, asked directly (independent of the Evaluator)."""
    import tensorflow as tf

    model = tf.saved_model.load(model_dir)
    images = tf.constant([open(f, "rb").read() for f in files])
    return [classes[i] for i in model.signatures["serving_default"](images=images)["class_id"].numpy()]


def _files(root: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names)


def test_evaluate_a_single_class_dataset_through_a_serving_dir(trained_model, tiny_config, tmp_path, capsys):
    from cxrflow.stages.pusher import push

    serving = str(tmp_path / "serving")
    push(trained_model, serving, "cxrflow")
    data = str(tmp_path / "hospital")
    write_sample_dataset(data, per_class=8, classes=("covid",), seed=7, render_size=64, size_range=(48, 64))
    out = str(tmp_path / "ext")

    assert main(["evaluate", "--model", serving, "--data", f"folders:{data}", "--output", out]) == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    classes = list(tiny_config.classes)
    assert metrics["classes"] == classes and metrics["n"] == 8
    said = _served_predictions(os.path.join(serving, "cxrflow", "1"), _files(data), classes)
    covid = metrics["per_class"]["covid"]
    assert covid["support"] == 8 and covid["recall"] == pytest.approx(said.count("covid") / 8)
    # Nothing invented: no AUC without positives and negatives, no recall without positives,
    # no specificity without negatives.
    assert all(m["auc"] is None for m in metrics["per_class"].values())
    assert covid["specificity"] is None
    assert metrics["per_class"]["normal"]["recall"] is None and metrics["per_class"]["bacterial"]["recall"] is None
    assert metrics["classes_absent"] == ["bacterial", "normal"]
    ext = metrics["external"]
    assert ext["model_dir"].endswith(os.path.join("serving", "cxrflow", "1")) and ext["classes_present"] == ["covid"]
    assert ext["trained_on_text"]  # named, or said to be unrecorded
    assert metrics["shortcut"]["trait_probe"]["skipped"]  # no train split in an external set
    assert metrics["shortcut"]["lungs_hidden"]["per_class"]["covid"]["support"] == 8
    assert not os.path.exists(os.path.join(out, "blessing.json"))  # no blessing, no push
    for name in ("slices.json", "confusion_matrix.png", "roc_curves.png", "gradcam.png", "ingest_report.json"):
        assert os.path.exists(os.path.join(out, name)), name
    html = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert 'id="external"' in html and "Only covid present" in html and 'id="blessing"' not in html
    assert 'id="shortcut"' in html and "Lungs hidden" in html
    printed = capsys.readouterr().out
    assert "external evaluation of" in printed and "not in this data: bacterial, normal" in printed
    # A finished evaluation is not overwritten without --force.
    assert main(["evaluate", "--model", serving, "--data", f"folders:{data}", "--output", out]) == 2


def test_evaluate_a_flat_folder_given_its_class(trained_model, tiny_config, tmp_path):
    data = tmp_path / "flat"
    write_sample_dataset(str(tmp_path / "tmp"), per_class=6, classes=("normal",), seed=9, render_size=64,
                         size_range=(48, 64))
    data.mkdir()
    for f in _files(str(tmp_path / "tmp")):
        os.replace(f, data / os.path.basename(f))
    out = str(tmp_path / "ext")
    # The files are named patient00000NN: "patient(\d{2})" makes them all one patient.
    assert main(["evaluate", "--model", trained_model, "--data", f"folders:{data}", "--output", out,
                 "--label", "normal", "--patient-pattern", r"patient(\d{2})"]) == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    said = _served_predictions(trained_model, _files(str(data)), list(tiny_config.classes))
    recall = said.count("normal") / 6
    assert metrics["per_class"]["normal"]["support"] == 6
    assert metrics["per_class"]["normal"]["recall"] == pytest.approx(recall)
    ingest = json.load(open(os.path.join(out, "ingest_report.json")))
    assert ingest["sources"]["folders:flat"]["images_without_patient"] == 0  # the pattern named them all
    # One patient: every bootstrap resample draws the same six films, so the interval is a point.
    assert metrics["ci95"]["normal"]["recall"] == pytest.approx([recall, recall])
    assert main(["evaluate", "--model", trained_model, "--data", f"folders:{data}", "--output", out + "2",
                 "--label", "viral"]) == 2  # not one of the model's classes


def test_evaluate_refuses_a_dir_that_holds_no_model(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path), "--data", f"folders:{tmp_path}", "--output",
                 str(tmp_path / "o")]) == 2
    assert "neither a SavedModel" in capsys.readouterr().err


def test_age_group_metrics_match_counts_by_hand():
    classes = ("covid", "bacterial", "normal")
    # Adults: 2 covid (both right), 4 normal of which 3 called covid. Children: 3 normal, all right.
    labels = np.array([0, 0, 2, 2, 2, 2, 2, 2, 2])
    predicted = np.array([0, 0, 0, 0, 0, 2, 2, 2, 2])
    probs = np.eye(3)[predicted]
    extras = {fk.AGE_GROUP_KEY: ["adult"] * 6 + ["child"] * 3, fk.PATIENT_ID_KEY: [f"p{i}" for i in range(9)]}
    out = age_group_metrics(labels, probs, extras, classes, seed=0)
    adult, child = out["adult"], out["child"]
    assert adult["n"] == 6 and child["n"] == 3
    mask = np.arange(9) < 6
    assert adult["per_class"]["normal"]["recall"] == pytest.approx(
        recall_score(labels[mask], predicted[mask], labels=[2], average=None)[0]) == 0.25
    assert adult["per_class"]["covid"]["recall"] == 1.0
    assert adult["per_class"]["covid"]["specificity"] == pytest.approx(1 / 4)  # 3 of 4 non-covid called covid
    assert adult["per_class"]["bacterial"]["recall"] is None  # none in the group: not 0
    assert child["per_class"]["covid"]["recall"] is None and child["per_class"]["normal"]["recall"] == 1.0
    lo, hi = adult["per_class"]["normal"]["recall_ci95"]
    assert lo <= 0.25 <= hi and hi - lo > 0  # 4 patients: a wide interval


def test_unknown_age_group_is_named():
    out = age_group_metrics(np.array([0, 1]), np.eye(2), {fk.AGE_GROUP_KEY: ["", ""],
                                                          fk.PATIENT_ID_KEY: ["a", "b"]}, ("x", "y"), seed=0)
    assert list(out) == ["(unknown)"]


def test_report_shows_the_shortcut_warnings_and_age_groups_of_a_run(tmp_path):
    from cxrflow.report import build_report
    from tests.test_report import fake_run_dir

    run_dir = fake_run_dir(tmp_path / "run")
    path = os.path.join(run_dir, "metrics.json")
    metrics = json.load(open(path))
    classes = metrics["classes"]
    per = {c: {"recall": 0.5, "support": 2} for c in classes}
    metrics["shortcut"] = {
        "trait_probe": {"metrics": {"macro_recall": 0.9, "per_class": per}, "cnn_macro_recall": 0.85,
                        "model": "RandomForestClassifier", "train_n": 12, "importance": {"trait_bytes": 0.7},
                        "thresholds": {"margin": 0.05, "max_macro_recall": 0.8}, "warning": "probe <b>warns</b>"},
        "lungs_hidden": {"skipped": "failed: ValueError: no images"},
        "warnings": ["probe <b>warns</b>"],
    }
    metrics["by_age_group"] = {"adult": {"n": 3, "per_class": {
        classes[0]: {"recall": 0.25, "recall_ci95": [0.0, 0.75], "support": 4, "specificity": None,
                     "specificity_ci95": [None, None]}}}}
    json.dump(metrics, open(path, "w"))
    html = open(build_report(run_dir), encoding="utf-8").read()
    section = html.split('<section id="shortcut">', 1)[1].split("</section>", 1)[0]
    assert '<p class="note">Warning: probe &lt;b&gt;warns&lt;/b&gt;</p>' in section  # escaped, boxed
    assert "not run: failed: ValueError: no images" in section
    assert "0.900" in section and "trait_bytes 0.70" in section
    ages = html.split('<section id="age">', 1)[1].split("</section>", 1)[0]
    assert "0.250 [0.000, 0.750] (n=4)" in ages
    assert 'id="external"' not in html and 'id="blessing"' in html  # a run: blessed or not, never external


def test_a_single_class_test_source_is_evaluated_with_the_probe_and_no_invented_auc(
        trained_model, tiny_config, tiny_data, tmp_path):
    """--test-source: one held-out source holding only COVID films is the whole test split."""
    from cxrflow.stages.evaluator import run_evaluator
    from cxrflow.stages.example_gen import run_example_gen, split_pattern

    other = str(tmp_path / "other")
    write_sample_dataset(other, per_class=6, classes=("covid",), render_size=48, size_range=(48, 56), seed=11)
    config = tiny_config.replace(data=(f"folders:{tiny_data}", f"folders:{other}"), test_source="folders:other")
    examples = str(tmp_path / "examples")
    report = run_example_gen(config, examples)
    assert report["splits"]["test"] == {"covid": 6, "bacterial": 0, "normal": 0}
    out = str(tmp_path / "eval")
    result = run_evaluator(config, trained_model, split_pattern(examples, "test"), out,
                           train_pattern=split_pattern(examples, "train"))
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics == json.loads(json.dumps(result["metrics"]))
    said = _served_predictions(trained_model, _files(other), list(config.classes))
    assert metrics["n"] == 6 and metrics["per_class"]["covid"]["recall"] == pytest.approx(said.count("covid") / 6)
    assert all(m["auc"] is None for m in metrics["per_class"].values())
    assert metrics["classes_absent"] == ["bacterial", "normal"]
    probe = metrics["shortcut"]["trait_probe"]
    assert probe["train_n"] == sum(report["splits"]["train"].values())  # fitted on train alone
    assert probe["metrics"]["per_class"]["covid"]["support"] == 6
    assert "one class present" in metrics["shortcut"]["lungs_hidden"]["note"]
    assert metrics["shortcut"]["lungs_hidden"]["warning"] is None


def test_training_sources_in_words():
    from cxrflow.external import trained_on_text

    record = {"sources": ["ieee:ieee", "kaggle:kaggle"], "counts": {"covid": 75, "normal": 93},
              "by_source": {"ieee:ieee": {"covid": 75, "normal": 10}, "kaggle:kaggle": {"normal": 83}}}
    assert trained_on_text(record) == "ieee:ieee: covid 75, normal 10; kaggle:kaggle: normal 83"
    assert trained_on_text(["a", "b"]) == "a, b"
    assert "not recorded" in trained_on_text({}) and "not recorded" in trained_on_text(None)
