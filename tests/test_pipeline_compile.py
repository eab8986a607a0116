import yaml

from cxrflow.config import PipelineConfig, Resources
from cxrflow.pipeline import compile_pipeline

ORDER = ["example-gen", "transform", "resample", "trainer", "evaluator", "pusher"]


def test_compiles_six_tasks_in_pipeline_order_with_image_and_resources(tmp_path):
    config = PipelineConfig(
        base_image="europe-docker.pkg.dev/p/r/cxrflow:0.1.0",
        trainer_resources=Resources("8", "32G", "NVIDIA_TESLA_T4", 1),
        default_resources=Resources("2", "8G"),
    )
    path = compile_pipeline(config, str(tmp_path / "pipeline.yaml"))
    spec = yaml.safe_load(open(path))
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(ORDER)
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    assert deps == {
        "example-gen": set(), "transform": {"example-gen"}, "resample": {"example-gen"},
        "trainer": {"example-gen", "transform", "resample"}, "evaluator": {"example-gen", "trainer"},
        "pusher": {"trainer", "evaluator"},
    }
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 6
    for ex in executors.values():
        container = ex["container"]
        assert container["image"] == config.base_image
        assert "pip install" not in " ".join(container.get("command", []) + container.get("args", []))
    trainer = executors["exec-trainer"]["container"]["resources"]
    assert trainer["accelerator"]["resourceType"] == "NVIDIA_TESLA_T4"
    assert int(trainer["accelerator"]["resourceCount"]) == 1
    assert trainer["resourceCpuLimit"] == "8" and trainer["resourceMemoryLimit"] == "32G"
    assert executors["exec-evaluator"]["container"]["resources"]["resourceCpuLimit"] == "2"
    assert "accelerator" not in executors["exec-evaluator"]["container"]["resources"]
