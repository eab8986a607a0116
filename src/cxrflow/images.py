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
    pixel_hash: str  # coarse hash of decoded pixels: a blocking key for near-duplicate search
    thumbnail: bytes  # 16x16 contrast-normalised pixels: confirms a near-duplicate


def check_image(data: bytes, max_pixels: int) -> CheckedImage:
    """Validates encoded image bytes; raises ImageRejected with a reason code otherwise."""
    if not data:
        raise ImageRejected("empty", "zero-byte file")
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
    if width * height > max_pixels:
        raise ImageRejected("too_large", f"{width}x{height} exceeds {max_pixels} pixels")
    if min(width, height) < MIN_SIDE:
        raise ImageRejected("too_small", f"{width}x{height} is under {MIN_SIDE} px")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()  # full decode: catches truncated and corrupt files
    except Exception as e:
        raise ImageRejected("corrupt", f"{type(e).__name__}: {e}") from e
    reencoded = (fmt, mode) not in _TF_DECODABLE
    stored = to_png_bytes(img) if reencoded else data
    return CheckedImage(
        data=stored,
        width=width,
        height=height,
        mode=mode,
        format=fmt,
        reencoded=reencoded,
        file_sha256=hashlib.sha256(data).hexdigest(),
        pixel_hash=pixel_hash(img),
        thumbnail=thumbnail(img),
    )


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


def pixel_hash(img: Image.Image, size: int = 9) -> str:
    """Difference hash of the decoded image: survives re-encoding, resizing and bit depth.

    Each bit says whether a pixel of a (size-1)x size-1 thumbnail is brighter than its right
    neighbour; compression noise rarely flips such comparisons while content changes do.
    """
    gray = to_grayscale_array(img)
    thumb = Image.fromarray((gray * 255).astype(np.uint8)).resize((size, size - 1), Image.BILINEAR)
    arr = np.asarray(thumb, dtype=np.int16)
    bits = (arr[:, 1:] > arr[:, :-1]).flatten()
    return np.packbits(bits).tobytes().hex()


THUMB_SIZE = 16
NEAR_DUPLICATE_MAX_DIFF = 6.0  # mean absolute difference of thumbnails, on a 0-255 scale


def thumbnail(img: Image.Image) -> bytes:
    """16x16 grayscale thumbnail stretched to the full 0-255 range (exposure-independent)."""
    gray = to_grayscale_array(img)
    small = np.asarray(
        Image.fromarray((gray * 255).astype(np.uint8)).resize((THUMB_SIZE, THUMB_SIZE), Image.BILINEAR),
        dtype=np.float32,
    )
    lo, hi = np.percentile(small, 1), np.percentile(small, 99)
    stretched = np.clip((small - lo) / max(hi - lo, 1.0), 0, 1) * 255
    return stretched.astype(np.uint8).tobytes()


def thumbnails_match(a: bytes, b: bytes) -> bool:
    """True when two thumbnails show the same picture up to re-encoding and resizing."""
    diff = np.abs(np.frombuffer(a, np.uint8).astype(np.int16) - np.frombuffer(b, np.uint8).astype(np.int16))
    return float(diff.mean()) <= NEAR_DUPLICATE_MAX_DIFF


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
