"""Checking and normalising image files before they become examples.

ExampleGen keeps image bytes as found whenever the TF decoders inside the Transform graph (and
so inside the served model) read them: PNG (8/16-bit, gray, RGB(A), palette) and baseline JPEG
(gray, RGB). Anything else that is still a valid image (CMYK JPEG, TIFF, BMP, DICOM pixels) is
re-encoded losslessly as PNG, so that training and serving see the same decoder.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

MIN_SIDE = 32  # smaller than this is no chest X-ray (a 1x1 pixel, a thumbnail, an icon)

# (format, mode) pairs that tf.io.decode_image handles byte-for-byte as PIL reads them.
_TF_DECODABLE = {
    ("PNG", "L"),
    ("PNG", "LA"),
    ("PNG", "I;16"),
    ("PNG", "I;16B"),
    ("PNG", "RGB"),
    ("PNG", "RGBA"),
    ("PNG", "P"),
    ("JPEG", "L"),
    ("JPEG", "RGB"),
}


class ImageRejected(Exception):
    """A file that cannot become an example; `reason` is a short, countable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class CheckedImage:
    data: bytes  # bytes to store: the original, or a PNG re-encoding
    width: int
    height: int
    mode: str
    format: str
    reencoded: bool
    file_sha256: str
    pixel_hash: str  # dHash of decoded pixels: its bands are blocking keys for near-duplicate search
    thumbnail: bytes  # 16x16 contrast-normalised pixels: confirms a near-duplicate


def is_dicom(data: bytes) -> bool:
    """DICOM part-10 files carry a 128-byte preamble, then `DICM`."""
    return len(data) >= 132 and data[128:132] == b"DICM"


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, which the format puts first; None otherwise."""
    if len(data) < 24 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def check_size(width: int, height: int, max_pixels: int) -> None:
    """Raises ImageRejected when the dimensions are out of bounds (also for cached checks)."""
    if width * height > max_pixels:
        raise ImageRejected("too_large", f"{width}x{height} exceeds {max_pixels} pixels")
    if min(width, height) < MIN_SIDE:
        raise ImageRejected("too_small", f"{width}x{height} is under {MIN_SIDE} px")


def check_image(data: bytes, max_pixels: int, sha256: str = "") -> CheckedImage:
    """Validates encoded image bytes; raises ImageRejected with a reason code otherwise.

    `sha256`: the hex digest of `data` when the caller has it already (saves hashing twice).

    DICOM bytes are first rendered to PNG (see sources/dicom.py): PIL and TF read no DICOM,
    and doing it here lets a bad DICOM file flow into the same skip reporting as any other.
    """
    if not data:
        raise ImageRejected("empty", "zero-byte file")
    original = data
    from_dicom = is_dicom(data)
    if from_dicom:
        from cxrflow.sources.dicom import dicom_to_png_bytes  # lazy: pydicom only for DICOM

        data = dicom_to_png_bytes(data, max_pixels)
    declared = _png_declared_size(data)
    if declared and declared[0] * declared[1] > max_pixels:
        # Read from the header bytes: PIL would reject a header-only bomb as "not an image"
        # (no IDAT yet), hiding what it is.
        raise ImageRejected("too_large", f"{declared[0]}x{declared[1]} exceeds {max_pixels} pixels")
    try:
        with warnings.catch_warnings():
            # PIL warns (not raises) between max_pixels and 2x max_pixels; we check ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            fmt, mode = img.format or "", img.mode
    except Image.DecompressionBombError as e:
        raise ImageRejected("too_large", str(e)) from e
    except Exception as e:  # PIL raises many types for non-images
        raise ImageRejected("not_image", type(e).__name__) from e
    check_size(width, height, max_pixels)
    # A JPEG stored as found is only needed here for its fingerprints, so libjpeg may scale it
    # down while decoding (DCT scaling: an area average, no colour conversion). Every entropy-coded
    # byte is still decoded, so truncated and corrupt files fail just as in a full decode; this
    # was 8.0 -> 5.2 ms per 2 MP RGB JPEG (bench/). JPEGs that must be re-encoded decode fully.
    # The scaled image is whole 8x8 blocks: `box` is the part that is the picture, and the
    # preview must be cut from exactly that, or copies drift apart by a fraction of a pixel.
    box = None
    if fmt == "JPEG" and (fmt, mode) in _TF_DECODABLE:
        box = img.draft("L", (2 * PREVIEW_SIZE, 2 * PREVIEW_SIZE))[1]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()  # decodes every byte: catches truncated and corrupt files
    except Exception as e:
        raise ImageRejected("corrupt", f"{type(e).__name__}: {e}") from e
    if from_dicom:  # `data` is already the TF-decodable PNG rendering
        reencoded, stored, fmt = True, data, "DICOM"
    else:
        reencoded = (fmt, mode) not in _TF_DECODABLE
        stored = to_png_bytes(img) if reencoded else data
    return CheckedImage(
        data=stored,
        width=width,
        height=height,
        mode=mode,
        format=fmt,
        reencoded=reencoded,
        file_sha256=sha256 or hashlib.sha256(original).hexdigest(),
        # One small grayscale preview serves both: converting and resizing the full-resolution
        # image once instead of twice was a measurable share of ExampleGen's time (bench/).
        **_fingerprints(gray_preview(img, box)),
    )


PREVIEW_SIZE = 64


def gray_preview(img: Image.Image, box: tuple[float, float, float, float] | None = None) -> Image.Image:
    """An 8-bit grayscale PREVIEW_SIZE square of any image (16-bit and float modes included).

    `box` is the region of `img` to use (a JPEG draft's picture area); the whole image if None.
    """
    size = (PREVIEW_SIZE, PREVIEW_SIZE)
    if img.mode in ("I;16", "I;16B", "I;16L"):
        # Shrink first, in 32-bit, then scale to 8 bits: converting every full-resolution pixel
        # to float first cost 11 ms of a 2 MP 16-bit PNG's 30 ms (bench/).
        small = np.asarray(img.convert("I").resize(size, Image.BILINEAR, reducing_gap=2.0), np.float32)
        return Image.fromarray((np.clip(small / 65535.0, 0.0, 1.0) * 255).astype(np.uint8))
    if img.mode in ("I", "F"):  # scaled by the image's own range, so converted at full size
        return Image.fromarray((to_grayscale_array(img) * 255).astype(np.uint8)).resize(
            size, Image.BILINEAR, reducing_gap=2.0
        )
    # reducing_gap: box-reduce by an integer factor first, then resample; fast and antialiased.
    return img.convert("L").resize(size, Image.BILINEAR, box=box, reducing_gap=2.0)


def _fingerprints(preview: Image.Image) -> dict:
    return {"pixel_hash": pixel_hash(preview), "thumbnail": thumbnail(preview)}


def to_grayscale_array(img: Image.Image) -> np.ndarray:
    """Float32 [0,1] grayscale pixels for any PIL mode, 16-bit included."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return np.clip(arr / top, 0.0, 1.0)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


HASH_SIZE = 16  # dHash grid: HASH_SIZE rows of HASH_SIZE bits


def pixel_hash(img: Image.Image, size: int = HASH_SIZE) -> str:
    """Difference hash of the decoded image: survives re-encoding, resizing and bit depth.

    Each bit says whether a pixel of a size x (size+1) thumbnail is darker than its right
    neighbour; compression noise rarely flips such comparisons while content changes do.
    The hash is used only through its rows (`hash_bands`), never as one key: a copy flips a
    few bits, and a single flipped bit would break a whole-hash key.
    """
    gray = img if img.mode == "L" else gray_preview(img)
    thumb = gray.resize((size + 1, size), Image.BILINEAR)
    arr = np.asarray(thumb, dtype=np.int16)
    bits = (arr[:, 1:] > arr[:, :-1]).flatten()
    return np.packbits(bits).tobytes().hex()


def hash_bands(hash_hex: str, bands: int = HASH_SIZE) -> list[str]:
    """LSH blocking keys: the hash cut into `bands` slices, each tagged with its position.

    Two images become candidates when any slice matches, so a copy whose hash differs in up to
    `bands - 1` bits is always found (one slice must be clean), and usually with many more
    flips, since resampling noise gathers in a few rows. With the default, one slice is one
    row of the grid: a horizontal strip of the image.
    """
    step = max(1, len(hash_hex) // bands)
    slices = (hash_hex[i * step : (i + 1) * step] for i in range(len(hash_hex) // step))
    # A flat strip (all bits equal: a black border, padding) says nothing about the image and
    # would put every padded image into one block, so it is no key.
    return [f"{i}:{part}" for i, part in enumerate(slices) if part.strip("0") and part.strip("f")]


THUMB_SIZE = 16
# Root-mean-square difference of thumbnails, on a 0-255 scale. Measured on the synthetic sample
# (cxrflow.sample_data, 360 images, seeds 0-3): copies re-encoded as JPEG q50-90, resized to
# 50-150% or squashed to 224x224, or re-exposed stay under 2.5, while the closest two distinct
# images are 4.9 apart. RMS rather than the mean absolute difference because two different
# images differ a lot in a few places (a lesion, a shifted border), which RMS weighs up, while a
# copy differs a little everywhere. Not robust to gamma/CLAHE re-processing (those copies land
# near 9): catching them would also merge distinct look-alikes.
NEAR_DUPLICATE_MAX_RMS = 3.5


def thumbnail(img: Image.Image) -> bytes:
    """16x16 grayscale thumbnail stretched to the full 0-255 range (exposure-independent)."""
    gray = img if img.mode == "L" else gray_preview(img)
    small = np.asarray(gray.resize((THUMB_SIZE, THUMB_SIZE), Image.BILINEAR), dtype=np.float32)
    lo, hi = np.percentile(small, 1), np.percentile(small, 99)
    stretched = np.clip((small - lo) / max(hi - lo, 1.0), 0, 1) * 255
    return stretched.astype(np.uint8).tobytes()


def thumbnail_distances(thumb: bytes, others: list[bytes]) -> np.ndarray:
    """RMS difference between one thumbnail and each of `others` (vectorised: blocks are big)."""
    if not others:
        return np.zeros(0, np.float32)
    a = np.frombuffer(thumb, np.uint8).astype(np.float32)
    b = np.frombuffer(b"".join(others), np.uint8).astype(np.float32).reshape(len(others), -1)
    if b.shape[1] != a.shape[0]:
        raise ValueError("thumbnails of different sizes")
    return np.sqrt(((b - a) ** 2).mean(axis=1))


def thumbnails_match(a: bytes, b: bytes) -> bool:
    """True when two thumbnails show the same picture up to re-encoding and resizing."""
    if not a or not b or len(a) != len(b):
        return False
    return float(thumbnail_distances(a, [b])[0]) <= NEAR_DUPLICATE_MAX_RMS


def to_png_bytes(img: Image.Image) -> bytes:
    """Lossless PNG re-encoding; 16-bit grayscale stays 16-bit."""
    if img.mode in ("I;16", "I;16B", "I;16L"):
        out = img
    elif img.mode in ("I", "F"):
        out = Image.fromarray((to_grayscale_array(img) * 65535).astype(np.uint16))
    elif img.mode in ("L", "RGB", "RGBA", "LA"):
        out = img
    else:  # CMYK, YCbCr, P with odd palettes, 1-bit, ...
        out = img.convert("RGB")
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()
