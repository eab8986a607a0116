import json
import os

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


GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "pipeline_structure.json")


def pipeline_structure(spec: dict) -> dict:
    """What must not drift silently: tasks, edges, artifact wiring, images and resources."""
    tasks = {}
    for name, task in spec["root"]["dag"]["tasks"].items():
        inputs = task.get("inputs", {})
        wiring = {k: v["taskOutputArtifact"] for k, v in inputs.get("artifacts", {}).items()}
        tasks[name] = {
            "component": task["componentRef"]["name"],
            "depends_on": sorted(task.get("dependentTasks", [])),
            "artifacts_in": {k: f"{v['producerTask']}.{v['outputArtifactKey']}" for k, v in sorted(wiring.items())},
            "parameters_in": sorted(inputs.get("parameters", {})),
            "caching": task.get("cachingOptions", {}).get("enableCache", False),
        }
    components = {}
    for name, comp in spec["components"].items():
        outputs = comp.get("outputDefinitions", {}).get("artifacts", {})
        components[name] = {k: v["artifactType"]["schemaTitle"] for k, v in sorted(outputs.items())}
    executors = {name: {"image": ex["container"]["image"], "resources": ex["container"].get("resources", {})}
                 for name, ex in spec["deploymentSpec"]["executors"].items()}
    return {"tasks": tasks, "outputs": components, "executors": executors}


def test_compiled_structure_matches_the_golden_file(tmp_path):
    config = PipelineConfig(
        base_image="europe-docker.pkg.dev/p/r/cxrflow:0.1.0",
        trainer_resources=Resources("8", "32G", "NVIDIA_TESLA_T4", 1),
        default_resources=Resources("2", "8G"),
    )
    spec = yaml.safe_load(open(compile_pipeline(config, str(tmp_path / "p.yaml"))))
    got = pipeline_structure(spec)
    if os.environ.get("CXRFLOW_UPDATE_GOLDEN"):
        with open(GOLDEN, "w") as f:
            json.dump(got, f, indent=2, sort_keys=True)
            f.write("\n")
    with open(GOLDEN) as f:
        assert got == json.load(f), "pipeline structure changed: review, then CXRFLOW_UPDATE_GOLDEN=1 pytest ..."
