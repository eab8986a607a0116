"""De-duplication and patient-level, class-stratified splitting.

Runs on small per-image metadata only (ids, hashes, labels), never on pixels, so it fits in one
worker's memory even for large datasets, and it is deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain

import numpy as np

from cxrflow.features import SPLITS
from cxrflow.images import NEAR_DUPLICATE_MAX_RMS, THUMB_SIZE, hash_bands


@dataclass(frozen=True)
class ImageMeta:
    image_id: str
    patient_id: str
    label: str
    source: str
    provided_split: str
    file_sha256: str
    pixel_hash: str
    thumbnail: bytes = b""


MAX_BLOCK = 128  # kept images compared per blocking key: at most 16 * 128 thumbnails per image


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def deduplicate(images: Iterable[ImageMeta]) -> tuple[list[ImageMeta], list[dict]]:
    """Collapses exact (file hash) and re-encoded/resized (pixel) copies onto one image.

    Exact copies share a file hash. Near copies are found by locality-sensitive blocking: every
    row of the pixel dHash is a key (`hash_bands`), so a copy that flips a few hash bits still
    shares most keys with its original, where one whole-hash key would miss it. Candidates are
    then confirmed by comparing thumbnails, so that two different X-rays with a similar layout
    are never merged. Images are visited in image_id order and each is compared with the kept
    images before it, so the survivor is the copy with the smallest image_id whatever order a
    runner delivers elements in.
    Returns (kept, duplicates report rows).
    """
    duplicates: list[dict] = []

    def note(dup: ImageMeta, kept: ImageMeta, match: str) -> None:
        duplicates.append(
            {"image_id": dup.image_id, "kept": kept.image_id, "match": match, "label_conflict": dup.label != kept.label}
        )

    exact: dict[str, list[ImageMeta]] = defaultdict(list)
    for image in images:
        exact[image.file_sha256].append(image)
    survivors = []
    for group in exact.values():
        group.sort(key=lambda m: m.image_id)
        survivors.append(group[0])
        for dup in group[1:]:
            note(dup, group[0], "exact")
    survivors.sort(key=lambda m: m.image_id)

    kept: list[ImageMeta] = []
    blocks: dict[str, list[int]] = defaultdict(list)  # band key -> indexes into `kept`
    # Thumbnails of `kept`, row i for kept[i]: candidates are compared in one vectorised step.
    thumbs = np.zeros((len(survivors), THUMB_SIZE * THUMB_SIZE), np.uint8)
    for image in survivors:
        # Images without a thumbnail (older metadata) only ever match exactly.
        has_thumb = len(image.thumbnail) == thumbs.shape[1]
        keys = hash_bands(image.pixel_hash) if has_thumb else []
        hits = [blocks[key] for key in keys if key in blocks]
        twin = None
        if hits:
            candidates = np.unique(np.fromiter(chain.from_iterable(hits), np.int64))
            thumb = np.frombuffer(image.thumbnail, np.uint8).astype(np.float32)
            rms = np.sqrt(((thumbs[candidates].astype(np.float32) - thumb) ** 2).mean(axis=1))
            matches = candidates[rms <= NEAR_DUPLICATE_MAX_RMS]
            # `kept` is in image_id order and np.unique sorts, so the first match is the smallest id.
            twin = kept[int(matches[0])] if matches.size else None
        if twin is not None:
            note(image, twin, "pixels")
            continue
        for key in keys:
            # A strip pattern that most X-rays share (the usual light-dark-light profile across
            # a chest) would make its block, and the search, quadratic; copies still share
            # their other, rarer strips, so a full block stops growing.
            if len(blocks[key]) < MAX_BLOCK:
                blocks[key].append(len(kept))
        if has_thumb:
            thumbs[len(kept)] = np.frombuffer(image.thumbnail, np.uint8)
        kept.append(image)
    # Sorted so the report, too, is the same whatever order the runner delivered elements in.
    return kept, sorted(duplicates, key=lambda d: d["image_id"])


def _take(patients: list[str], fraction: float, seed: int, salt: str) -> set[str]:
    """The first `fraction` of patients in a seeded hash order: stable as data grows."""
    if not patients or fraction <= 0:
        return set()
    n = round(len(patients) * fraction)
    if len(patients) >= 3:
        n = max(1, n)  # every class present in every split once there are enough patients
    n = min(n, len(patients) - 1) if len(patients) > 1 else 0
    ordered = sorted(patients, key=lambda p: _rank(seed, f"{salt}:{p}"))
    return set(ordered[:n])


def assign_splits(
    images: list[ImageMeta], classes: tuple[str, ...], eval_fraction: float, test_fraction: float, seed: int
) -> tuple[dict[str, str], dict]:
    """Maps image_id -> split so that no patient spans two splits.

    A split the source provides is honoured per patient; a patient whose images the source put
    in different splits (that is leakage) goes wholly to the split holding most of its images.
    Patients without a provided split are stratified by class into test; eval is then carved
    from the train patients of each class. Returns (assignment, notes for the report).
    """
    by_patient: dict[str, list[ImageMeta]] = defaultdict(list)
    for image in images:
        by_patient[image.patient_id].append(image)

    patient_split: dict[str, str] = {}
    patient_label: dict[str, str] = {}
    reassigned = 0
    for patient, imgs in by_patient.items():
        labels = Counter(i.label for i in imgs)
        # Majority label; ties go to the earlier class in config order (stable).
        patient_label[patient] = max(labels, key=lambda c: (labels[c], -classes.index(c)))
        provided = Counter(i.provided_split for i in imgs if i.provided_split)
        if provided:
            if len(provided) > 1:
                reassigned += 1
            patient_split[patient] = max(provided, key=lambda s: (provided[s], SPLITS.index(s)))

    per_class: dict[str, list[str]] = defaultdict(list)
    for patient in sorted(by_patient):
        if patient not in patient_split:
            per_class[patient_label[patient]].append(patient)
    for label, patients in per_class.items():
        test = _take(patients, test_fraction, seed, f"test:{label}")
        for p in patients:
            patient_split[p] = "test" if p in test else "train"

    train_by_class: dict[str, list[str]] = defaultdict(list)
    for patient in sorted(by_patient):
        if patient_split[patient] == "train":
            train_by_class[patient_label[patient]].append(patient)
    has_provided_eval = any(s == "eval" for s in patient_split.values())
    if not has_provided_eval:
        for label, patients in train_by_class.items():
            for p in _take(patients, eval_fraction, seed, f"eval:{label}"):
                patient_split[p] = "eval"

    assignment = {i.image_id: patient_split[i.patient_id] for i in images}
    return assignment, {"patients_reassigned_to_avoid_leakage": reassigned}


def patient_overlap(images: Iterable[ImageMeta], assignment: dict[str, str]) -> int:
    """Number of patients whose images land in more than one split (must be 0)."""
    splits: dict[str, set[str]] = defaultdict(set)
    for image in images:
        splits[image.patient_id].add(assignment[image.image_id])
    return sum(1 for s in splits.values() if len(s) > 1)
