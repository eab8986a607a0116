import glob

import tensorflow as tf

from cxrflow import features as fk
from cxrflow.stages.example_gen import split_pattern


def test_writes_every_split_with_all_features(examples, stage_dirs):
    total = 0
    for split in fk.SPLITS:
        files = glob.glob(split_pattern(stage_dirs["examples"], split))
        assert files, split
        records = list(tf.data.TFRecordDataset(files))
        assert len(records) == sum(examples["splits"][split].values())
        total += len(records)
        parsed = tf.io.parse_single_example(records[0], fk.raw_feature_spec())
        assert parsed[fk.LABEL_KEY].numpy().decode() in ("covid", "bacterial", "normal")
        assert parsed[fk.IMAGE_KEY].numpy()[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb")
    assert total == 42
    assert examples["patient_overlap"] == 0
    assert examples["sources"][next(iter(examples["sources"]))]["kept"] == {"covid": 14, "bacterial": 14,
                                                                             "normal": 14}


def test_examples_carry_the_file_traits_of_the_files_as_found(examples, stage_dirs, tiny_data):
    import os

    from PIL import Image

    seen = 0
    for split in fk.SPLITS:
        for raw in tf.data.TFRecordDataset(glob.glob(split_pattern(stage_dirs["examples"], split))):
            parsed = tf.io.parse_single_example(raw, fk.raw_feature_spec((fk.IMAGE_ID_KEY, *fk.TRAIT_KEYS)))
            path = os.path.join(tiny_data, parsed[fk.IMAGE_ID_KEY].numpy().decode().split(":", 2)[2])
            with Image.open(path) as img:
                expected = {fk.TRAIT_BYTES_KEY: os.path.getsize(path), fk.TRAIT_WIDTH_KEY: img.width,
                            fk.TRAIT_HEIGHT_KEY: img.height, fk.TRAIT_CHANNELS_KEY: len(img.getbands()),
                            fk.TRAIT_BIT_DEPTH_KEY: 16 if img.mode.startswith("I;16") else 8,
                            fk.TRAIT_FORMAT_KEY: img.format.encode(), fk.TRAIT_MODE_KEY: img.mode.encode()}
            assert {k: v.numpy() for k, v in parsed.items() if k != fk.IMAGE_ID_KEY} == expected
            seen += 1
    assert seen == 42
    # The three encodings of the sample set all show up, so the check above covered each.
    modes = {tf.io.parse_single_example(raw, fk.trait_feature_spec())[fk.TRAIT_MODE_KEY].numpy()
             for split in fk.SPLITS
             for raw in tf.data.TFRecordDataset(glob.glob(split_pattern(stage_dirs["examples"], split)))}
    assert modes == {b"L", b"I;16", b"RGB"}


def test_a_reencoded_file_keeps_the_traits_of_the_original(tmp_path):
    import io

    from PIL import Image

    from cxrflow.sources import Record
    from cxrflow.stages.example_gen import write_examples

    path = tmp_path / "a.tif"
    Image.new("RGB", (48, 40), (90, 90, 90)).save(path, format="TIFF")
    record = Record(str(path), "folders:x:a.tif", "covid", "folders:x:a", "folders:x")
    plan = {"assignment": {record.image_id: "train"}, "reencode": {record.image_id}}
    [(split, raw)] = list(write_examples(record, plan, 10**8))
    parsed = tf.io.parse_single_example(raw, fk.raw_feature_spec((fk.IMAGE_KEY, *fk.TRAIT_KEYS)))
    assert split == "train"
    assert Image.open(io.BytesIO(parsed[fk.IMAGE_KEY].numpy())).format == "PNG"  # re-encoded for TF
    assert parsed[fk.TRAIT_FORMAT_KEY].numpy() == b"TIFF" and parsed[fk.TRAIT_MODE_KEY].numpy() == b"RGB"
    assert parsed[fk.TRAIT_BYTES_KEY].numpy() == path.stat().st_size
    assert (parsed[fk.TRAIT_WIDTH_KEY].numpy(), parsed[fk.TRAIT_CHANNELS_KEY].numpy()) == (48, 3)


def test_the_report_has_a_confounding_section(examples):
    confounding = examples["confounding"]
    assert confounding["images"] == 42
    assert confounding["class_by_source"] == {c: {"folders:data": 14} for c in ("covid", "bacterial", "normal")}
    assert confounding["cramers_v"] is None  # one source: class and source cannot be confounded
    assert examples["test_source"] == ""


def split_of_each_image(examples_dir: str) -> dict[str, str]:
    found = {}
    for split in fk.SPLITS:
        for raw in tf.data.TFRecordDataset(glob.glob(split_pattern(examples_dir, split))):
            parsed = tf.io.parse_single_example(raw, fk.raw_feature_spec((fk.IMAGE_ID_KEY,)))
            found[parsed[fk.IMAGE_ID_KEY].numpy().decode()] = split
    return found


def test_reingesting_with_half_as_many_patients_again_moves_no_earlier_patient(tmp_path):
    """Issue 13.1, through the real ExampleGen: 12 patients per class, then 18."""
    from cxrflow.config import PipelineConfig
    from cxrflow.sample_data import write_sample_dataset
    from cxrflow.stages.example_gen import run_example_gen

    root = str(tmp_path / "data")
    config = PipelineConfig(data=(f"folders:{root}",), seed=1)  # a seed whose buckets need no fallback
    write_sample_dataset(root, per_class=12, render_size=64, size_range=(48, 64))
    first = run_example_gen(config, str(tmp_path / "first"))
    before = split_of_each_image(str(tmp_path / "first"))
    write_sample_dataset(root, per_class=18, render_size=64, size_range=(48, 64))  # the first 12 unchanged
    second = run_example_gen(config, str(tmp_path / "second"))
    after = split_of_each_image(str(tmp_path / "second"))
    assert first["fallback"] == second["fallback"] == []  # so no move is allowed at all
    assert len(before) == 36 and len(after) == 54
    assert {i: after[i] for i in before} == before
    assert {s for s in after.values()} == {"train", "eval", "test"}


def test_test_source_through_example_gen(tmp_path, tiny_data):
    import pytest

    from cxrflow.config import PipelineConfig
    from cxrflow.sample_data import write_sample_dataset
    from cxrflow.stages.example_gen import run_example_gen

    other = str(tmp_path / "other")
    write_sample_dataset(other, per_class=4, render_size=32, size_range=(32, 40), seed=9)
    config = PipelineConfig(data=(f"folders:{tiny_data}", f"folders:{other}"), test_source="folders:other")
    report = run_example_gen(config, str(tmp_path / "out"))
    assert report["test_source"] == "folders:other"
    assert report["by_source"]["test"] == {"folders:other": {"covid": 4, "bacterial": 4, "normal": 4}}
    assert "folders:other" not in report["by_source"]["train"] and "folders:other" not in report["by_source"]["eval"]
    assert report["splits"]["test"] == {"covid": 4, "bacterial": 4, "normal": 4}
    with pytest.raises(ValueError, match=r"--test-source 'nih' is not one of the sources given: \['folders:data'"):
        run_example_gen(config.replace(test_source="nih"), str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="several sources"):
        run_example_gen(config.replace(test_source="folders"), str(tmp_path / "bad"))


def test_cli_ingest_takes_test_source_and_prints_the_confounding_warnings(tmp_path, tiny_data, capsys):
    from cxrflow.cli import main
    from cxrflow.sample_data import write_sample_dataset

    other = str(tmp_path / "other")
    write_sample_dataset(other, per_class=3, classes=("covid",), render_size=64, size_range=(48, 64), seed=5)
    code = main(["ingest", "--data", f"folders:{tiny_data}", "--data", f"folders:{other}",
                 "--test-source", "folders:other", "--output", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert code == 0
    assert "test split: every image of folders:other (external validation)" in printed
    # The external source holds covid only: the run says so instead of failing.
    assert "warning: Class 'bacterial' has no test images (the test source folders:other holds none)." in printed
    assert "warning: Class 'covid' comes only" not in printed
