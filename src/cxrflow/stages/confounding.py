"""What besides the disease could give a class away: source, age group and file traits.

Public chest X-ray sets are merged by source, and the sources differ by more than disease: in
the usual COVID mix every COVID film is an adult's from one collection and every normal film a
child's from another (DeGrave et al., Nat. Mach. Intell. 2021; Roberts et al., ibid.). A model
can then score well by reading the source or the patient's age. ExampleGen's report measures
that here, from the kept images' labels, sources and age groups, and says it in plain words.
"""

from __future__ import annotations

import io
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image
from scipy.stats.contingency import association

from cxrflow import features as fk
from cxrflow.images import is_dicom

CHILD, ADULT, UNKNOWN = "child", "adult", "unknown"
AGE_GROUPS = (CHILD, ADULT)
ADULT_YEARS = 18
# Warn when class and source are this associated: Cramér's V of 0.5 or more is a strong
# association by any of the usual conventions, whatever the table's size.
CRAMERS_V_WARN = 0.5
# Warn when a class's age-group mix is this far (total variation) from the other classes':
# 0.5 means at least half of the class would have to change group to match them.
AGE_MIX_TV_WARN = 0.5
# Warn when a class has fewer train images than this (e.g. --test-source took nearly all of it).
MIN_TRAIN_IMAGES = 10

# Bits per sample of PIL modes, for formats whose header PIL does not expose otherwise.
_MODE_BITS = {"1": 1, "L": 8, "P": 8, "LA": 8, "PA": 8, "RGB": 8, "RGBA": 8, "RGBX": 8, "CMYK": 8,
              "YCbCr": 8, "LAB": 8, "HSV": 8, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16,
              "I": 32, "F": 32}


def age_group(age: str, declared: str = "") -> str:
    """`child` (under 18) / `adult` / "" (unknown). A source's declared group wins over the age.

    Ages come as "45", "45Y" or "4.5"; DICOM's "018M" is converted to years by its adapter.
    """
    if declared:
        return declared
    match = re.search(r"\d+(\.\d+)?", age or "")
    if not match:
        return ""
    return CHILD if float(match.group()) < ADULT_YEARS else ADULT


def file_traits(data: bytes) -> dict:
    """The file's own traits, from its header only (no pixel decode): bytes, size, channels,
    bit depth, format and PIL mode, keyed as in features.py. Unknown values are 0 or ""."""
    traits = {fk.TRAIT_BYTES_KEY: len(data), fk.TRAIT_WIDTH_KEY: 0, fk.TRAIT_HEIGHT_KEY: 0,
              fk.TRAIT_CHANNELS_KEY: 0, fk.TRAIT_BIT_DEPTH_KEY: 0, fk.TRAIT_FORMAT_KEY: "", fk.TRAIT_MODE_KEY: ""}
    if is_dicom(data):
        return traits | _dicom_traits(data)
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, mode, (width, height), bands = img.format or "", img.mode, img.size, len(img.getbands())
            bits = getattr(img, "bits", 0) if fmt == "JPEG" else 0  # 8, or 12 for 12-bit JPEG
    except Exception:  # noqa: BLE001 - PIL raises many types; an unreadable header has no traits
        return traits
    if fmt == "PNG" and data[12:16] == b"IHDR":
        bits = data[24]  # the IHDR bit depth: PIL opens 16-bit RGB PNG as 8-bit "RGB"
    return traits | {fk.TRAIT_WIDTH_KEY: width, fk.TRAIT_HEIGHT_KEY: height, fk.TRAIT_CHANNELS_KEY: bands,
                     fk.TRAIT_BIT_DEPTH_KEY: bits or _MODE_BITS.get(mode, 0),
                     fk.TRAIT_FORMAT_KEY: fmt, fk.TRAIT_MODE_KEY: mode}


def _dicom_traits(data: bytes) -> dict:
    import pydicom  # lazy: only DICOM sources need it

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        samples, allocated = int(ds.get("SamplesPerPixel", 1)), int(ds.get("BitsAllocated", 0))
        mode = "RGB" if samples == 3 else "I;16" if allocated > 8 else "L"
        return {fk.TRAIT_WIDTH_KEY: int(ds.get("Columns", 0)), fk.TRAIT_HEIGHT_KEY: int(ds.get("Rows", 0)),
                fk.TRAIT_CHANNELS_KEY: samples, fk.TRAIT_BIT_DEPTH_KEY: int(ds.get("BitsStored", allocated)),
                fk.TRAIT_FORMAT_KEY: "DICOM", fk.TRAIT_MODE_KEY: mode}
    except Exception:  # noqa: BLE001 - a header pydicom cannot parse has no traits
        return {fk.TRAIT_FORMAT_KEY: "DICOM"}


def cramers_v(table: np.ndarray) -> float | None:
    """Cramér's V of a contingency table (rows and columns that are all zero dropped); None when
    fewer than two rows or columns remain, where V is undefined."""
    table = np.asarray(table, dtype=np.int64)  # counts; scipy refuses floats
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    if min(table.shape) < 2:
        return None
    return float(association(table, method="cramer"))


def _mix(counts: Counter) -> dict[str, float]:
    total = sum(counts.values())
    return {g: counts.get(g, 0) / total if total else 0.0 for g in (*AGE_GROUPS, UNKNOWN)}


def _describe(mix: dict[str, float]) -> str:
    return ", ".join(f"{share:.0%} {group}" for group, share in mix.items() if share)


def confounding_report(rows: Iterable[tuple[str, str, str, str]], classes: Sequence[str],
                       splits: Sequence[str] = fk.SPLITS, test_source: str = "") -> dict:
    """Class x source and class x age group x source over the kept images, with warnings.

    `rows` are (split, class, source, age group) per kept image; an empty age group is unknown.
    """
    by_source: dict[str, Counter] = defaultdict(Counter)
    by_age_source: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    in_split: dict[str, Counter] = defaultdict(Counter)
    train_sources: dict[str, set[str]] = defaultdict(set)
    n = 0
    for split, label, source, group in rows:
        n += 1
        by_source[label][source] += 1
        if split == "train":
            train_sources[label].add(source)
        by_age_source[label][group or UNKNOWN][source] += 1
        in_split[split][label] += 1
    sources = sorted({s for counts in by_source.values() for s in counts})
    present = [c for c in classes if by_source.get(c)]
    table = np.array([[by_source[c][s] for s in sources] for c in present]).reshape(len(present), len(sources))
    v = cramers_v(table)
    warnings = []

    # Judged on train, what the model learns from (with --test-source, a class can have two
    # sources overall and one in train). With one source, class and source cannot be confounded.
    single = {}
    if len(set().union(*train_sources.values())) > 1:
        single = {c: next(iter(train_sources[c])) for c in present if len(train_sources[c]) == 1}
        for c, s in single.items():
            warnings.append(f"Class '{c}' comes only from source {s} in train: a model can recognise the "
                            "source (hospital, scanner, file format) instead of the disease.")
    if v is not None and v >= CRAMERS_V_WARN:
        warnings.append(f"Class and source are strongly associated (Cramér's V = {v:.2f} over {n} images; "
                        "0 means independent, 1 means the source gives the class away).")

    age_counts = {c: Counter({g: sum(s.values()) for g, s in by_age_source[c].items()}) for c in present}
    mixes, distance = {}, {}
    for c in present:
        rest = sum((age_counts[o] for o in present if o != c), Counter())
        mixes[c] = _mix(age_counts[c])
        if not rest:
            continue
        rest_mix = _mix(rest)
        distance[c] = round(0.5 * sum(abs(mixes[c][g] - rest_mix[g]) for g in rest_mix), 4)
        if distance[c] >= AGE_MIX_TV_WARN:
            warnings.append(f"Class '{c}' has a different age mix ({_describe(mixes[c])}) from the other "
                            f"classes ({_describe(rest_mix)}; total-variation distance {distance[c]:.2f}): "
                            "a model can learn age instead of the disease.")

    absent = {s: [c for c in classes if not in_split[s][c]] for s in splits}
    for c in classes:
        missing = [s for s in splits if c in absent[s]]
        if not by_source.get(c):
            warnings.append(f"Class '{c}' has no images in the data given: it cannot be learned or tested.")
        elif missing:
            why = (f" (the test source {test_source} holds none)" if test_source and missing == ["test"]
                   else f" (only the test source {test_source} holds it)" if test_source and "train" in missing
                   else " (fewer than 3 patients, or every one fixed by its source's own split)")
            warnings.append(f"Class '{c}' has no {' and no '.join(missing)} images{why}.")
        if 0 < in_split["train"][c] < MIN_TRAIN_IMAGES:
            held = f" ({test_source}, the test source, holds the rest)" if test_source else ""
            warnings.append(f"Class '{c}' has only {in_split['train'][c]} train image(s){held}: "
                            "too few to learn it.")

    return {
        "images": n,
        "class_by_source": {c: dict(sorted(by_source[c].items())) for c in present},
        "cramers_v": None if v is None else round(v, 4),
        "single_source_classes": single,
        "class_age_source": {c: {g: dict(sorted(s.items())) for g, s in sorted(by_age_source[c].items())}
                             for c in present},
        "age_mix": {c: {g: round(f, 4) for g, f in m.items()} for c, m in mixes.items()},
        "age_mix_distance": distance,
        "absent_from_split": {s: cs for s, cs in absent.items() if cs},
        "warnings": warnings,
    }
