"""A deterministic synthetic chest-X-ray-like dataset for the demo and the tests.

Each image draws a thorax (soft tissue, spine, ribs, heart, two lungs) with per-image anatomy
jitter; the class adds its own pattern:
- normal: clear, dark lungs;
- covid: diffuse, patchy, bilateral haze in the lung periphery (ground-glass-like);
- bacterial: one dense lobar consolidation in one lung.

File traits are drawn independently of the class (8-bit PNG, 16-bit PNG or RGB JPEG, varied
sizes), so a model cannot score by reading the encoding instead of the pixels: real public
sets leak the class that way, and the demo must not teach that habit.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

ENCODINGS = ("png8", "png16", "jpeg_rgb")


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0,1]: a coarse random grid upsampled bilinearly."""
    coarse = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def render(label: str, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """Returns a float32 [0,1] grayscale image of `size` x `size`."""
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / size
    img = np.full((h, w), 0.08, np.float32)
    # Body and soft tissue.
    body = _ellipse(yy, xx, 0.55, 0.5, 0.55 + rng.normal(0, 0.02), 0.42 + rng.normal(0, 0.02)) < 1
    img[body] = 0.55
    # Lungs: dark fields either side of the mediastinum.
    lung_y = 0.5 + rng.normal(0, 0.02)
    lung_ry, lung_rx = 0.27 + rng.normal(0, 0.015), 0.13 + rng.normal(0, 0.01)
    centres = (0.5 - 0.17 + rng.normal(0, 0.01), 0.5 + 0.17 + rng.normal(0, 0.01))
    lungs = [_ellipse(yy, xx, lung_y, cx, lung_ry, lung_rx) for cx in centres]
    lung_mask = (lungs[0] < 1) | (lungs[1] < 1)
    img[lung_mask] = 0.18
    # Ribs: faint horizontal arcs across the lungs.
    for k in range(8):
        ry = lung_y - lung_ry + (k + 0.5) * (2 * lung_ry / 8)
        arc = np.abs(yy - ry - 0.04 * ((xx - 0.5) / 0.3) ** 2) < 0.006
        img[arc & lung_mask] += 0.08
    # Spine and heart.
    img[(np.abs(xx - 0.5) < 0.035) & body] = 0.75
    heart = _ellipse(yy, xx, 0.62 + rng.normal(0, 0.01), 0.56, 0.12, 0.1 + rng.normal(0, 0.01)) < 1
    img[heart] = np.maximum(img[heart], 0.62)

    if label == "covid":
        # Bilateral, peripheral, patchy haze: strongest at the lung's outer edge.
        patches = _smooth_noise(rng, h, w, 7)
        for cx, lung in zip(centres, lungs, strict=True):
            outward = np.clip((xx - cx) * np.sign(cx - 0.5) / lung_rx, 0, 1)
            periphery = (lung < 1) * (0.35 + 0.65 * outward)
            img += 0.42 * periphery * (0.3 + 0.7 * patches)
    elif label == "bacterial":
        # One dense lobar consolidation: a large bright blob in one lobe of one lung.
        side = rng.integers(0, 2)
        cx = centres[side] + rng.normal(0, 0.02)
        cy = lung_y + rng.choice([-0.13, 0.13]) + rng.normal(0, 0.02)
        blob = _ellipse(yy, xx, cy, cx, 0.12 + rng.normal(0, 0.01), 0.09 + rng.normal(0, 0.01))
        img += 0.6 * np.clip(1.2 - blob, 0, 1) * (lungs[side] < 1)
    # Acquisition: exposure and contrast vary between machines, plus quantum noise.
    img = img * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)
    img += rng.normal(0, 0.025, img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def encode(pixels: np.ndarray, encoding: str, out_size: tuple[int, int]) -> bytes:
    """Encodes [0,1] grayscale pixels as an 8-bit PNG, a 16-bit PNG or an RGB JPEG."""
    w, h = out_size
    base = Image.fromarray((pixels * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    if encoding == "png8":
        base.save(buf, format="PNG")
    elif encoding == "png16":
        wide = np.asarray(base, dtype=np.uint16) * 257
        Image.fromarray(wide).save(buf, format="PNG")
    elif encoding == "jpeg_rgb":
        base.convert("RGB").save(buf, format="JPEG", quality=90)
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    return buf.getvalue()


def write_sample_dataset(
    root: str,
    per_class: int = 120,
    classes: Sequence[str] = ("covid", "bacterial", "normal"),
    seed: int = 0,
    render_size: int = 192,
    size_range: tuple[int, int] = (160, 320),
) -> dict[str, int]:
    """Writes `root/<class>/<file>` deterministically; returns the count per class.

    `render_size` is the resolution the anatomy is drawn at; files are then resized to a size
    drawn from `size_range` (aspect ratios vary too) and encoded as one of ENCODINGS.
    """
    counts: dict[str, int] = {}
    for class_index, label in enumerate(classes):
        folder = os.path.join(root, label)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, class_index, i])
            pixels = render(label, rng, render_size)
            encoding = ENCODINGS[int(rng.integers(0, len(ENCODINGS)))]
            width = int(rng.integers(size_range[0], size_range[1] + 1))
            height = int(width * rng.uniform(0.9, 1.2))
            ext = "jpg" if encoding.startswith("jpeg") else "png"
            path = os.path.join(folder, f"patient{class_index:02d}{i:05d}.{ext}")
            with open(path, "wb") as f:
                f.write(encode(pixels, encoding, (width, height)))
        counts[label] = per_class
    return counts
