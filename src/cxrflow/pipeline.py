"""The one KFP v2 pipeline definition: built from a config, run locally or compiled for KFP/Vertex.

`create_pipeline(config)` only wires tasks; `run_local` (kfp.local) and `compile_pipeline`
(KFP IR YAML for Kubeflow Pipelines or Vertex AI Pipelines) are separate, and the CLI only
calls them.
"""

# No `from __future__ import annotations`: KFP reads the pipeline function's real annotations.

import os
import sys

from cxrflow.config import PipelineConfig, Resources

PIPELINE_NAME = "cxrflow"


def _apply_resources(task, resources: Resources) -> None:
    if resources.cpu:
        task.set_cpu_limit(resources.cpu)
    if resources.memory:
        task.set_memory_limit(resources.memory)
    if resources.accelerator_type and resources.accelerator_count > 0:
        task.set_accelerator_type(resources.accelerator_type)
        task.set_accelerator_limit(resources.accelerator_count)


def create_pipeline(config: PipelineConfig):
    """Returns the `@dsl.pipeline` function for `config` (ExampleGen -> ... -> Pusher)."""
    from kfp import dsl

    from cxrflow import components

    def component(func):
        # install_kfp_package=False: the project image already has everything; nothing is
        # pip-installed when a task starts.
        return dsl.component(func, base_image=config.base_image, install_kfp_package=False)

    example_gen, transform, resample, trainer, evaluator, pusher = (component(f) for f in components.STAGES)

    @dsl.pipeline(name=PIPELINE_NAME, description="Train, judge and ship a chest X-ray classifier")
    def cxrflow_pipeline(config_json: str = config.to_json()):
        gen = example_gen(config_json=config_json).set_display_name("ExampleGen")
        tf_ = transform(config_json=config_json, examples=gen.outputs["examples"]).set_display_name("Transform")
        rs = resample(config_json=config_json, examples=gen.outputs["examples"]).set_display_name("Resample")
        tr = trainer(
            config_json=config_json, examples=gen.outputs["examples"],
            transform_graph=tf_.outputs["transform_graph"], resampled=rs.outputs["resampled"],
        ).set_display_name("Trainer")
        ev = evaluator(
            config_json=config_json, examples=gen.outputs["examples"], model=tr.outputs["model"]
        ).set_display_name("Evaluator")
        pu = pusher(
            config_json=config_json, model=tr.outputs["model"], evaluation=ev.outputs["evaluation"]
        ).set_display_name("Pusher")
        for task in (gen, tf_, rs, ev, pu):
            _apply_resources(task, config.default_resources)
            # Retraining must read the data as it is today, and compare with today's served model.
            task.set_caching_options(False)
        _apply_resources(tr, config.trainer_resources)
        tr.set_caching_options(False)

    return cxrflow_pipeline


def compile_pipeline(config: PipelineConfig, package_path: str) -> str:
    """Writes the KFP IR YAML for `config` to `package_path`."""
    from kfp import compiler

    os.makedirs(os.path.dirname(os.path.abspath(package_path)), exist_ok=True)
    compiler.Compiler().compile(create_pipeline(config), package_path=package_path)
    return package_path


def run_local(config: PipelineConfig, pipeline_root: str) -> None:
    """Runs the whole pipeline here through kfp.local (SubprocessRunner, this environment)."""
    from kfp import local

    # Components start `python3` from PATH: make it this interpreter's environment.
    bin_dir = os.path.dirname(sys.executable)
    if not os.environ.get("PATH", "").startswith(bin_dir + os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=os.path.abspath(pipeline_root),
               raise_on_error=True)
    create_pipeline(config)()
