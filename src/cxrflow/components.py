"""Thin KFP v2 components: each one parses the config and calls its stage function.

No `from __future__ import annotations` here: KFP reads the real annotation objects.

These functions are turned into components by `pipeline.create_pipeline` with the project's
image as `base_image`. KFP ships only a function's source to the container, so every import
lives inside the function body. No logic lives here: stages are tested without KFP.
"""


from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def example_gen(config_json: str, examples: Output[Dataset]) -> None:
    import json

    from cxrflow.config import PipelineConfig
    from cxrflow.io_utils import read_json
    from cxrflow.stage_cache import reuse_or_run
    from cxrflow.stages.example_gen import REPORT_FILE, run_example_gen

    config = PipelineConfig.from_json(config_json)
    reuse_or_run("example_gen", config, [], examples.path, lambda: run_example_gen(config, examples.path))
    report = read_json(f"{examples.path}/{REPORT_FILE}")
    examples.metadata["splits"] = report["splits"]
    examples.metadata["duplicates_removed"] = report["duplicates_removed"]
    examples.metadata["skipped"] = len(report["skipped"])
    print(json.dumps({"splits": report["splits"], "skipped": len(report["skipped"])}))


def transform(config_json: str, examples: Input[Dataset], transform_graph: Output[Artifact]) -> None:
    from cxrflow.config import PipelineConfig
    from cxrflow.stage_cache import reuse_or_run
    from cxrflow.stages.example_gen import split_pattern
    from cxrflow.stages.transform import run_transform

    config = PipelineConfig.from_json(config_json)
    reuse_or_run("transform", config, [examples.path], transform_graph.path,
                 lambda: run_transform(config, split_pattern(examples.path, "train"), transform_graph.path))


def resample(config_json: str, examples: Input[Dataset], resampled: Output[Dataset]) -> None:
    import json

    from cxrflow.config import PipelineConfig
    from cxrflow.io_utils import read_json
    from cxrflow.stage_cache import reuse_or_run
    from cxrflow.stages.example_gen import REPORT_FILE, split_pattern
    from cxrflow.stages.resample import RESAMPLE_FILE, run_resample

    config = PipelineConfig.from_json(config_json)
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

    from cxrflow.config import PipelineConfig
    from cxrflow.io_utils import read_json
    from cxrflow.stage_cache import fingerprint, reuse_or_run
    from cxrflow.stages.trainer import SUMMARY_FILE, run_trainer

    config = PipelineConfig.from_json(config_json)
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


def evaluator(
    config_json: str, examples: Input[Dataset], model: Input[Model],
    evaluation: Output[Artifact], metrics: Output[Metrics],
) -> None:
    from cxrflow.config import PipelineConfig
    from cxrflow.stages.evaluator import run_evaluator
    from cxrflow.stages.example_gen import split_pattern
    from cxrflow.stages.pusher import latest_model_dir

    config = PipelineConfig.from_json(config_json)
    baseline = latest_model_dir(config.serving_dir, config.model_name)
    result = run_evaluator(config, model.path, split_pattern(examples.path, "test"), evaluation.path, baseline)
    m = result["metrics"]
    metrics.log_metric("accuracy", m["accuracy"])
    metrics.log_metric("macro_recall", m["macro_recall"])
    for name, values in m["per_class"].items():
        metrics.log_metric(f"recall_{name}", values["recall"])
        metrics.log_metric(f"specificity_{name}", values["specificity"])
    evaluation.metadata["blessed"] = result["blessing"]["blessed"]
    print("blessed" if result["blessing"]["blessed"] else "NOT blessed", *result["blessing"]["reasons"], sep="\n  ")


def pusher(config_json: str, model: Input[Model], evaluation: Input[Artifact], pushed: Output[Artifact]) -> None:
    import json

    from cxrflow.config import PipelineConfig
    from cxrflow.io_utils import write_json_atomic
    from cxrflow.stages.pusher import run_pusher

    config = PipelineConfig.from_json(config_json)
    result = run_pusher(model.path, evaluation.path, config.serving_dir, config.model_name, config.keep_versions,
                        config)
    pushed.metadata.update({k: v for k, v in result.items() if isinstance(v, (str, int, bool))})
    write_json_atomic(f"{pushed.path}/push.json", result)
    print(json.dumps(result))


STAGES = (example_gen, transform, resample, trainer, evaluator, pusher)
