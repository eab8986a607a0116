"""Benchmark images at realistic sizes (1-3 MP): 8-bit PNG, 16-bit PNG and RGB JPEG, cached.

Images are drawn once into a pool (`bench/_data/pool/<class>/`) with cxrflow's own synthetic
anatomy (`sample_data.render`), upscaled and given full-resolution quantum noise so that files
compress like real radiographs rather than like smooth drawings, then encoded with
`sample_data.encode`. A dataset of n images is a folder of hard links to the first n pool files
(`bench/_data/sets/n<n>/`), so the 1x and 4x sets share files and nothing is generated twice.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

from cxrflow.sample_data import encode, render
from cxrflow.sources import ADAPTERS

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_data")
CLASSES = ("covid", "bacterial", "normal")
ENCODINGS = ("png8", "png16", "jpeg_rgb")
RENDER_SIZE = 384
MIN_PIXELS, MAX_PIXELS = 1_000_000, 3_000_000
POOL_VERSION = 1  # bump when the generator changes: old pools are then ignored


def pool_dir() -> str:
    return os.path.join(DATA_DIR, f"pool_v{POOL_VERSION}")


def _name(index: int) -> tuple[str, str]:
    """(class, file name) of pool image `index`; classes and encodings rotate evenly."""
    label = CLASSES[index % len(CLASSES)]
    encoding = ENCODINGS[(index // len(CLASSES)) % len(ENCODINGS)]
    ext = "jpg" if encoding == "jpeg_rgb" else "png"
    return label, f"p{index:06d}_{encoding}.{ext}"


def _make(index: int) -> str:
    label, name = _name(index)
    path = os.path.join(pool_dir(), label, name)
    if os.path.exists(path):
        return path
    rng = np.random.default_rng([2026, index])
    pixels = rng.uniform(MIN_PIXELS, MAX_PIXELS)
    aspect = rng.uniform(1.0, 1.25)  # portrait, as chest films are
    width = int((pixels / aspect) ** 0.5)
    height = int(width * aspect)
    small = render(label, rng, RENDER_SIZE)
    big = np.asarray(Image.fromarray(small, mode="F").resize((width, height), Image.BILINEAR), np.float32)
    big = np.clip(big + rng.normal(0, 0.02, big.shape).astype(np.float32), 0, 1)
    encoding = name.split("_", 1)[1].rsplit(".", 1)[0]
    data = encode(big, encoding, (width, height))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def ensure_pool(n: int, workers: int = 2) -> list[str]:
    """The first n pool images (generated on first use); returns their paths."""
    for label in CLASSES:
        os.makedirs(os.path.join(pool_dir(), label), exist_ok=True)
    missing = [i for i in range(n) if not os.path.exists(os.path.join(pool_dir(), *_name(i)))]
    if missing:
        print(f"[data] generating {len(missing)} images of 1-3 MP into {pool_dir()} (cached) ...", flush=True)
        with ProcessPoolExecutor(workers) as ex:
            list(ex.map(_make, missing, chunksize=4))
    return [os.path.join(pool_dir(), *_name(i)) for i in range(n)]


def ensure_set(n: int) -> str:
    """A folder tree `<class>/<file>` of the first n pool images (hard links); returns its root."""
    paths = ensure_pool(n)
    root = os.path.join(DATA_DIR, "sets", f"n{n}")
    for path in paths:
        label = os.path.basename(os.path.dirname(path))
        dest = os.path.join(root, label, os.path.basename(path))
        if not os.path.exists(dest):
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            try:
                os.link(path, dest)
            except OSError:
                os.symlink(path, dest)
    return root


def list_set(root: str) -> list[str]:
    return sorted(os.path.join(dp, f) for dp, _, files in os.walk(root) for f in files if not f.startswith("."))


def describe(paths: list[str]) -> dict:
    """Counts per format and mode, megapixels and bytes: printed so a reader knows what was measured."""
    mp, size, enc = [], 0, {}
    for p in paths:
        with Image.open(p) as im:
            mp.append(im.size[0] * im.size[1] / 1e6)
            key = f"{im.format} {im.mode}"
        size += os.path.getsize(p)
        enc[key] = enc.get(key, 0) + 1
    return {
        "images": len(paths),
        "megapixels_mean": round(float(np.mean(mp)), 2),
        "megapixels_min": round(min(mp), 2),
        "megapixels_max": round(max(mp), 2),
        "mb_mean": round(size / len(paths) / 1e6, 2),
        "encodings": enc,
    }


# The real development X-rays live beside the project's root and are never copied into the repo
# (tests/conftest.py looks in the same places).
REALDATA_DEFAULT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "realdata")
REALDATA_SOURCES = ("kaggle", "ieee", "actualmed")  # each `<kind>:<root>/<kind>` whose adapter exists


def realdata_root() -> tuple[str | None, str]:
    """(root, "") of the real X-ray set, `$CXRFLOW_REALDATA` else `../shared/realdata`; (None,
    why) when it is absent."""
    root = os.path.abspath(os.environ.get("CXRFLOW_REALDATA") or REALDATA_DEFAULT)
    if not os.path.isfile(os.path.join(root, "SOURCES.md")):
        return None, f"real X-rays not found at {root}: set CXRFLOW_REALDATA or place them in ../shared/realdata"
    return root, ""


def realdata_entries(root: str) -> tuple[str, ...]:
    """`--data` entries for the sources of the real set that cxrflow has an adapter for."""
    return tuple(
        f"{kind}:{os.path.join(root, kind)}"
        for kind in REALDATA_SOURCES
        if kind in ADAPTERS and os.path.isdir(os.path.join(root, kind))
    )
