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
