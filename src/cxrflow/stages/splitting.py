"""De-duplication and patient-level, class-stratified splitting.

Runs on small per-image metadata only (ids, hashes, labels), never on pixels, so it fits in one
worker's memory even for large datasets, and it is deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
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


def bucket(seed: int, patient: str) -> float:
    """The patient's place in [0, 1): a hash of the seed and the patient id alone.

    It depends on nothing else (not on how many patients there are, nor on their class), so a
    patient keeps its split when data is added: the stability scheduled retraining needs, since
    the served model and a new one are compared on the test split.
    """
    digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def resolve_source(name: str, sources: Iterable[str]) -> str:
    """The source `--test-source NAME` means: a full source name (`ieee:ieee`) or its kind (`ieee`).

    Raises ValueError naming the sources when NAME matches none, or a kind matches several.
    """
    known = sorted(set(sources))
    if name in known:
        return name
    by_kind = [s for s in known if s.partition(":")[0] == name]
    if len(by_kind) == 1:
        return by_kind[0]
    if by_kind:
        raise ValueError(f"--test-source {name!r} matches several sources {by_kind}: give the full name")
    raise ValueError(f"--test-source {name!r} is not one of the sources given: {known}")


@dataclass
class _Patient:
    label: str
    source: str
    provided: str  # the split its source put it in ("" when none)
    u: float
    split: str = ""


def _majority(counts: Counter, order: Sequence[str]) -> str:
    """The most frequent key; ties go to the earliest in `order` (stable)."""
    return max(counts, key=lambda k: (counts[k], -order.index(k)))


def assign_splits(
    images: list[ImageMeta], classes: tuple[str, ...], eval_fraction: float, test_fraction: float, seed: int,
    test_source: str = "",
) -> tuple[dict[str, str], dict]:
    """Maps image_id -> split so that no patient spans two splits.

    A split the source provides is honoured per patient; a patient whose images the source put
    in different splits (that is leakage) goes wholly to the split holding most of its images.
    Every other patient is placed by its `bucket` u: u < test_fraction -> test, the next
    eval_fraction -> eval, else train. Each source is judged alone: one that ships no test split
    (Kaggle's snapshot: train/ only) has test carved from its train patients this way, and
    eval likewise when it ships no eval split. So every class gets a test share whatever mix of
    sources is given. With `test_source`, that source's patients are the whole test split, the
    other sources' patients go to train or eval only (their own test splits included), so every
    test metric is external.

    Fallback: a class with at least 3 patients in a source that the buckets leave without a
    test (or eval) patient from that source gets its lowest-bucket carvable train patient there
    moved; then a class with none at all, from any source, gets one (when its sources ship
    splits that lack the class, their lowest-bucket train patient). That rare move is the
    only assignment that can change as data grows (a later patient of that class may fill the
    split by its bucket, and the moved patient returns to train); `notes["fallback"]` lists it.
    Returns (assignment, notes for the report).
    """
    by_patient: dict[str, list[ImageMeta]] = defaultdict(list)
    provides: dict[str, set[str]] = defaultdict(set)
    for image in images:
        by_patient[image.patient_id].append(image)
        if image.provided_split:
            provides[image.source].add(image.provided_split)

    patients: dict[str, _Patient] = {}
    reassigned = 0
    for pid in sorted(by_patient):
        imgs = by_patient[pid]
        provided = Counter(i.provided_split for i in imgs if i.provided_split)
        reassigned += len(provided) > 1
        sources = Counter(i.source for i in imgs)
        patients[pid] = _Patient(
            label=_majority(Counter(i.label for i in imgs), classes),
            source=max(sources, key=lambda s: (sources[s], s)),
            provided=_majority(provided, SPLITS) if provided else "",
            u=bucket(seed, pid),
        )
        if test_source and patients[pid].provided == "test":
            patients[pid].provided = "train"  # test is the external source alone: this one trains

    def carvable(p: _Patient, split: str) -> bool:
        """May `split` be carved from this patient? Not when its source ships that split."""
        if p.source == test_source:
            return False
        if split == "test" and test_source:
            return False  # test is the external source alone
        return not p.provided or (p.provided == "train" and split not in provides[p.source])

    for p in patients.values():
        if p.source == test_source:
            p.split = "test"
        elif p.provided in ("eval", "test"):
            p.split = p.provided
        elif carvable(p, "test") and p.u < test_fraction:
            p.split = "test"
        elif carvable(p, "eval") and test_fraction <= p.u < test_fraction + eval_fraction:
            p.split = "eval"
        else:
            p.split = "train"

    fallback = []

    def fill(members: list[str], label: str, split: str, carved_only: bool) -> None:
        """Moves the lowest-bucket train patient of `members` to `split` when none is there."""
        if len(members) < 3 or any(patients[pid].split == split for pid in members):
            return
        train = [pid for pid in members if patients[pid].split == "train"]
        # Carvable patients first; then (class level only), rather than no share at all, a
        # patient its source put in train: moving it out of train cannot leak.
        movable = [pid for pid in train if carvable(patients[pid], split)] or ([] if carved_only else [
            pid for pid in train if patients[pid].source != test_source and not (split == "test" and test_source)])
        if movable and len(train) >= 2:  # never empty the train split
            pid = min(movable, key=lambda i: patients[i].u)
            patients[pid].split = split
            fallback.append({"patient_id": pid, "class": label, "split": split})

    for label in classes:
        members = [pid for pid, p in patients.items() if p.label == label]
        # Each source's share of a class first (IEEE's adult bacterial films must reach test,
        # not only Kaggle's paediatric ones), then the class as a whole.
        for source in sorted({patients[pid].source for pid in members}):
            for split in ("test", "eval"):
                fill([pid for pid in members if patients[pid].source == source], label, split, carved_only=True)
        for split in ("test", "eval"):
            fill(members, label, split, carved_only=False)

    assignment = {i.image_id: patients[i.patient_id].split for i in images}
    methods = {}
    for source in sorted({p.source for p in patients.values()}):
        if source == test_source:
            methods[source] = {"test": "whole source", "eval": "none"}
            continue
        methods[source] = {
            "test": "none (external test source)" if test_source
            else "provided" if "test" in provides[source] else "carved by patient",
            "eval": "provided" if "eval" in provides[source] else "carved by patient",
        }
    return assignment, {"patients_reassigned_to_avoid_leakage": reassigned, "split_methods": methods,
                        "fallback": fallback}


def patient_overlap(images: Iterable[ImageMeta], assignment: dict[str, str]) -> int:
    """Number of patients whose images land in more than one split (must be 0)."""
    splits: dict[str, set[str]] = defaultdict(set)
    for image in images:
        splits[image.patient_id].add(assignment[image.image_id])
    return sum(1 for s in splits.values() if len(s) > 1)
