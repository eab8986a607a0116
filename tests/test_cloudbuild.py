"""cloudbuild.yaml, checked statically and by running every step's script with fake `docker`/`gcloud`:
steps and order, substitution hygiene, gating, and image names from the version-derived tag."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxrflow import version

ROOT = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None, reason="bash is not installed")


# --- cloudbuild.yaml -------------------------------------------------------------------------
BUILTINS = {
    "PROJECT_ID", "PROJECT_NUMBER", "BUILD_ID", "LOCATION", "TRIGGER_NAME", "COMMIT_SHA", "REVISION_ID",
    "SHORT_SHA", "REPO_NAME", "REPO_FULL_NAME", "BRANCH_NAME", "TAG_NAME", "REF_NAME",
    "TRIGGER_BUILD_CONFIG_PATH", "SERVICE_ACCOUNT_EMAIL", "SERVICE_ACCOUNT",
}  # fmt: skip
TEST_SUBS = {"PROJECT_ID": "test-proj", "BUILD_ID": "b-1"}


@pytest.fixture(scope="module")
def cloudbuild() -> dict:
    return yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())


def steps_by_id(cloudbuild: dict) -> dict[str, dict]:
    return {step["id"]: step for step in cloudbuild["steps"]}


def script(step: dict) -> str:
    assert step.get("entrypoint") == "bash" and step["args"][-2] == "-c", step["id"]
    return step["args"][-1]


def substitute(text: str, cloudbuild: dict, overrides: dict | None = None) -> str:
    """What Cloud Build hands to the step: ${_X}/$X replaced, $$ turned into $."""
    values = {**TEST_SUBS, **cloudbuild["substitutions"], **(overrides or {})}

    def one(match: re.Match) -> str:
        if match[0] == "$$":
            return "$"
        name = match["braced"] or match["bare"]
        value = str(values[name])
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: str(values[m[1] or m[2]]), value)  # dynamic substitutions

    return re.sub(r"\$\$|\$\{(?P<braced>\w+)\}|\$(?P<bare>[A-Za-z_]\w*)", one, text)


def test_cloudbuild_steps_and_order(cloudbuild):
    ids = [step["id"] for step in cloudbuild["steps"]]
    assert ids == [
        "image-names", "build-cpu", "build-gpu", "test", "push-cpu", "push-gpu", "compile", "upload", "submit",
        "schedule",
    ]  # fmt: skip
    seen: set[str] = set()
    for step in cloudbuild["steps"]:
        assert set(step.get("waitFor", [])) <= seen, f"{step['id']} waits for a later or unknown step"
        seen.add(step["id"])
    steps = steps_by_id(cloudbuild)
    assert "test" in steps["push-cpu"]["waitFor"] and "test" in steps["push-gpu"]["waitFor"]
    assert {"push-cpu", "push-gpu"} <= set(steps["compile"]["waitFor"])
    assert steps["upload"]["waitFor"] == ["compile"]
    assert steps["submit"]["waitFor"] == ["upload"] and steps["schedule"]["waitFor"] == ["upload"]


def test_cloudbuild_step_contents(cloudbuild):
    steps = {k: " ".join(script(v).split()) for k, v in steps_by_id(cloudbuild).items()}
    assert 'docker build --target cpu --tag "$$CPU_IMAGE" .' in steps["build-cpu"]
    assert 'docker build --target gpu --tag "$$GPU_IMAGE" .' in steps["build-gpu"]
    assert '--entrypoint python "$$CPU_IMAGE" -m pytest -m "not e2e"' in steps["test"]
    assert "--network none" in steps["test"]
    assert 'docker push "$$CPU_IMAGE"' in steps["push-cpu"] and 'docker push "$$GPU_IMAGE"' in steps["push-gpu"]
    assert 'compile --output /out/pipeline.yaml --base-image "$$PIPELINE_IMAGE"' in steps["compile"]
    assert 'gcloud storage cp /workspace/build-out/pipeline.yaml "$$PIPELINE_URI"' in steps["upload"]
    assert steps["submit"].startswith('if [ "${_SUBMIT}" != "true" ]; then')
    assert "submit --vertex" in steps["submit"]
    assert steps["schedule"].startswith('if [ -z "${_SCHEDULE_CRON}" ]; then')
    assert 'schedule --vertex --cron "${_SCHEDULE_CRON}"' in steps["schedule"]
    for gated in ("build-gpu", "push-gpu"):
        assert steps[gated].startswith('if [ "${_BUILD_GPU}" != "true" ]')
    assert cloudbuild["substitutions"]["_SUBMIT"] == "false" and cloudbuild["substitutions"]["_SCHEDULE_CRON"] == ""


def test_cloudbuild_substitutions_are_defined_used_and_escaped(cloudbuild):
    defined = set(cloudbuild["substitutions"])
    assert all(name.startswith("_") for name in defined)
    text = yaml.safe_dump(cloudbuild["steps"])
    used = set()
    for match in re.finditer(r"\$\$|\$\{(\w+)\}|\$(\w+)|\$", text):
        if match[0] == "$$":
            continue
        name = match[1] or match[2]
        assert name, f"a lone $ near {text[match.start() - 20 : match.end() + 20]!r}: write $$ for bash"
        assert name in defined or name in BUILTINS, f"${name} is neither a substitution nor a built-in"
        used.add(name)
    for value in cloudbuild["substitutions"].values():
        used |= set(re.findall(r"\$\{(\w+)\}", str(value)))
    assert defined <= used, f"unused substitutions make Cloud Build fail: {defined - used}"
    assert cloudbuild["options"]["dynamicSubstitutions"] is True  # _REGISTRY is built from _REGION


def test_cloudbuild_images_follow_version_tags(cloudbuild, tmp_path):
    text = (ROOT / "cloudbuild.yaml").read_text()
    assert not re.search(r"cxrflow:[0-9]", text), "image tags must come from scripts/image_tag.sh"
    assert "images" not in cloudbuild  # pushed by the push steps, after the tests passed
    registry = substitute(cloudbuild["substitutions"]["_REGISTRY"], cloudbuild)
    assert registry == "us-central1-docker.pkg.dev/test-proj/cxrflow"
    if BASH is None:
        pytest.skip("bash is not installed")
    env_script = substitute(script(steps_by_id(cloudbuild)["image-names"]), cloudbuild)
    env_script = env_script.replace("/workspace", str(tmp_path))
    subprocess.run([BASH, "-c", env_script], cwd=ROOT, check=True, capture_output=True)
    env = dict(line.split("=", 1) for line in (tmp_path / "images.env").read_text().split())
    assert env["CPU_IMAGE"] == version.image_uri(registry, "cpu")
    assert env["GPU_IMAGE"] == version.image_uri(registry, "gpu")
    assert env["PIPELINE_TAG"] == version.image_tag("cpu")
    for step in cloudbuild["steps"]:
        assert step["name"] in ("gcr.io/cloud-builders/docker", "gcr.io/google.com/cloudsdktool/cloud-sdk:slim")


@needs_bash
@pytest.mark.parametrize(
    "overrides", [{}, {"_SUBMIT": "true", "_SCHEDULE_CRON": "TZ=Europe/Berlin 0 3 * * 1", "_SERVICE_ACCOUNT": "sa@x"}]
)
def test_cloudbuild_scripts_are_valid_bash(cloudbuild, overrides):
    for step in cloudbuild["steps"]:
        body = substitute(script(step), cloudbuild, overrides)
        result = subprocess.run([BASH, "-n", "-c", body], capture_output=True, text=True)
        assert result.returncode == 0, f"{step['id']}: {result.stderr}"


@needs_bash
@pytest.mark.parametrize("gated", [False, True])
def test_cloudbuild_steps_run_in_order_with_fake_docker_and_gcloud(cloudbuild, tmp_path, gated):
    """Every step's script, run as Cloud Build would (substituted, in file order) with `docker` and
    `gcloud` replaced by loggers: the exact commands, the gating, and the image names."""
    bin_dir, workspace = tmp_path / "bin", tmp_path / "workspace"
    bin_dir.mkdir()
    workspace.mkdir()
    fake = (
        f"#!{sys.executable}\nimport json, os, sys\n"
        "open(os.environ['FAKE_LOG'], 'a').write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + '\\n')\n"
        "if 'compile' in sys.argv:\n"
        "    open(os.path.join(os.environ['FAKE_OUT'], 'pipeline.yaml'), 'w').write('pipelineInfo: {}\\n')\n"
    )
    for tool in ("docker", "gcloud"):
        (bin_dir / tool).write_text(fake)
        (bin_dir / tool).chmod(0o755)
    overrides = {"_SUBMIT": "true", "_SCHEDULE_CRON": "0 3 * * 1", "_SERVICE_ACCOUNT": "sa@p.iam"} if gated else {}
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_LOG": str(tmp_path / "log.jsonl"),
        "FAKE_OUT": str(workspace / "build-out"),
    }
    for step in cloudbuild["steps"]:
        body = substitute(script(step), cloudbuild, overrides).replace("/workspace", str(workspace))
        result = subprocess.run(
            [BASH, "-euo", "pipefail", "-c", body], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, f"{step['id']}: {result.stdout}{result.stderr}"
    calls = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    cpu = version.image_uri("us-central1-docker.pkg.dev/test-proj/cxrflow", "cpu")
    gpu = version.image_uri("us-central1-docker.pkg.dev/test-proj/cxrflow", "gpu")
    uri = f"gs://test-proj-cxrflow/pipelines/{version.image_tag('cpu')}/pipeline.yaml"
    ws = str(workspace)
    expected = [
        ["docker", "build", "--target", "cpu", "--tag", cpu, "."],
        ["docker", "build", "--target", "gpu", "--tag", gpu, "."],
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", gpu, "-c",
         "import tensorflow as tf; print(tf.__version__, tf.sysconfig.get_build_info()['cuda_version'])"],
        ["docker", "run", "--rm", "--network", "none", "--volume", f"{ws}:{ws}", "--workdir", ws,
         "--entrypoint", "python", cpu, "-m", "pytest", "-m", "not e2e", "-p", "no:cacheprovider", "tests"],
        ["docker", "push", cpu],
        ["docker", "push", gpu],
        ["docker", "run", "--rm", "--network", "none", "--volume", f"{ws}/build-out:/out", cpu,
         "compile", "--output", "/out/pipeline.yaml", "--base-image", cpu],
        ["gcloud", "storage", "cp", f"{ws}/build-out/pipeline.yaml", uri],
    ]  # fmt: skip
    vertex = ["--package", uri, "--project", "test-proj", "--region", "us-central1",
              "--pipeline-root", "gs://test-proj-cxrflow/pipeline-root", "--service-account", "sa@p.iam"]  # fmt: skip
    if gated:
        expected += [
            ["docker", "run", "--rm", "--network", "cloudbuild", cpu, "submit", "--vertex", *vertex],
            ["docker", "run", "--rm", "--network", "cloudbuild", cpu, "schedule", "--vertex", "--cron", "0 3 * * 1",
             *vertex],
        ]  # fmt: skip
    assert calls == expected


@needs_bash
def test_cloudbuild_gpu_switches(cloudbuild, tmp_path):
    compile_step = steps_by_id(cloudbuild)["compile"]
    body = substitute(script(compile_step), cloudbuild, {"_PIPELINE_IMAGE": "gpu", "_BUILD_GPU": "false"})
    (tmp_path / "images.env").write_text("CPU_IMAGE=c\nGPU_IMAGE=g\nPIPELINE_TAG=t\n")
    body = body.replace("/workspace", str(tmp_path))
    result = subprocess.run([BASH, "-euo", "pipefail", "-c", body], capture_output=True, text=True)
    assert result.returncode != 0 and "_PIPELINE_IMAGE=gpu needs _BUILD_GPU=true" in result.stderr
    upload = substitute(script(steps_by_id(cloudbuild)["upload"]), cloudbuild, {"_PIPELINE_GCS_DIR": "/tmp/x"})
    result = subprocess.run([BASH, "-euo", "pipefail", "-c", upload], capture_output=True, text=True)
    assert result.returncode != 0 and "must be a gs:// path" in result.stderr
