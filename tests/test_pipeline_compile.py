"""The compiled pipeline: tasks, wiring, the blessing condition, per-stage settings and caching."""

import ast
import dataclasses
import glob
import json
import os

import pytest
import yaml

from cxrflow.config import (
    PIPELINE_ONLY_FIELDS,
    STAGE_FIELDS,
    ConfigError,
    PipelineConfig,
    Resources,
    stage_config,
    stage_fields,
    stage_json,
)
from cxrflow.pipeline import compile_pipeline
from cxrflow.stage_cache import fingerprint

SRC = os.path.join(os.path.dirname(__file__), "..", "src", "cxrflow")
IMAGE = "europe-docker.pkg.dev/p/r/cxrflow:0.1.0"


def _config(**changes) -> PipelineConfig:
    return PipelineConfig(base_image=IMAGE, trainer_resources=Resources("8", "32G", "NVIDIA_TESLA_T4", 1),
                          default_resources=Resources("2", "8G"), **changes)


def _compile(tmp_path, config=None) -> dict:
    return yaml.safe_load(open(compile_pipeline(config or _config(), str(tmp_path / "p.yaml"))))


def _all_tasks(spec: dict) -> dict:
    """Every task of every DAG (the root and the condition branches): name -> (dag, task)."""
    dags = {"root": spec["root"]["dag"]}
    dags.update({name: c["dag"] for name, c in spec["components"].items() if "dag" in c})
    return {task: (dag, t) for dag, d in dags.items() for task, t in d["tasks"].items()}


def test_compiles_every_task_with_image_and_resources(tmp_path):
    spec = _compile(tmp_path)
    tasks = _all_tasks(spec)
    stages = {"data-snapshot", "example-gen", "transform", "resample", "trainer", "served-model", "evaluator",
              "pusher", "push-skipped"}
    assert stages <= set(tasks)
    deps = {name: set(t.get("dependentTasks", [])) for name, (_, t) in tasks.items() if name in stages}
    assert deps == {
        "data-snapshot": set(), "example-gen": {"data-snapshot"}, "transform": {"example-gen"},
        "resample": {"example-gen"}, "trainer": {"example-gen", "transform", "resample"}, "served-model": set(),
        "evaluator": {"example-gen", "trainer", "served-model"}, "pusher": set(), "push-skipped": set(),
    }
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == len(stages)
    for ex in executors.values():
        container = ex["container"]
        assert container["image"] == IMAGE
        assert "pip install" not in " ".join(container.get("command", []) + container.get("args", []))
    trainer = executors["exec-trainer"]["container"]["resources"]
    assert trainer["accelerator"]["resourceType"] == "NVIDIA_TESLA_T4"
    assert int(trainer["accelerator"]["resourceCount"]) == 1
    assert trainer["resourceCpuLimit"] == "8" and trainer["resourceMemoryLimit"] == "32G"
    assert executors["exec-evaluator"]["container"]["resources"]["resourceCpuLimit"] == "2"
    assert "accelerator" not in executors["exec-evaluator"]["container"]["resources"]


def test_pusher_runs_only_under_the_blessed_condition_and_the_else_branch_says_why(tmp_path):
    tasks = _all_tasks(_compile(tmp_path))
    conditions = {name: t.get("triggerPolicy", {}).get("condition", "") for name, (_, t) in tasks.items()}
    blessed = "inputs.parameter_values['pipelinechannel--evaluator-blessed'] == true"
    pusher_branch = tasks["pusher"][0]
    skipped_branch = tasks["push-skipped"][0]
    branch_of = {dag: conditions[name] for name, (_, t) in tasks.items()
                 for dag in [t["componentRef"]["name"]]}
    assert branch_of[pusher_branch] == blessed
    assert branch_of[skipped_branch] == f"!({blessed})"
    # Neither reads blessing.json: both take the Evaluator's blessing artifact (lineage).
    for name in ("pusher", "push-skipped"):
        wiring = tasks[name][1]["inputs"]["artifacts"]["blessing"]
        assert wiring == {"componentInputArtifact": "pipelinechannel--evaluator-blessing"}
    ev = tasks["evaluator"][1]["inputs"]["artifacts"]
    assert ev["served"]["taskOutputArtifact"] == {"outputArtifactKey": "served", "producerTask": "served-model"}


def test_refuses_to_compile_without_an_image(tmp_path):
    with pytest.raises(ConfigError, match="--base-image IMAGE, or --registry REGISTRY"):
        compile_pipeline(PipelineConfig(), str(tmp_path / "p.yaml"))
    assert not (tmp_path / "p.yaml").exists()


# --- per-stage settings and caching -------------------------------------------------------------
def _defaults(spec: dict) -> dict:
    params = spec["root"]["inputDefinitions"]["parameters"]
    return {name: json.loads(p["defaultValue"]) for name, p in params.items()}


def test_each_task_receives_only_its_stage_fields(tmp_path):
    spec = _compile(tmp_path, _config(classes=("normal", "pneumonia"), min_recall=(("pneumonia", 0.7),),
                                         operating_point=(("pneumonia", 0.9),)))
    defaults = _defaults(spec)
    assert set(defaults) == {f"{stage}_config" for stage in STAGE_FIELDS}
    for stage in STAGE_FIELDS:
        assert set(defaults[f"{stage}_config"]) == set(stage_fields(stage))
    tasks = _all_tasks(spec)
    feeds = {name: t["inputs"]["parameters"]["config_json"]["componentInputParameter"]
             for name, (_, t) in tasks.items() if "config_json" in t.get("inputs", {}).get("parameters", {})}
    assert feeds == {"data-snapshot": "example_gen_config", "example-gen": "example_gen_config",
                     "transform": "transform_config", "resample": "resample_config", "trainer": "trainer_config",
                     "served-model": "served_model_config", "evaluator": "evaluator_config",
                     "pusher": "pipelinechannel--pusher_config"}
    # A stage's config round-trips without the other stages' fields (no re-validation against
    # defaults: the default min_recall names `covid`, which these classes lack).
    ev = stage_config(json.dumps(defaults["evaluator_config"]))
    assert ev.classes == ("normal", "pneumonia") and ev.min_recall == (("pneumonia", 0.7),)


def test_changing_epochs_changes_only_the_trainer_settings_and_cache_keys(tmp_path):
    before = _defaults(_compile(tmp_path, _config(epochs=30)))
    after = _defaults(_compile(tmp_path, _config(epochs=5)))
    assert {k for k in before if before[k] != after[k]} == {"trainer_config"}
    caching = {name: t.get("cachingOptions", {}).get("enableCache", False)
               for name, (_, t) in _all_tasks(_compile(tmp_path)).items() if "componentRef" in t}
    assert {n for n, on in caching.items() if on} == {"example-gen", "transform", "resample", "trainer", "evaluator"}


def test_local_stage_fingerprints_follow_the_stage_fields(tmp_path):
    data = tmp_path / "data" / "covid"
    data.mkdir(parents=True)
    (data / "a.png").write_bytes(b"x")
    base = PipelineConfig(data=(f"folders:{tmp_path / 'data'}",))
    fps = {s: fingerprint(s, base, []) for s in ("example_gen", "transform", "trainer")}
    longer = base.replace(epochs=base.epochs + 1)
    assert fingerprint("example_gen", longer, []) == fps["example_gen"]
    assert fingerprint("transform", longer, []) == fps["transform"]
    assert fingerprint("trainer", longer, []) != fps["trainer"]
    (data / "b.png").write_bytes(b"yy")  # new data: ExampleGen recomputes
    assert fingerprint("example_gen", base, []) != fps["example_gen"]


def test_remote_data_changes_the_example_gen_fingerprint(tmp_path):
    import tensorflow as tf

    root = f"ram://{tmp_path.name}-data/cxr"
    tf.io.gfile.makedirs(f"{root}/covid")
    with tf.io.gfile.GFile(f"{root}/covid/a.png", "wb") as f:
        f.write(b"x")
    config = PipelineConfig(data=(f"folders:{root}",))
    first = fingerprint("example_gen", config, [])
    with tf.io.gfile.GFile(f"{root}/covid/b.png", "wb") as f:
        f.write(b"y")
    assert fingerprint("example_gen", config, []) != first


def test_every_config_field_is_assigned_to_stages_or_the_pipeline():
    fields = {f.name for f in dataclasses.fields(PipelineConfig)}
    claimed = {f for fs in STAGE_FIELDS.values() for f in fs} | set(PIPELINE_ONLY_FIELDS)
    assert fields - claimed == set(), "add new config fields to config.STAGE_FIELDS (or PIPELINE_ONLY_FIELDS)"
    assert claimed - fields == set(), "STAGE_FIELDS names fields PipelineConfig does not have"


# Code each stage runs, by stage: its config.<field> reads must be among its STAGE_FIELDS.
STAGE_CODE = {
    "example_gen": ["stages/example_gen.py", "stages/splitting.py", "stages/check_cache.py",
                    "stages/confounding.py", "sources/*.py"],
    "transform": ["stages/transform.py"],
    "resample": ["stages/resample.py"],
    "trainer": ["stages/trainer.py", "trainer/*.py"],
    "evaluator": ["stages/evaluator.py", "stages/blessing.py", "report/shortcut.py"],
    "pusher": ["stages/pusher.py"],
}
COMPONENT_STAGE = {"data_snapshot": "example_gen", "push_skipped": "pusher"}


def _method_reads() -> dict[str, set[str]]:
    """PipelineConfig method -> the fields it reads through self."""
    tree = ast.parse(open(os.path.join(SRC, "config.py")).read())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PipelineConfig")
    return {m.name: {a.attr for a in ast.walk(m) if isinstance(a, ast.Attribute)
                     and isinstance(a.value, ast.Name) and a.value.id == "self"}
            for m in cls.body if isinstance(m, ast.FunctionDef)}


def _config_reads(node: ast.AST, fields: set[str], methods: dict[str, set[str]]) -> set[str]:
    reads = set()
    for a in ast.walk(node):
        if isinstance(a, ast.Attribute) and isinstance(a.value, ast.Name) and a.value.id in ("config", "cfg"):
            if a.attr in fields:
                reads.add(a.attr)
            reads |= methods.get(a.attr, set()) & fields
    return reads


def test_stage_code_reads_only_its_stage_fields():
    fields = {f.name for f in dataclasses.fields(PipelineConfig)}
    methods = {m: r for m, r in _method_reads().items() if m not in ("validate", "__post_init__", "to_json",
                                                                       "replace")}
    problems = []
    for stage, patterns in STAGE_CODE.items():
        allowed = set(stage_fields(stage))
        for path in sorted(p for pattern in patterns for p in glob.glob(os.path.join(SRC, pattern))):
            extra = _config_reads(ast.parse(open(path).read()), fields, methods) - allowed
            if extra:
                problems.append(f"{os.path.relpath(path, SRC)} ({stage}) reads {sorted(extra)}")
    components = ast.parse(open(os.path.join(SRC, "components.py")).read())
    for func in (n for n in components.body if isinstance(n, ast.FunctionDef)):
        stage = COMPONENT_STAGE.get(func.name, func.name)
        extra = _config_reads(func, fields, methods) - set(stage_fields(stage))
        if extra:
            problems.append(f"components.{func.name} ({stage}) reads {sorted(extra)}")
    assert not problems, "add these to config.STAGE_FIELDS: " + "; ".join(problems)


def test_stage_json_holds_the_values_of_the_config():
    config = _config(epochs=7, classes=("a", "b"), min_recall=(), operating_point=())
    trainer = json.loads(stage_json(config, "trainer"))
    assert trainer["epochs"] == 7 and trainer["classes"] == ["a", "b"]
    assert stage_config(stage_json(config, "trainer")).augmentation == config.augmentation


# --- golden structure ---------------------------------------------------------------------------
GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "pipeline_structure.json")


def pipeline_structure(spec: dict) -> dict:
    """What must not drift silently: tasks, edges, conditions, wiring, images and resources."""
    tasks = {}
    for name, (dag, task) in _all_tasks(spec).items():
        inputs = task.get("inputs", {})
        wiring = {}
        for k, v in inputs.get("artifacts", {}).items():
            if "taskOutputArtifact" in v:
                wiring[k] = f"{v['taskOutputArtifact']['producerTask']}.{v['taskOutputArtifact']['outputArtifactKey']}"
            else:
                wiring[k] = v.get("componentInputArtifact", "")
        tasks[name] = {
            "dag": dag,
            "component": task["componentRef"]["name"],
            "depends_on": sorted(task.get("dependentTasks", [])),
            "artifacts_in": dict(sorted(wiring.items())),
            "parameters_in": sorted(inputs.get("parameters", {})),
            "caching": task.get("cachingOptions", {}).get("enableCache", False),
            "condition": task.get("triggerPolicy", {}).get("condition", ""),
        }
    components = {}
    for name, comp in spec["components"].items():
        outputs = comp.get("outputDefinitions", {})
        components[name] = {
            **{k: v["artifactType"]["schemaTitle"] for k, v in sorted(outputs.get("artifacts", {}).items())},
            **{k: v["parameterType"] for k, v in sorted(outputs.get("parameters", {}).items())},
        }
    executors = {name: {"image": ex["container"]["image"], "resources": ex["container"].get("resources", {})}
                 for name, ex in spec["deploymentSpec"]["executors"].items()}
    return {"tasks": tasks, "outputs": components, "executors": executors}


def test_compiled_structure_matches_the_golden_file(tmp_path):
    got = pipeline_structure(_compile(tmp_path))
    if os.environ.get("CXRFLOW_UPDATE_GOLDEN"):
        with open(GOLDEN, "w") as f:
            json.dump(got, f, indent=2, sort_keys=True)
            f.write("\n")
    with open(GOLDEN) as f:
        assert got == json.load(f), "pipeline structure changed: review, then CXRFLOW_UPDATE_GOLDEN=1 pytest ..."


def test_gcs_data_is_listed_from_the_bucket_listing_with_generations():
    """gs:// data: one listing request per 1,000 objects, and a rewrite (new generation) is seen."""
    import types
    from unittest import mock

    from google.cloud import storage

    from cxrflow import stage_cache

    client_cls = mock.create_autospec(storage.Client)

    def blobs(*generations):
        return [types.SimpleNamespace(name="data/cxr/covid/", size=0, generation=1),  # a folder placeholder
                types.SimpleNamespace(name="data/cxr/covid/a.png", size=10, generation=generations[0]),
                types.SimpleNamespace(name="data/cxr/normal/b.png", size=12, generation=generations[1])]

    client_cls.return_value.list_blobs.return_value = blobs(5, 6)
    first = stage_cache._gcs_listing("gs://bkt/data/cxr", client_cls)
    assert first == [["covid/a.png", 10, 5], ["normal/b.png", 12, 6]]
    client_cls.return_value.list_blobs.assert_called_once_with(
        "bkt", prefix="data/cxr/", fields="items(name,size,generation),nextPageToken")
    client_cls.return_value.list_blobs.return_value = blobs(5, 7)  # b.png rewritten, same size
    assert stage_cache._gcs_listing("gs://bkt/data/cxr/", client_cls) != first


def test_cli_compile_defaults_to_this_versions_image_or_refuses(tmp_path, capsys):
    from cxrflow import cli
    from cxrflow.version import image_tag

    out = tmp_path / "p.yaml"
    assert cli.main(["compile", "--output", str(out)]) == 2
    assert "--base-image IMAGE, or --registry REGISTRY" in capsys.readouterr().err and not out.exists()
    for extra, tag in (([], image_tag("cpu")), (["--trainer-gpus", "1", "--trainer-accelerator", "NVIDIA_L4"],
                                                image_tag("gpu"))):
        assert cli.main(["compile", "--output", str(out), "--registry", "europe-docker.pkg.dev/p/r/", *extra]) == 0
        executors = yaml.safe_load(out.read_text())["deploymentSpec"]["executors"].values()
        images = {e["container"]["image"] for e in executors}
        assert images == {f"europe-docker.pkg.dev/p/r/cxrflow:{tag}"}
