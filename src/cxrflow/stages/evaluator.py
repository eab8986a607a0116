"""Evaluator: test-split predictions -> TFMA metrics per slice -> metrics.json, plots, blessing.

The model is run once over the test split (through its `serving_examples` signature, or the
TTA signature when `tta > 1`) and the labels, probabilities and slicing features are stored as
tf.Examples. TFMA then evaluates model-agnostically from those (`label_key`,
`prediction_key`): the multi-class confusion matrix and one-vs-rest AUC per slice. Per-class
precision, recall, specificity and F1 derive from TFMA's confusion matrix, so every number in
metrics.json traces back to TFMA's output, which is kept beside it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np

from cxrflow import features as fk
from cxrflow import progress
from cxrflow.config import PipelineConfig
from cxrflow.io_utils import join, write_json_atomic
from cxrflow.metrics import metrics_from_confusion, metrics_from_probabilities
from cxrflow.report import GRADCAM_PNG, ROC_PNG, TSNE_JSON, TSNE_PNG, shortcut
from cxrflow.report.bootstrap import bootstrap_ci
from cxrflow.report.embeddings import write_tsne
from cxrflow.report.gallery import write_gallery
from cxrflow.report.gradcam import pick_examples, write_gradcam_grid
from cxrflow.report.plots import plot_roc
from cxrflow.stages.blessing import bless

METRICS_FILE = "metrics.json"
SLICES_FILE = "slices.json"
CONFUSION_PNG = "confusion_matrix.png"
PREDICTIONS_DIR = "predictions"
SLICE_FEATURES = (fk.LABEL_KEY, fk.SOURCE_KEY, fk.VIEW_KEY, fk.SEX_KEY, fk.AGE_GROUP_KEY)


def predict_split(model_dir: str, pattern: str, classes: Sequence[str], batch_size: int = 32):
    """Runs the exported model over TFRecords; returns labels, probabilities and slice features."""
    import tensorflow as tf  # lazy: external.py imports this; TF only to score

    model = tf.saved_model.load(model_dir)
    keys = (fk.IMAGE_KEY, fk.LABEL_KEY, fk.PATIENT_ID_KEY, *SLICE_FEATURES[1:])
    spec = fk.raw_feature_spec(tuple(dict.fromkeys(keys)))
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no test examples match {pattern}")
    index = {c: i for i, c in enumerate(classes)}
    labels, probs, extras = [], [], {k: [] for k in spec if k != fk.IMAGE_KEY}
    batches = tf.data.TFRecordDataset(files).batch(batch_size)
    for batch in progress.iterate(batches, "test pass: predictions", unit="batches"):
        raw = tf.io.parse_example(batch, spec)
        # serving_examples applies the model's recorded TTA views (config `tta`; 1 = off).
        out = model.signatures["serving_examples"](examples=batch)
        probs.append(out["probabilities"].numpy())
        for k in extras:
            extras[k].extend(v.decode() for v in raw[k].numpy())
    labels = np.array([index[c] for c in extras[fk.LABEL_KEY]], dtype=np.int64)
    return labels, np.concatenate(probs) if probs else np.zeros((0, len(classes))), extras


def write_explanations(config: PipelineConfig, model_dir: str, pattern: str, labels: np.ndarray,
                       probs: np.ndarray, sources: Sequence[str], output_dir: str) -> None:
    """tsne.png/tsne.json (test embeddings by class and by source) and gradcam.png.

    One more pass over the test split: every image's embedding, and the encoded bytes of the
    few images chosen for Grad-CAM (from the predictions already made, so the choice needs no
    extra inference).
    """
    import tensorflow as tf  # lazy: external.py imports this; TF only to score

    model = tf.saved_model.load(model_dir)
    if not {"embeddings", "gradcam"} <= set(model.signatures):  # a model exported before them
        print(f"cxrflow: warning: {model_dir} has no embeddings/gradcam signatures: no t-SNE or Grad-CAM",
              file=sys.stderr)
        return
    classes = list(config.classes)
    pick = pick_examples(labels, probs, len(classes))
    wanted = {i for row in pick for i, _ in row}
    spec = fk.raw_feature_spec((fk.IMAGE_KEY,))
    embeddings, encoded, seen = [], {}, 0
    # Same files in the same order as predict_split, so index i is the same image there.
    batches = tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern))).batch(config.batch_size)
    for batch in progress.iterate(batches, "test pass: embeddings", unit="batches"):
        images = tf.io.parse_example(batch, spec)[fk.IMAGE_KEY]
        embeddings.append(model.signatures["embeddings"](images=images)["embedding"].numpy())
        for j, data in enumerate(images.numpy()):
            if seen + j in wanted:
                encoded[seen + j] = data
        seen += len(embeddings[-1])
    write_tsne(np.concatenate(embeddings), [classes[i] for i in labels], sources, config.seed,
               join(output_dir, TSNE_PNG), join(output_dir, TSNE_JSON))
    write_gradcam_grid(model, pick, encoded, labels, probs, classes, config.image_size, join(output_dir, GRADCAM_PNG))


def write_prediction_examples(path: str, labels, probs, extras: dict) -> None:
    import tensorflow as tf  # lazy: external.py imports this; TF only to score

    with tf.io.TFRecordWriter(path) as writer:
        for i, label in enumerate(labels):
            feature = {
                fk.LABEL_ID_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                fk.PREDICTION_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=probs[i].tolist())),
            }
            for k, values in extras.items():
                feature[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[values[i].encode()]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def eval_config(num_classes: int):
    from tensorflow_model_analysis.proto import config_pb2 as cfg  # lazy: external.py imports this; TFMA only to score

    return cfg.EvalConfig(
        model_specs=[cfg.ModelSpec(label_key=fk.LABEL_ID_KEY, prediction_key=fk.PREDICTION_KEY)],
        slicing_specs=[cfg.SlicingSpec()] + [cfg.SlicingSpec(feature_keys=[k]) for k in SLICE_FEATURES],
        metrics_specs=[
            cfg.MetricsSpec(metrics=[
                cfg.MetricConfig(class_name="ExampleCount"),
                # thresholds=[0.0]: the predicted class is the argmax, every example counted.
                cfg.MetricConfig(class_name="MultiClassConfusionMatrixPlot", config='{"thresholds": [0.0]}'),
            ]),
            cfg.MetricsSpec(
                metrics=[cfg.MetricConfig(class_name="AUC")],
                binarize=cfg.BinarizationOptions(class_ids={"values": list(range(num_classes))}),
            ),
        ],
    )


def _slice_name(slice_key) -> str:
    """`overall`, or `feature=value` joined by `;`; a metadata value the source lacked reads
    `(unknown)` rather than an empty string."""
    if not slice_key:
        return "overall"
    return ";".join(f"{k}={v if v not in ('', b'') else '(unknown)'}" for k, v in slice_key)


def read_tfma_results(output_path: str, num_classes: int) -> dict[str, dict]:
    """{slice name: {"confusion": n x n counts, "auc": {class_id: auc}, "n": count}} from TFMA."""
    import tensorflow_model_analysis as tfma  # lazy: external.py imports this; TFMA only to score

    results: dict[str, dict] = {}
    for m in tfma.load_metrics(output_path):
        name = _slice_name(tfma.slicer.deserialize_slice_key(m.slice_key))
        entry = results.setdefault(name, {"auc": {}, "confusion": np.zeros((num_classes, num_classes))})
        for kv in m.metric_keys_and_values:
            value = kv.value.double_value.value if kv.value.HasField("double_value") else None
            if kv.key.name == "auc" and kv.key.sub_key.HasField("class_id"):
                entry["auc"][kv.key.sub_key.class_id.value] = value
            elif kv.key.name == "example_count":
                entry["n"] = int(value or 0)
    for plots in tfma.load_plots(output_path):
        name = _slice_name(tfma.slicer.deserialize_slice_key(plots.slice_key))
        entry = results.setdefault(name, {"auc": {}, "confusion": np.zeros((num_classes, num_classes))})
        for kv in plots.plot_keys_and_values:
            matrices = kv.value.multi_class_confusion_matrix_at_thresholds.matrices
            for e in matrices[0].entries if matrices else []:
                if 0 <= e.predicted_class_id < num_classes:
                    entry["confusion"][e.actual_class_id, e.predicted_class_id] = e.num_weighted_examples
    return results


def plot_confusion(confusion: np.ndarray, classes: Sequence[str], path: str) -> None:
    import matplotlib  # lazy (with pyplot below): matplotlib only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion, dtype=float), where=rows > 0)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, data, title, fmt in ((axes[0], confusion, "counts", "{:.0f}"),
                                 (axes[1], normalised, "row-normalised (recall)", "{:.2f}")):
        ax.imshow(data, cmap="Greys", vmin=0, vmax=max(data.max(), 1e-9))
        ax.set_title(title)
        ax.set_xticks(range(len(classes)), classes, rotation=30)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for (i, j), v in np.ndenumerate(data):
            dark = v > data.max() / 2
            ax.text(j, i, fmt.format(v), ha="center", va="center", color="white" if dark else "black")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _defined_aucs(result: dict) -> dict[int, float]:
    """TFMA's one-vs-rest AUCs, keeping only classes with both positives and negatives in the
    slice: a class absent from a dataset (or the only class in it) has no ROC, so no AUC."""
    cm = result["confusion"]
    return {i: v for i, v in result["auc"].items() if 0 < cm[i].sum() < cm.sum()}


def age_group_metrics(labels: np.ndarray, probs: np.ndarray, extras: dict, classes: Sequence[str],
                      seed: int) -> dict:
    """Per age group: recall and specificity per class with patient-bootstrap 95% CIs.

    Where age and class are confounded (every COVID film an adult, every normal one a child),
    the overall recall hides the question that matters: is a healthy adult called COVID?
    A class absent from a group has recall None, not 0.
    """
    groups = np.array([g or "(unknown)" for g in extras[fk.AGE_GROUP_KEY]])
    patients = np.array(extras[fk.PATIENT_ID_KEY])
    out = {}
    for group in sorted(set(groups.tolist())):
        mask = groups == group
        m = metrics_from_probabilities(labels[mask], probs[mask], classes)
        ci = bootstrap_ci(labels[mask], probs[mask], patients[mask], classes, seed=seed)
        per_class = {}
        for c in classes:
            support, negatives = m["per_class"][c]["support"], int(mask.sum()) - m["per_class"][c]["support"]
            per_class[c] = {
                "support": support,
                "recall": m["per_class"][c]["recall"] if support else None,
                "recall_ci95": ci[c]["recall"],
                "specificity": m["per_class"][c]["specificity"] if negatives else None,
                "specificity_ci95": ci[c]["specificity"],
            }
        out[group] = {"n": int(mask.sum()), "macro_recall": m["macro_recall"], "per_class": per_class}
    return out


def shortcut_checks(config: PipelineConfig, model_dir: str, test_pattern: str, train_pattern: str | None,
                    metrics: dict, age_groups: dict) -> dict:
    """The trait probe, the lungs-hidden test and the calls per age group (report/shortcut.py);
    a check that cannot run says why instead of failing the evaluation."""
    section: dict[str, dict] = {"age_groups": age_groups}
    if not train_pattern:
        section["trait_probe"] = {"skipped": "no train split here (external evaluation): nothing to fit a probe on"}
    else:
        try:
            section["trait_probe"] = shortcut.trait_probe(
                train_pattern, test_pattern, config.classes, metrics, config.seed,
                config.probe_margin, config.probe_max_macro_recall)
        except Exception as e:  # a check about the model must never withhold its metrics
            section["trait_probe"] = {"skipped": f"failed: {type(e).__name__}: {e}"}
    try:
        section["lungs_hidden"] = shortcut.lungs_hidden(
            model_dir, test_pattern, config.classes, config.image_size, config.lungs_hidden_fraction,
            config.lungs_hidden_margin, metrics, config.tta, config.batch_size)
    except Exception as e:
        section["lungs_hidden"] = {"skipped": f"failed: {type(e).__name__}: {e}"}
    for check in section.values():
        if check.get("skipped"):
            print(f"cxrflow: warning: shortcut check skipped: {check['skipped']}", file=sys.stderr)
    section["warnings"] = shortcut.warnings({"shortcut": section})
    return section


def evaluate_model(
    config: PipelineConfig, model_dir: str, test_pattern: str, output_dir: str,
    train_pattern: str | None = None, beam_args: Sequence[str] = (), external: dict | None = None,
) -> dict:
    """Scores the model on the examples of `test_pattern`; writes metrics.json (with
    patient-level bootstrap "ci95", per-age-group recall and the shortcut checks), slices.json,
    confusion_matrix.png, roc_curves.png, and the explanations tsne.png, tsne.json and gradcam.png.

    `train_pattern` feeds the trait probe. `external` (for `cxrflow evaluate`) is recorded in
    metrics.json; then the recall and specificity of a class the data lacks are None, not 0.
    Returns {"metrics", "labels", "probabilities"}.
    """
    import tensorflow_model_analysis as tfma  # lazy (both): external.py imports this; TFMA and Beam only to score
    from apache_beam.options.pipeline_options import PipelineOptions

    os.makedirs(output_dir, exist_ok=True)
    classes = list(config.classes)
    labels, probs, extras = predict_split(model_dir, test_pattern, classes, config.batch_size)
    if len(labels) == 0:
        raise ValueError("the test split is empty: nothing to evaluate")
    pred_dir = join(output_dir, PREDICTIONS_DIR)
    os.makedirs(pred_dir, exist_ok=True)
    pred_file = join(pred_dir, "predictions.tfrecord")
    write_prediction_examples(pred_file, labels, probs, extras)

    tfma_dir = join(output_dir, "tfma")
    tfma.run_model_analysis(
        eval_shared_model=None, eval_config=eval_config(len(classes)), data_location=pred_file,
        output_path=tfma_dir, pipeline_options=PipelineOptions(list(beam_args or config.beam_args)),
    )
    results = read_tfma_results(tfma_dir, len(classes))
    overall = results["overall"]
    metrics = metrics_from_confusion(overall["confusion"], classes, _defined_aucs(overall))
    slices = {name: metrics_from_confusion(r["confusion"], classes, _defined_aucs(r))
              for name, r in sorted(results.items())}
    # Patient-level bootstrap CIs of per-class recall/specificity, beside TFMA's point estimates.
    metrics["ci95"] = bootstrap_ci(labels, probs, extras[fk.PATIENT_ID_KEY], classes, seed=config.seed)
    metrics["by_age_group"] = age_group_metrics(labels, probs, extras, classes, config.seed)
    metrics["classes_absent"] = [c for c in classes if metrics["per_class"][c]["support"] == 0]
    metrics["shortcut"] = shortcut_checks(config, model_dir, test_pattern, train_pattern, metrics,
                                          shortcut.age_group_calls(labels, probs, extras[fk.AGE_GROUP_KEY], classes))
    if external is not None:
        metrics["external"] = external
        predicted = np.array(metrics["confusion_matrix"]).sum(axis=0)
        for i, m in enumerate(metrics["per_class"].values()):  # undefined, not zero
            if m["support"] == 0:  # nothing to recall
                m["recall"] = m["f1"] = None
            if m["support"] == metrics["n"]:  # no negatives
                m["specificity"] = None
            if predicted[i] == 0:  # never predicted: no precision
                m["precision"] = m["f1"] = None
    write_json_atomic(join(output_dir, METRICS_FILE), metrics)
    write_json_atomic(join(output_dir, SLICES_FILE), slices)
    plot_confusion(np.array(metrics["confusion_matrix"], dtype=float), classes, join(output_dir, CONFUSION_PNG))
    plot_roc(labels, probs, classes, join(output_dir, ROC_PNG))
    np.savez(join(pred_dir, "predictions.npz"), labels=labels, probabilities=probs,
             patient_id=np.array(extras[fk.PATIENT_ID_KEY]), source=np.array(extras[fk.SOURCE_KEY]))
    try:
        write_explanations(config, model_dir, test_pattern, labels, probs, extras[fk.SOURCE_KEY], output_dir)
    except Exception as e:  # pictures for people: never withhold the metrics and blessing over them
        print(f"cxrflow: warning: t-SNE/Grad-CAM not written: {type(e).__name__}: {e}", file=sys.stderr)
    write_gallery(config, model_dir, test_pattern, labels, probs, extras, output_dir)  # report's error gallery
    return {"metrics": metrics, "labels": labels, "probabilities": probs}


def run_evaluator(
    config: PipelineConfig, model_dir: str, test_pattern: str, output_dir: str,
    baseline_model_dir: str | None = None, beam_args: Sequence[str] = (), train_pattern: str | None = None,
) -> dict:
    """evaluate_model, then the blessing (blessing.json).

    With `baseline_model_dir` (the model being served), the baseline is evaluated on the same
    test examples, so the change threshold compares like with like.
    """
    result = evaluate_model(config, model_dir, test_pattern, output_dir, train_pattern, beam_args)
    # TFMA thresholds with the served model as baseline, plus the paired bootstrap (blessing.py).
    blessing = bless(config, result["labels"], result["probabilities"], test_pattern, output_dir,
                     baseline_model_dir, beam_args=beam_args)
    return {"metrics": result["metrics"], "blessing": blessing}
