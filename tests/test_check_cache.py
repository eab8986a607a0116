"""The ingest check cache: a re-ingest decodes only files whose bytes it has not seen."""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil

import pytest

from cxrflow import features as fk
from cxrflow.stages import check_cache, example_gen
from cxrflow.stages.example_gen import run_example_gen, split_pattern


@pytest.fixture
def data(tiny_data, tmp_path) -> str:
    root = str(tmp_path / "data")
    shutil.copytree(tiny_data, root)
    return root


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Counts full pixel checks made by ExampleGen's pass one (same process: DirectRunner)."""
    calls: list[str] = []
    real = example_gen.check_image

    def counting(data: bytes, max_pixels: int, sha256: str = ""):
        calls.append(sha256)
        return real(data, max_pixels, sha256)

    monkeypatch.setattr(example_gen, "check_image", counting)
    return calls


def _ingest(config, out: str) -> tuple[dict, dict[str, list[bytes]]]:
    import tensorflow as tf

    report = run_example_gen(config, out)
    records = {s: sorted(r.numpy() for r in tf.data.TFRecordDataset(sorted(glob.glob(split_pattern(out, s)))))
               for s in fk.SPLITS}
    return report, records


def test_second_ingest_decodes_nothing_and_writes_the_same(tiny_config, data, tmp_path, decodes):
    config = dataclasses.replace(tiny_config, data=(f"folders:{data}",), ingest_cache=str(tmp_path / "cache"))
    first, first_records = _ingest(config, str(tmp_path / "a"))
    assert len(decodes) == 42
    assert first["check_cache"]["reused"] == 0 and first["check_cache"]["decoded"] == 42

    decodes.clear()
    second, second_records = _ingest(config, str(tmp_path / "b"))
    assert decodes == []
    assert second["check_cache"] == {**first["check_cache"], "reused": 42, "decoded": 0}
    assert second_records == first_records
    drop = ("check_cache",)
    assert {k: v for k, v in second.items() if k not in drop} == {k: v for k, v in first.items() if k not in drop}


def test_a_changed_file_is_checked_again(tiny_config, data, tmp_path, decodes):
    config = dataclasses.replace(tiny_config, data=(f"folders:{data}",), ingest_cache=str(tmp_path / "cache"))
    run_example_gen(config, str(tmp_path / "a"))
    victim = sorted(glob.glob(os.path.join(data, "normal", "*")))[0]
    with open(victim, "r+b") as f:  # truncate in place: same path and name, new bytes
        f.truncate(os.path.getsize(victim) // 2)
    decodes.clear()
    report = run_example_gen(config, str(tmp_path / "b"))
    assert len(decodes) == 1
    assert report["check_cache"]["reused"] == 41
    assert [s["path"] for s in report["skipped"] if s["reason"] == "corrupt"] == [victim]


def test_size_limits_apply_to_cached_checks(tiny_config, data, tmp_path, decodes):
    config = dataclasses.replace(tiny_config, data=(f"folders:{data}",), ingest_cache=str(tmp_path / "cache"))
    run_example_gen(config, str(tmp_path / "a"))
    decodes.clear()
    # The sample's images are 48-64 px on a side: a 3,000-pixel limit rejects the larger ones.
    report = run_example_gen(dataclasses.replace(config, max_image_pixels=3000), str(tmp_path / "b"))
    assert decodes == []
    too_large = sum(s.get("too_large", 0) for s in (v["excluded"] for v in report["sources"].values()))
    assert 0 < too_large < 42
    assert report["check_cache"]["reused"] == 42 - too_large


@pytest.mark.parametrize("damage", ['{"truncated": ', '{"0a1b": {"width": 64}}', "[]"])
def test_unreadable_cache_file_is_skipped_and_named(tiny_config, data, tmp_path, decodes, damage):
    cache = str(tmp_path / "cache")
    config = dataclasses.replace(tiny_config, data=(f"folders:{data}",), ingest_cache=cache)
    run_example_gen(config, str(tmp_path / "a"))
    (written,) = glob.glob(os.path.join(cache, f"v{check_cache.VERSION}", "*.json"))
    with open(written, "w") as f:
        f.write(damage)
    decodes.clear()
    report = run_example_gen(config, str(tmp_path / "b"))
    assert len(decodes) == 42
    assert report["check_cache"]["unreadable_cache_files"] == [os.path.basename(written)]
    # The run checked the same images again, so it wrote the same file name: repaired.
    decodes.clear()
    report = run_example_gen(config, str(tmp_path / "c"))
    assert decodes == [] and report["check_cache"]["unreadable_cache_files"] == []


def test_entries_of_another_recipe_version_are_ignored(tiny_config, data, tmp_path, decodes, monkeypatch):
    cache = str(tmp_path / "cache")
    config = dataclasses.replace(tiny_config, data=(f"folders:{data}",), ingest_cache=cache)
    run_example_gen(config, str(tmp_path / "a"))
    monkeypatch.setattr(check_cache, "VERSION", check_cache.VERSION + "-next")
    decodes.clear()
    run_example_gen(config, str(tmp_path / "b"))
    assert len(decodes) == 42
    assert len(os.listdir(cache)) == 2  # the old recipe's folder is left as it was


def test_off_by_default(tiny_config, tmp_path):
    assert tiny_config.ingest_cache == ""
    assert check_cache.lookup("", "0" * 64) is None
    assert check_cache.save("", {"x": {}}) is None


def test_cli_ingest_prints_what_the_cache_saved(data, tmp_path, capsys):
    from cxrflow import cli

    argv = ["ingest", "--data", f"folders:{data}", "--output", str(tmp_path / "out"),
            "--ingest-cache", str(tmp_path / "cache"), "--min-recall", ""]
    assert cli.main(argv) == 0
    assert "ingest cache: 0 checks reused, 42 images decoded" in capsys.readouterr().out
    assert cli.main([*argv[:4], str(tmp_path / "out2"), *argv[5:]]) == 0
    assert "ingest cache: 42 checks reused, 0 images decoded" in capsys.readouterr().out


def test_cache_in_a_bucket(tiny_config, data, tmp_path, decodes):
    # ram:// takes the same tf.io.gfile path as gs:// for listing, reading and atomic writes.
    import uuid

    cache = f"ram://cxrflow-cache-{uuid.uuid4().hex}/checks"
    config = dataclasses.replace(tiny_config, data=(f"folders:{data}",), ingest_cache=cache)
    run_example_gen(config, str(tmp_path / "a"))
    decodes.clear()
    report = run_example_gen(config, str(tmp_path / "b"))
    assert decodes == [] and report["check_cache"]["reused"] == 42
