"""Near-duplicate recall and precision of `deduplicate` on the synthetic sample dataset."""

from __future__ import annotations

import io
import os
import random

import numpy as np
import pytest
from PIL import Image

from cxrflow.images import check_image, hash_bands, to_grayscale_array
from cxrflow.sample_data import write_sample_dataset
from cxrflow.stages.splitting import ImageMeta, deduplicate

MAX_PIXELS = 50_000_000


def meta(image_id: str, data: bytes, label: str = "normal") -> ImageMeta:
    checked = check_image(data, MAX_PIXELS)
    return ImageMeta(
        image_id,
        image_id,
        label,
        image_id.split(":")[0],
        "",
        checked.file_sha256,
        checked.pixel_hash,
        checked.thumbnail,
    )


def reencode(data: bytes, scale: float, fmt: str, size: tuple[int, int] | None = None) -> bytes:
    """What mirrors do to a file: 8-bit gray, resized (or squashed to a square), re-encoded."""
    img = Image.open(io.BytesIO(data))
    gray = Image.fromarray((to_grayscale_array(img) * 255).astype(np.uint8))
    gray = gray.resize(size or (round(gray.width * scale), round(gray.height * scale)), Image.BILINEAR)
    buf = io.BytesIO()
    if fmt == "JPEG":
        gray.convert("RGB").save(buf, format="JPEG", quality=75)
    else:
        gray.save(buf, format="PNG")
    return buf.getvalue()


COPIES = {
    "jpeg75": lambda d: reencode(d, 0.75, "JPEG"),  # the case whose single hash key missed 10%
    "half_jpeg": lambda d: reencode(d, 0.5, "JPEG"),
    "square_png": lambda d: reencode(d, 1.0, "PNG", size=(160, 160)),
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> list[tuple[str, bytes]]:
    root = str(tmp_path_factory.mktemp("sample"))
    write_sample_dataset(root)  # the demo's own dataset, default size (360 images)
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names)
    out = []
    for path in files:
        with open(path, "rb") as f:
            out.append((os.path.relpath(path, root), f.read()))
    return out


@pytest.fixture(scope="module")
def originals(sample) -> list[ImageMeta]:
    return [meta(f"a:{rel}", data, rel.split("/")[0]) for rel, data in sample]


def test_distinct_sample_images_are_never_merged(originals):
    kept, duplicates = deduplicate(originals)
    assert duplicates == []
    assert len(kept) == len(originals)


@pytest.mark.parametrize("kind", sorted(COPIES))
def test_every_reencoded_copy_is_found(sample, originals, kind):
    copies = [meta(f"b:{rel}", COPIES[kind](data), rel.split("/")[0]) for rel, data in sample]
    kept, duplicates = deduplicate(originals + copies)
    # Each copy collapses onto its own original (ids sort "a:" before "b:"), and nothing else merges.
    assert sorted((d["image_id"], d["kept"], d["match"]) for d in duplicates) == sorted(
        (c.image_id, "a:" + c.image_id[2:], "pixels") for c in copies
    )
    assert [k.image_id for k in kept] == [o.image_id for o in originals]


def test_survivor_does_not_depend_on_input_order(sample, originals):
    copies = [meta(f"b:{rel}", COPIES["jpeg75"](data)) for rel, data in sample[:30]]
    exact = [meta(f"c:{rel}", data) for rel, data in sample[:10]]
    items = originals[:30] + copies + exact
    expected = deduplicate(items)
    shuffled = list(items)
    random.Random(7).shuffle(shuffled)  # a local generator: no global seeding
    assert deduplicate(shuffled) == expected
    matches = {d["image_id"]: d["match"] for d in expected[1]}
    assert matches["c:" + sample[0][0]] == "exact"


def test_label_conflicts_are_flagged(sample):
    rel, data = sample[0]
    _, duplicates = deduplicate([meta("a:x", data, "covid"), meta("b:x", COPIES["jpeg75"](data), "normal")])
    assert duplicates == [{"image_id": "b:x", "kept": "a:x", "match": "pixels", "label_conflict": True}]


def test_flat_strips_are_no_blocking_key():
    flat = "0000" * 8 + "ffff" * 4 + "1234" * 4
    keys = hash_bands(flat)
    assert keys == [f"{i}:1234" for i in range(12, 16)]
