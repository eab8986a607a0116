"""The metadata adapters list a bucket copy exactly as they list the disk copy (TF's ram://)."""

from __future__ import annotations

import dataclasses

import pytest

from cxrflow.config import PipelineConfig
from cxrflow.sources import Record, adapter_for
from tests.source_trees import (
    write_actualmed_tree,
    write_covidx_tree,
    write_figure1_tree,
    write_nih_tree,
    write_rsna_tree,
)
from tests.test_remote_sources import ram_base, upload

CLASSES = ("covid", "bacterial", "normal")
BUILDERS = {"actualmed": write_actualmed_tree, "figure1": write_figure1_tree, "nih": write_nih_tree,
            "rsna": write_rsna_tree, "covidx": write_covidx_tree}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_bucket_copy_lists_like_the_disk_copy(kind, tmp_path):
    local, base = str(tmp_path / "data"), ram_base()
    BUILDERS[kind](local)
    upload(local, f"{base}/data")

    def scan(root: str) -> list:
        items = adapter_for(f"{kind}:{root}", CLASSES, PipelineConfig().source_options()).scan()
        return sorted((dataclasses.replace(i, path=i.path.replace(root, "ROOT", 1)) for i in items), key=repr)

    remote = scan(f"{base}/data")
    assert remote == scan(local)
    assert any(isinstance(i, Record) for i in remote)
