"""The one KFP v2 pipeline definition: built from a config, run locally or compiled for KFP/Vertex.

`create_pipeline(config)` only wires tasks; `run_local` (kfp.local) and `compile_pipeline`
(KFP IR YAML for Kubeflow Pipelines or Vertex AI Pipelines) are separate, and the CLI only
calls them.
"""

# No `from __future__ import annotations`: KFP reads the pipeline function's real annotations.

import contextlib
import os
import sys

from cxrflow import console
from cxrflow.config import STAGE_FIELDS, ConfigError, PipelineConfig, Resources, stage_json
from cxrflow.version import image_uri

PIPELINE_NAME = "cxrflow"


def _apply_resources(task, resources: Resources) -> None:
    if resources.cpu:
        task.set_cpu_limit(resources.cpu)
    if resources.memory:
        task.set_memory_limit(resources.memory)
    if resources.accelerator_type and resources.accelerator_count > 0:
        task.set_accelerator_type(resources.accelerator_type)
        task.set_accelerator_limit(resources.accelerator_count)


# Tasks KFP may cache (remote runs; kfp.local runs uncached and uses stage_cache.py instead).
# Each task's key covers its inputs: its stage's config fields (config.STAGE_FIELDS) and its
# input artifacts, so a knob reaches only the stages that read it. What the keys cannot see is
# outside the pipeline, so those tasks always run: the data snapshot lists the data files
# (names, sizes, modification times) and hands ExampleGen that fingerprint, which is how
# ExampleGen's key sees new or changed films; the served-model resolver reads today's serving
# dir; the Pusher and its Else branch act on the world. The Evaluator is cacheable but
# re-runs whenever the resolver runs, since its artifact is new each time.
CACHED_TASKS = ("example_gen", "transform", "resample", "trainer", "evaluator")


def create_pipeline(config: PipelineConfig):
    """Returns the `@dsl.pipeline` function for `config`:
    DataSnapshot -> ExampleGen -> Transform/Resample -> Trainer -> Evaluator (with the served
    model from the resolver) -> Pusher if blessed, else PushSkipped (push.json says why)."""
    from kfp import dsl  # lazy (with components): KFP only to build a pipeline, not on import

    from cxrflow import components

    def component(func):
        # install_kfp_package=False: the project image already has everything; nothing is
        # pip-installed when a task starts. kfp.local ignores the image.
        return dsl.component(func, base_image=config.base_image or None, install_kfp_package=False)

    (data_snapshot, example_gen, transform, resample, trainer, served_model, evaluator, pusher,
     push_skipped) = (component(f) for f in components.STAGES)
    settings = {stage: stage_json(config, stage) for stage in STAGE_FIELDS}

    @dsl.pipeline(name=PIPELINE_NAME, description="Train, judge and ship a chest X-ray classifier")
    def cxrflow_pipeline(
        example_gen_config: str = settings["example_gen"], transform_config: str = settings["transform"],
        resample_config: str = settings["resample"], trainer_config: str = settings["trainer"],
        served_model_config: str = settings["served_model"], evaluator_config: str = settings["evaluator"],
        pusher_config: str = settings["pusher"],
    ):
        snap = data_snapshot(config_json=example_gen_config).set_display_name("DataSnapshot")
        gen = example_gen(config_json=example_gen_config, data_fingerprint=snap.output).set_display_name("ExampleGen")
        tf_ = transform(config_json=transform_config, examples=gen.outputs["examples"]).set_display_name("Transform")
        rs = resample(config_json=resample_config, examples=gen.outputs["examples"]).set_display_name("Resample")
        tr = trainer(
            config_json=trainer_config, examples=gen.outputs["examples"],
            transform_graph=tf_.outputs["transform_graph"], resampled=rs.outputs["resampled"],
        ).set_display_name("Trainer")
        served = served_model(config_json=served_model_config).set_display_name("ServedModel")
        ev = evaluator(
            config_json=evaluator_config, examples=gen.outputs["examples"], model=tr.outputs["model"],
            served=served.outputs["served"],
        ).set_display_name("Evaluator")
        with dsl.If(ev.outputs["blessed"] == True, name="blessed"):  # noqa: E712 (a KFP condition)
            pu = pusher(config_json=pusher_config, model=tr.outputs["model"], blessing=ev.outputs["blessing"])
            pu.set_display_name("Pusher")
        with dsl.Else(name="not-blessed"):
            skip = push_skipped(blessing=ev.outputs["blessing"]).set_display_name("PushSkipped")
        tasks = {"data_snapshot": snap, "example_gen": gen, "transform": tf_, "resample": rs, "trainer": tr,
                 "served_model": served, "evaluator": ev, "pusher": pu, "push_skipped": skip}
        for name, task in tasks.items():
            _apply_resources(task, config.trainer_resources if name == "trainer" else config.default_resources)
            task.set_caching_options(name in CACHED_TASKS)

    return cxrflow_pipeline


def compile_pipeline(config: PipelineConfig, package_path: str) -> str:
    """Writes the KFP IR YAML for `config` to `package_path`.

    Refuses a config without `base_image`: every task runs cxrflow's code, so the image must be
    the one the Dockerfile builds (`cxrflow compile --registry` derives it for this version).
    """
    from kfp import compiler  # lazy: KFP only to compile

    if not config.base_image:
        raise ConfigError(
            "no image for the pipeline's tasks: pass --base-image IMAGE, or --registry REGISTRY for this "
            f"version's image ({image_uri('REGISTRY')}, built by the Dockerfile and cloudbuild.yaml)"
        )
    os.makedirs(os.path.dirname(os.path.abspath(package_path)), exist_ok=True)
    compiler.Compiler().compile(create_pipeline(config), package_path=package_path)
    return package_path


def run_local(config: PipelineConfig, pipeline_root: str, output_dir: str | None = None,
              verbose: bool = False) -> None:
    """Runs the whole pipeline here through kfp.local (SubprocessRunner, this environment).

    With `output_dir`, the console shows one line per stage and progress bars, and everything
    the tasks print goes to `output_dir/logs/<task>.log` (also to the console with `verbose`);
    a failed task raises console.StageFailed naming the stage, the reason and its log.
    """
    from kfp import local  # lazy: KFP only for a local run

    # Components start `python3` from PATH: make it this interpreter's environment.
    bin_dir = os.path.dirname(sys.executable)
    if not os.environ.get("PATH", "").startswith(bin_dir + os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    pipeline_root = os.path.abspath(pipeline_root)
    with console.capture(output_dir, pipeline_root, verbose) if output_dir else contextlib.nullcontext():
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True)
        create_pipeline(config)()
