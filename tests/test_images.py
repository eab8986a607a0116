import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cxrflow.images import ImageRejected, check_image
from tests.conftest import png_bytes


def forged_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size; decoding it would allocate gigabytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"<html><body>not an image</body></html>", "not_image"),
        (png_bytes()[:200], "corrupt"),
        (forged_png_header(20000, 20000), "too_large"),
        (png_bytes(size=(1, 1)), "too_small"),
    ],
)
def test_rejects_bad_files_with_a_reason(data, reason):
    with pytest.raises(ImageRejected) as info:
        check_image(data, max_pixels=50_000_000)
    assert info.value.reason == reason


def test_keeps_tf_decodable_bytes_and_reencodes_cmyk():
    gray = png_bytes()
    assert check_image(gray, 10**8).data == gray
    img = Image.open(io.BytesIO(png_bytes("RGB"))).convert("CMYK")
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    checked = check_image(buf.getvalue(), 10**8)
    assert checked.reencoded and checked.data[:8] == b"\x89PNG\r\n\x1a\n"


def test_sixteen_bit_png_keeps_its_depth():
    data = png_bytes(bits16=True)
    checked = check_image(data, 10**8)
    assert not checked.reencoded and checked.mode.startswith("I;16")
    assert np.asarray(Image.open(io.BytesIO(checked.data))).max() > 255


def _film(size: tuple[int, int] = (1210, 1450)) -> np.ndarray:
    """A radiograph-sized picture with grain: large enough that libjpeg scales it down on decode."""
    from cxrflow.sample_data import render

    rng = np.random.default_rng(11)
    small = Image.fromarray(render("covid", rng, 256), mode="F").resize(size, Image.BILINEAR)
    return np.clip(np.asarray(small) + rng.normal(0, 0.02, small.size[::-1]), 0, 1)


def _encode(pixels: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray((pixels * 255).astype(np.uint8))
    (img.convert("RGB") if fmt == "JPEG" else img).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_large_jpeg_fingerprints_match_its_png_copy():
    # Large JPEGs are fingerprinted from libjpeg's scaled decode, PNGs from a full decode: the
    # two previews must show the same picture (an unaligned draft once drifted to RMS 5).
    from cxrflow.images import thumbnails_match

    film = _film()
    jpeg = check_image(_encode(film, "JPEG", quality=85), 50_000_000)
    png = check_image(_encode(film, "PNG"), 50_000_000)
    half = check_image(_encode(film[::2, ::2], "PNG"), 50_000_000)
    assert (jpeg.width, jpeg.height) == (1210, 1450)  # the size recorded is the file's, not the draft's
    assert thumbnails_match(jpeg.thumbnail, png.thumbnail)
    assert thumbnails_match(jpeg.thumbnail, half.thumbnail)
    assert bin(int(jpeg.pixel_hash, 16) ^ int(png.pixel_hash, 16)).count("1") <= 8


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99, -2])  # -2: all but the end-of-image marker
def test_truncated_large_jpeg_is_corrupt_despite_scaled_decoding(keep, progressive):
    data = _encode(_film(), "JPEG", quality=85, progressive=progressive)
    cut = keep if keep < 0 else int(len(data) * keep)
    with pytest.raises(ImageRejected) as info:
        check_image(data[:cut], 50_000_000)
    assert info.value.reason == "corrupt"
