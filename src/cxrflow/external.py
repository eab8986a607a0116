"""`cxrflow evaluate`: an existing model scored on any dataset, with no training, blessing or push.

The data goes through ExampleGen as in a run (the same checks, exclusions, de-duplication and
tf.Examples), then every example it kept, whatever split it planned, is scored by the
Evaluator: an external set is all test. The classes, image size and TTA views come from the
model's own metadata, and the sources it was trained on are named in metrics.json and the
report, so nobody mistakes the result for a test on the training distribution.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence

from cxrflow.config import PipelineConfig
from cxrflow.io_utils import join, read_json, write_json_atomic
from cxrflow.report import build_report
from cxrflow.runs import RunExists
from cxrflow.stages.evaluator import evaluate_model
from cxrflow.stages.example_gen import run_example_gen, split_dir
from cxrflow.stages.pusher import complete_versions, latest_model_dir

EXAMPLES_DIR = "examples"
INGEST_REPORT = "ingest_report.json"
MODEL_METADATA = os.path.join("assets.extra", "cxrflow_model.json")


def resolve_model_dir(path: str, model_name: str = "cxrflow") -> str:
    """A SavedModel dir as given, or the newest complete version of a serving dir: either
    `<serving_dir>/<model_name>` or `<serving_dir>` itself (then `model_name` picks the model)."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    parent, name = os.path.split(os.path.normpath(path))
    if complete_versions(parent, name):
        return latest_model_dir(parent, name)
    latest = latest_model_dir(path, model_name)
    if latest is None:
        raise FileNotFoundError(
            f"{path} is neither a SavedModel (no saved_model.pb) nor a serving dir holding a version of "
            f"{model_name!r}: pass a model export or the serving dir it was pushed to")
    return latest


def model_info(model_dir: str) -> dict:
    """The model's metadata: classes, image_size, tta and, where the export recorded it, trained_on.

    Read from assets.extra (plain JSON, no TF needed); a model exported without that file is
    asked through its `metadata` signature.
    """
    path = os.path.join(model_dir, MODEL_METADATA)
    if os.path.isfile(path):
        info = dict(read_json(path))
    else:
        import tensorflow as tf  # lazy: only exports without assets.extra need the graph

        raw = tf.saved_model.load(model_dir).signatures["metadata"]()
        info = {k: v.numpy() for k, v in raw.items()}
        info["classes"] = [c.decode() for c in info["classes"]]
        for key in ("image_size", "tta"):
            if key in info:
                info[key] = int(info[key])
        if "normalization" in info:
            info["normalization"] = info["normalization"].decode()
        if "trained_on" in info:
            value = info["trained_on"]
            info["trained_on"] = (json.loads(value.decode()) if getattr(value, "ndim", 1) == 0
                                  else [v.decode() for v in value])
    if not info.get("classes") or not info.get("image_size"):
        raise ValueError(f"{model_dir}: the model's metadata names no classes or image size: not a cxrflow export")
    return info


def trained_on_text(trained_on: object) -> str:
    """The training sources in words, whatever shape the export recorded them in."""
    if not trained_on:
        return "not recorded (this model was exported before cxrflow recorded its training sources)"
    if isinstance(trained_on, dict) and isinstance(trained_on.get("by_source"), dict):
        # The Trainer's record: {"sources": [...], "counts": {class: n}, "by_source": {source: {class: n}}}
        return "; ".join(f"{src}: {_counts(counts)}" for src, counts in trained_on["by_source"].items())
    if isinstance(trained_on, dict):
        return ", ".join(f"{k} ({_counts(v)})" for k, v in trained_on.items())
    if isinstance(trained_on, (list, tuple)):
        return ", ".join(str(v) for v in trained_on)
    return str(trained_on)


def _counts(value: object) -> str:
    return ", ".join(f"{c} {n}" for c, n in value.items()) if isinstance(value, dict) else str(value)


def merged_ingest_report(report: dict) -> dict:
    """ExampleGen's report with its splits folded into one test split: here every image is scored."""
    out = dict(report)
    classes = report.get("classes", [])
    out["splits"] = {"test": {c: sum(s.get(c, 0) for s in report["splits"].values()) for c in classes}}
    by_source: dict[str, dict[str, int]] = {}
    for sources in report.get("by_source", {}).values():
        for source, counts in sources.items():
            for c, n in counts.items():
                by_source.setdefault(source, {}).setdefault(c, 0)
                by_source[source][c] += n
    out["by_source"] = {"test": by_source}
    out["external_note"] = "external evaluation: every image ExampleGen kept is scored; its split plan is not used"
    return out


def run_external_evaluation(
    model: str, data: Sequence[str], output_dir: str, label: str = "", model_name: str = "cxrflow",
    force: bool = False, **config_fields,
) -> dict:
    """Scores the model at `model` on `data` ("KIND:PATH" entries); writes metrics.json (with
    `external`), slices.json, the pictures and report.html to `output_dir`. Returns the metrics.

    `config_fields` are passed to PipelineConfig (views, class_map, batch_size, seed, the
    lungs-hidden knobs...); classes, image size and TTA come from the model.
    """
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(os.path.join(output_dir, "metrics.json")) and not force:
        raise RunExists(f"{output_dir} already holds an evaluation (metrics.json); pass --force to redo it "
                        "or choose another --output")
    model_dir = resolve_model_dir(model, model_name)
    info = model_info(model_dir)
    classes = tuple(info["classes"])
    if label and label not in classes:
        raise ValueError(f"--label {label!r} is not one of the model's classes {list(classes)}")
    config = PipelineConfig(
        data=tuple(data), classes=classes, image_size=int(info["image_size"]), tta=int(info.get("tta", 1)),
        folder_label=label, min_recall=(), operating_point=(), **config_fields)
    examples = os.path.join(output_dir, EXAMPLES_DIR)
    if os.path.isdir(examples):
        shutil.rmtree(examples)  # a fresh ingest: the data may have changed since
    report = run_example_gen(config, examples)
    write_json_atomic(join(output_dir, INGEST_REPORT), merged_ingest_report(report))
    counts = {c: sum(s.get(c, 0) for s in report["splits"].values()) for c in classes}
    present = [c for c in classes if counts[c]]
    external = {
        "model_dir": model_dir,
        "trained_on": info.get("trained_on"),
        "trained_on_text": trained_on_text(info.get("trained_on")),
        "data": list(config.data),
        "classes_present": present,
        "note": (
            "External evaluation: a model trained elsewhere, scored on data it never saw; no blessing, no push. "
            + (f"Only {', '.join(present)} present: recall is reported for the classes present, and no AUC is "
               "given for a class without both positives and negatives." if len(present) < len(classes) else "")
        ),
    }
    # Every split ExampleGen wrote: an external set has no training part.
    pattern = join(split_dir(examples, "*"), "*.tfrecord")
    result = evaluate_model(config, model_dir, pattern, output_dir, external=external)
    build_report(output_dir)
    return result["metrics"]
