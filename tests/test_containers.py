"""Static checks of what can't run here: Dockerfile, .dockerignore, requirements-gpu.lock, hadolint,
docker-compose.yaml, and the one version-derived image tag shared by cxrflow.version and scripts/image_tag.sh."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from cxrflow import version

ROOT = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None, reason="bash is not installed")


# --- Dockerfile parsing ----------------------------------------------------------------------
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and line continuations joined."""
    out, buffer = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        buffer += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            word, _, rest = buffer.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
            buffer = ""
    return out


def dockerfile_stages() -> tuple[dict[str, str], dict[str, dict]]:
    """(global ARG defaults, {stage name: {"from": base, "steps": [(INSTR, args)]}}) in file order."""
    args, stages, current = {}, {}, None
    for instr, rest in dockerfile_instructions((ROOT / "Dockerfile").read_text()):
        if instr == "FROM":
            match = re.fullmatch(r"(\S+) AS (\S+)", rest, re.IGNORECASE)
            assert match, f"every stage is named: FROM {rest}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], match[1])
            current = stages[match[2]] = {"from": base, "steps": []}
        elif current is None:
            assert instr == "ARG", f"only ARG may precede the first FROM, got {instr}"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            current["steps"].append((instr, rest))
    return args, stages


def lineage(stages: dict[str, dict], name: str) -> list[tuple[str, str]]:
    """Every step that went into stage `name`: its FROM chain and stages it COPYs --from."""
    stage, steps = stages[name], []
    if stage["from"] in stages:
        steps += lineage(stages, stage["from"])
    for instr, rest in stage["steps"]:
        source = re.match(r"--from=(\S+)", rest) if instr == "COPY" else None
        if source and source[1] in stages:
            steps += lineage(stages, source[1])
        steps.append((instr, rest))
    return steps


def lineage_from_chain(stages: dict[str, dict], name: str) -> list[tuple[str, str]]:
    """Steps of the FROM chain only (USER/ENTRYPOINT do not travel through COPY --from)."""
    stage = stages[name]
    parent = lineage_from_chain(stages, stage["from"]) if stage["from"] in stages else []
    return parent + stage["steps"]


def final_user(stages: dict[str, dict], name: str) -> str | None:
    users = [rest for instr, rest in lineage_from_chain(stages, name) if instr == "USER"]
    return users[-1] if users else None


def test_dockerfile_has_cpu_and_gpu_targets_on_python_311_slim():
    args, stages = dockerfile_stages()
    assert {"cpu", "gpu"} <= set(stages)
    assert list(stages)[-1] == "cpu", "a plain `docker build .` must give the CPU image"
    assert args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    for target in ("cpu", "gpu"):
        chain = [target]
        while stages[chain[-1]]["from"] in stages:
            chain.append(stages[chain[-1]]["from"])
        assert stages[chain[-1]]["from"] == "python:3.11-slim-bookworm"


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_final_stages_run_as_numeric_non_root_user(target):
    _, stages = dockerfile_stages()
    user = final_user(stages, target)
    assert user is not None, f"{target} sets no USER"
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{target} runs as {user!r}"
    assert ("USER", user) in stages[target]["steps"], "USER is set in the final stage itself"


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_images_install_from_lock_then_package_without_deps(target):
    _, stages = dockerfile_stages()
    steps = lineage(stages, target)
    runs = [rest for instr, rest in steps if instr == "RUN"]
    copies = [rest for instr, rest in steps if instr == "COPY"]
    lock = next(i for i, r in enumerate(runs) if "pip install -r /tmp/requirements.lock" in r)
    package = next(i for i, r in enumerate(runs) if "pip install --no-deps ." in r)
    assert lock < package
    assert "requirements.lock /tmp/requirements.lock" in copies
    assert any("pip check" in r for r in runs)
    gpu_lock = [r for r in runs if "requirements-gpu.lock" in r]
    assert bool(gpu_lock) == (target == "gpu")
    if gpu_lock:
        assert "--no-deps" in gpu_lock[0]


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_entrypoint_is_cxrflow_with_no_install_at_runtime(target):
    _, stages = dockerfile_stages()
    steps = lineage_from_chain(stages, target)
    entrypoints = [rest for instr, rest in steps if instr == "ENTRYPOINT"]
    assert json.loads(entrypoints[-1]) == ["cxrflow"]
    for instr, rest in steps:
        if instr in ("ENTRYPOINT", "CMD"):
            assert "pip" not in rest and "install" not in rest, f"{instr} {rest}"


def test_gpu_lock_pins_tensorflows_cuda_extra():
    pins = {}
    for line in (ROOT / "requirements-gpu.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, ver = line.partition("==")
            assert sep and name.startswith("nvidia-"), f"only exact nvidia-* pins belong here: {line!r}"
            pins[name] = ver
    try:
        requires = importlib.metadata.requires("tensorflow") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tensorflow is not installed")
    cuda = [Requirement(r) for r in requires if 'extra == "and-cuda"' in r.replace("'", '"')]
    assert cuda, "tensorflow declares no and-cuda extra"
    for req in cuda:
        assert req.name in pins, f"requirements-gpu.lock lacks {req.name}"
        assert req.specifier.contains(pins[req.name]), f"{req.name}=={pins[req.name]} not in {req.specifier}"


@pytest.mark.skipif(
    shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    is None,
    reason="hadolint not installed (pip install -r requirements-dev.txt)",
)
def test_hadolint_is_clean():
    exe = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    result = subprocess.run([exe, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- .dockerignore ---------------------------------------------------------------------------
def docker_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*")
        if pattern.startswith("**/"):
            regex = "(?:.*/)?" + fnmatch.translate(pattern[3:]).replace(".*", "[^/]*")
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_context_to_what_the_dockerfile_copies():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in [".venv/bin/python", "runs/x/metrics.json", ".git/HEAD", "bench/results.json", "bench/_data/a.png"]:
        assert docker_ignored(path, patterns), path
    for path in ["src/cxrflow/__pycache__/deploy.cpython-311.pyc", "src/cxrflow.egg-info/PKG-INFO"]:
        assert docker_ignored(path, patterns), path
    _, stages = dockerfile_stages()
    sources = []
    for stage in stages.values():
        for instr, rest in stage["steps"]:
            if instr in ("COPY", "ADD") and not rest.startswith("--from"):
                sources += [s for s in rest.split()[:-1] if not s.startswith("--")]
    assert sources
    for source in sources:
        probe = source.rstrip("/") + ("/cxrflow/__init__.py" if source.rstrip("/") == "src" else "")
        assert not docker_ignored(probe, patterns), f"the Dockerfile copies {source} but .dockerignore drops it"
        assert (ROOT / source).exists(), source


# --- image tags ------------------------------------------------------------------------------
def image_tag_sh(*args: str, root: Path = ROOT) -> str:
    result = subprocess.run([BASH, str(root / "scripts" / "image_tag.sh"), *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_version_module_reads_package_version_and_pyproject():
    assert version._pyproject_version(ROOT / "pyproject.toml") == version.package_version()
    assert version.image_tag("cpu") == version.package_version()
    assert version.image_uri("reg.example/p/r/", "gpu") == f"reg.example/p/r/cxrflow:{version.package_version()}-gpu"
    assert version.image_tag("cpu", "1.2.3+local.7") == "1.2.3-local.7"
    with pytest.raises(ValueError):
        version.image_tag("tpu")
    with pytest.raises(ValueError):
        version.image_uri(" ")


@needs_bash
def test_image_tag_script_matches_version_module(tmp_path):
    assert image_tag_sh() == version.image_tag("cpu")
    assert image_tag_sh("gpu") == version.image_tag("gpu")
    assert image_tag_sh("gpu", "reg.example/p/r/") == version.image_uri("reg.example/p/r", "gpu")
    # Same rule for an odd version, read from a pyproject with other `version =` keys around.
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "image_tag.sh", tmp_path / "scripts")
    (tmp_path / "pyproject.toml").write_text(
        '[build-system]\nversion = "9"\n\n[project]\nname = "cxrflow"\nversion = "1.2.3+local.7"\n\n'
        '[tool.x]\nversion = "8"\n'
    )
    assert version._pyproject_version(tmp_path / "pyproject.toml") == "1.2.3+local.7"
    assert image_tag_sh("cpu", root=tmp_path) == version.image_tag("cpu", "1.2.3+local.7")
    assert image_tag_sh("gpu", "r", root=tmp_path) == "r/cxrflow:" + version.image_tag("gpu", "1.2.3+local.7")
    bad = subprocess.run([BASH, str(ROOT / "scripts" / "image_tag.sh"), "tpu"], capture_output=True, text=True)
    assert bad.returncode != 0 and "cpu or gpu" in bad.stderr


# --- docker-compose.yaml ---------------------------------------------------------------------
def test_compose_serves_serving_dir_with_tf_serving():
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    (service,) = compose["services"].values()
    image, _, tag = service["image"].partition(":")
    assert image == "tensorflow/serving"
    lock = dict(line.split("==") for line in (ROOT / "requirements.lock").read_text().split() if "==" in line)
    assert tag == lock["tensorflow-serving-api"], "serve with the TF Serving release the lock's client API matches"
    assert service["environment"]["MODEL_NAME"] == "cxrflow"
    (volume,) = service["volumes"]
    assert volume["target"] == "/models/cxrflow" and volume["read_only"] is True
    assert volume["source"].startswith("${SERVING_DIR:?") and volume["source"].endswith("}/cxrflow")
    assert "8501:8501" in service["ports"]
