"""The package version and the container image names derived from it, in one place.

`scripts/image_tag.sh` applies the same rule to pyproject.toml without importing cxrflow (Cloud
Build needs the tag before any image exists); tests/test_containers.py checks that the two agree.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

IMAGE_NAME = "cxrflow"
VARIANTS = ("cpu", "gpu")
_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _pyproject_version(pyproject: Path = _PYPROJECT) -> str:
    with pyproject.open("rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


def package_version() -> str:
    """The installed distribution's version; a source checkout falls back to pyproject.toml."""
    try:
        return importlib.metadata.version("cxrflow")
    except importlib.metadata.PackageNotFoundError:
        return _pyproject_version()


def image_tag(variant: str = "cpu", version: str | None = None) -> str:
    """`0.1.0` for the CPU image, `0.1.0-gpu` for the GPU one.

    Characters a Docker tag cannot hold (a local version's `+`) become `-`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"image variant must be one of {VARIANTS}, got {variant!r}")
    tag = _TAG_UNSAFE.sub("-", version or package_version())
    return tag if variant == "cpu" else f"{tag}-{variant}"


def image_uri(registry: str, variant: str = "cpu") -> str:
    """`<registry>/cxrflow:<tag>`, e.g. `europe-west4-docker.pkg.dev/proj/repo/cxrflow:0.1.0-gpu`."""
    registry = registry.strip().rstrip("/")
    if not registry:
        raise ValueError("registry must not be empty (e.g. REGION-docker.pkg.dev/PROJECT/REPO)")
    return f"{registry}/{IMAGE_NAME}:{image_tag(variant)}"
