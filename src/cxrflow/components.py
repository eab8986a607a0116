"""Thin KFP v2 components: each one parses the config and calls its stage function.

No `from __future__ import annotations` here: KFP reads the real annotation objects.

These functions are turned into components by `pipeline.create_pipeline` with the project's
image as `base_image`. KFP ships only a function's source to the container, so every import
lives inside the function body. No logic lives here: stages are tested without KFP.

Each task's `config_json` holds only its stage's fields (config.STAGE_FIELDS), read back with
`config.stage_config`, so a knob one stage ignores never changes that task's cache key.
"""

from typing import NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def data_snapshot(config_json: str) -> str:
    """The data files' fingerprint (names, sizes, modification times): ExampleGen's cache key
    changes whenever the data does, although its inputs are only paths."""
    from cxrflow.config import stage_config
    from cxrflow.stage_cache import data_fingerprint

    return data_fingerprint(stage_config(config_json).data)


def example_gen(config_json: str, data_fingerprint: str, examples: Output[Dataset]) -> None:
    import json

    from cxrflow.config import stage_config
    from cxrflow.io_utils import read_json
    from cxrflow.stage_cache import reuse_or_run
    from cxrflow.stages.example_gen import REPORT_FILE, run_example_gen

    config = stage_config(config_json)
    examples.metadata["data_fingerprint"] = data_fingerprint
    reuse_or_run("example_gen", config, [], examples.path, lambda: run_example_gen(config, examples.path))
    report = read_json(f"{examples.path}/{REPORT_FILE}")
    examples.metadata["splits"] = report["splits"]
    examples.metadata["duplicates_removed"] = report["duplicates_removed"]
    examples.metadata["skipped"] = len(report["skipped"])
    print(json.dumps({"splits": report["splits"], "skipped": len(report["skipped"])}))


def transform(config_json: str, examples: Input[Dataset], transform_graph: Output[Artifact]) -> None:
    from cxrflow.config import stage_config
    from cxrflow.stage_cache import reuse_or_run
    from cxrflow.stages.example_gen import split_pattern
    from cxrflow.stages.transform import run_transform

    config = stage_config(config_json)
    reuse_or_run("transform", config, [examples.path], transform_graph.path,
                 lambda: run_transform(config, split_pattern(examples.path, "train"), transform_graph.path))


def resample(config_json: str, examples: Input[Dataset], resampled: Output[Dataset]) -> None:
    import json

    from cxrflow.config import stage_config
    from cxrflow.io_utils import read_json
    from cxrflow.stage_cache import reuse_or_run
    from cxrflow.stages.example_gen import REPORT_FILE, split_pattern
    from cxrflow.stages.resample import RESAMPLE_FILE, run_resample

    config = stage_config(config_json)
    counts = read_json(f"{examples.path}/{REPORT_FILE}")["splits"]["train"]
    reuse_or_run("resample", config, [examples.path], resampled.path,
                 lambda: run_resample(config, split_pattern(examples.path, "train"), counts, resampled.path))
    summary = read_json(f"{resampled.path}/{RESAMPLE_FILE}")
    resampled.metadata["counts_after"] = summary["counts_after"]
    print(json.dumps({k: summary[k] for k in ("mode", "counts_before", "counts_after", "class_weights")}))


def trainer(
    config_json: str, examples: Input[Dataset], transform_graph: Input[Artifact], resampled: Input[Dataset],
    model: Output[Model], model_run: Output[Artifact],
) -> None:
    import os
    import shutil

    from cxrflow.config import stage_config
    from cxrflow.io_utils import read_json
    from cxrflow.stage_cache import fingerprint, reuse_or_run
    from cxrflow.stages.trainer import SUMMARY_FILE, run_trainer

    config = stage_config(config_json)
    inputs = [examples.path, transform_graph.path, resampled.path]
    # Locally the working dir outlives the pipeline run, so a killed run resumes from its backup.
    run_dir = model_run.path
    if config.work_dir:
        run_dir = os.path.join(config.work_dir, "trainer-" + fingerprint("trainer", config, inputs)[:16])
    reuse_or_run("trainer", config, inputs, model.path,
                 lambda: run_trainer(config, examples.path, transform_graph.path, resampled.path, model.path, run_dir))
    if run_dir != model_run.path:
        shutil.copytree(run_dir, model_run.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("cache*", "backup"))
    model.metadata["epochs_run"] = read_json(os.path.join(model_run.path, SUMMARY_FILE))["epochs_run"]


def served_model(config_json: str, served: Output[Model]) -> None:
    """Resolver: the newest complete version in the serving dir, as a Model artifact whose uri IS
    that version's folder (no copy), so the run's lineage names the model the candidate was
    compared with. Without one, the artifact says found=False."""
    from cxrflow.config import stage_config
    from cxrflow.stages.pusher import complete_versions, latest_model_dir

    config = stage_config(config_json)
    latest = latest_model_dir(config.serving_dir, config.model_name)
    served.metadata.update({"found": latest is not None, "serving_dir": config.serving_dir,
                            "model_name": config.model_name})
    if latest is not None:
        served.uri = latest
        served.metadata.update({"model_uri": latest,
                                "version": complete_versions(config.serving_dir, config.model_name)[-1]})
    print(f"served model: {latest or 'none (first push)'}")


def evaluator(
    config_json: str, examples: Input[Dataset], model: Input[Model], served: Input[Model],
    evaluation: Output[Artifact], metrics: Output[Metrics], blessing: Output[Artifact],
) -> NamedTuple("Outputs", [("blessed", bool)]):
    import collections
    import os
    import shutil

    from cxrflow.config import stage_config
    from cxrflow.report.shortcut import kfp_metrics
    from cxrflow.stages.blessing import BLESSING_FILE
    from cxrflow.stages.evaluator import run_evaluator
    from cxrflow.stages.example_gen import split_pattern

    config = stage_config(config_json)
    # A served model on gs:// is read by TF through its URI (the /gcs/ mount exists only on Vertex).
    baseline = (served.uri if "://" in served.uri else served.path) if served.metadata.get("found") else None
    result = run_evaluator(config, model.path, split_pattern(examples.path, "test"), evaluation.path, baseline,
                           train_pattern=split_pattern(examples.path, "train"))
    m = result["metrics"]
    metrics.log_metric("accuracy", m["accuracy"])
    metrics.log_metric("macro_recall", m["macro_recall"])
    for name, values in m["per_class"].items():
        metrics.log_metric(f"recall_{name}", values["recall"])
        metrics.log_metric(f"specificity_{name}", values["specificity"])
    for key, value in kfp_metrics(m).items():  # trait probe and lungs hidden, beside the model's own
        metrics.log_metric(key, value)
    verdict = result["blessing"]
    evaluation.metadata["blessed"] = verdict["blessed"]
    # Lineage: which model was compared with which, on which examples, and the verdict.
    blessing.metadata.update({
        "blessed": verdict["blessed"], "rule": verdict["rule"], "reasons": verdict["reasons"],
        "candidate_uri": model.uri, "test_examples_uri": examples.uri,
        "baseline_uri": served.uri if baseline else "", "baseline_version": int(served.metadata.get("version", 0)),
    })
    os.makedirs(blessing.path, exist_ok=True)
    shutil.copyfile(os.path.join(evaluation.path, BLESSING_FILE), os.path.join(blessing.path, BLESSING_FILE))
    print("blessed" if verdict["blessed"] else "NOT blessed", *verdict["reasons"], sep="\n  ")
    return collections.namedtuple("Outputs", ["blessed"])(bool(verdict["blessed"]))


def pusher(config_json: str, model: Input[Model], blessing: Input[Artifact], pushed: Output[Artifact]) -> None:
    """Runs only under `dsl.If(blessed)`: pushes without reading the blessing again."""
    import json

    from cxrflow.config import stage_config
    from cxrflow.io_utils import write_json_atomic
    from cxrflow.stages.pusher import run_pusher

    config = stage_config(config_json)
    result = run_pusher(model.path, config.serving_dir, config.model_name, config.keep_versions, config)
    result["blessing_uri"] = blessing.uri
    pushed.metadata.update({k: v for k, v in result.items() if isinstance(v, (str, int, bool))})
    write_json_atomic(f"{pushed.path}/push.json", result)
    print(json.dumps(result))


def push_skipped(blessing: Input[Artifact], pushed: Output[Artifact]) -> None:
    """The `dsl.Else` branch: nothing is pushed, and push.json says why (from the blessing)."""
    import json

    from cxrflow.io_utils import write_json_atomic

    result = {"pushed": False, "reason": "model not blessed", "blessing_reasons": list(blessing.metadata["reasons"]),
              "blessing_uri": blessing.uri}
    pushed.metadata.update({"pushed": False, "reason": result["reason"]})
    write_json_atomic(f"{pushed.path}/push.json", result)
    print(json.dumps(result))


STAGES = (data_snapshot, example_gen, transform, resample, trainer, served_model, evaluator, pusher, push_skipped)
