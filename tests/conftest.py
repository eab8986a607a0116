"""Shared fixtures: one tiny synthetic dataset pushed through the stages once per session.

Images are 48-64 px and the model input 32 px, so each stage runs in seconds.
"""

from __future__ import annotations

import json
import os

import pytest

from cxrflow.config import PipelineConfig

TINY_SIZE = 32
# The real development X-rays live beside the project's root (never copied into the repo).
REALDATA_DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "realdata")


def realdata_root() -> str | None:
    """`$CXRFLOW_REALDATA`, else `../shared/realdata`; None when neither holds the data."""
    root = os.path.abspath(os.environ.get("CXRFLOW_REALDATA") or REALDATA_DEFAULT)
    return root if os.path.isfile(os.path.join(root, "SOURCES.md")) else None


@pytest.fixture(scope="session")
def realdata() -> str:
    """Path of the real X-ray set; skips (saying why) where it is absent."""
    root = realdata_root()
    if root is None:
        pytest.skip("real X-rays not found: set CXRFLOW_REALDATA or place them in ../shared/realdata")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    from cxrflow.sample_data import write_sample_dataset

    root = str(tmp_path_factory.mktemp("tiny") / "data")
    write_sample_dataset(root, per_class=14, render_size=64, size_range=(48, 64))
    return root


@pytest.fixture(scope="session")
def tiny_config(tiny_data, tmp_path_factory) -> PipelineConfig:
    serving = str(tmp_path_factory.mktemp("serving"))
    return PipelineConfig(
        data=(f"folders:{tiny_data}",), image_size=TINY_SIZE, epochs=2, batch_size=8,
        serving_dir=serving, min_recall=(), min_macro_recall=0.0,
    )


@pytest.fixture(scope="session")
def stage_dirs(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("stages")
    return {name: str(base / name) for name in ("examples", "transform", "resample", "model", "run", "eval")}


@pytest.fixture(scope="session")
def examples(tiny_config, stage_dirs) -> dict:
    from cxrflow.stages.example_gen import run_example_gen

    return run_example_gen(tiny_config, stage_dirs["examples"])


@pytest.fixture(scope="session")
def transform_graph(tiny_config, stage_dirs, examples) -> str:
    from cxrflow.stages.example_gen import split_pattern
    from cxrflow.stages.transform import run_transform

    return run_transform(tiny_config, split_pattern(stage_dirs["examples"], "train"), stage_dirs["transform"])


@pytest.fixture(scope="session")
def resampled(tiny_config, stage_dirs, examples) -> dict:
    from cxrflow.stages.example_gen import split_pattern
    from cxrflow.stages.resample import run_resample

    return run_resample(tiny_config, split_pattern(stage_dirs["examples"], "train"), examples["splits"]["train"],
                        stage_dirs["resample"])


@pytest.fixture(scope="session")
def trained_model(tiny_config, stage_dirs, transform_graph, resampled) -> str:
    from cxrflow.stages.trainer import run_trainer

    run_trainer(tiny_config, stage_dirs["examples"], transform_graph, stage_dirs["resample"],
                stage_dirs["model"], stage_dirs["run"])
    return stage_dirs["model"]


@pytest.fixture
def package(tmp_path):
    """A compiled-pipeline stand-in for the deploy tests."""
    path = tmp_path / "pipeline.yaml"
    path.write_text("pipelineInfo: {name: cxrflow}\n")
    return str(path)


@pytest.fixture
def rec():
    """A recorder the deploy tests' fake clients write their calls into."""
    from tests.deploy_fakes import Recorder

    return Recorder()


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def png_bytes(mode: str = "L", size: tuple[int, int] = (80, 64), bits16: bool = False) -> bytes:
    """A real encoded test image of the given PIL mode."""
    import io

    import numpy as np
    from PIL import Image

    from cxrflow.sample_data import render

    pixels = render("normal", np.random.default_rng(0), 64)
    img = Image.fromarray((pixels * 255).astype("uint8")).resize(size)
    if bits16:
        img = Image.fromarray(np.asarray(img, dtype=np.uint16) * 257)
    elif mode not in ("L", "JPEG"):
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if mode == "CMYK" or mode == "JPEG" else "PNG")
    return buf.getvalue()


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
