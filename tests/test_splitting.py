import hashlib
from collections import Counter

import pytest

from cxrflow.stages.splitting import ImageMeta, assign_splits, bucket, patient_overlap, resolve_source


def meta(i, patient, label, split="", source="src"):
    return ImageMeta(f"img{i}", patient, label, source, split, f"sha{i}", f"ph{i}")


def patient_splits(images, assignment):
    return {m.patient_id: assignment[m.image_id] for m in images}


def u(seed, patient):
    """The bucket, worked out independently of the module: the first 8 bytes of SHA-256 over 2**64."""
    return int(hashlib.sha256(f"{seed}:{patient}".encode()).hexdigest()[:16], 16) / 2**64


def test_no_patient_spans_two_splits_and_every_class_is_in_every_split():
    images = [meta(i, f"p{i // 2}", ("a", "b", "c")[i % 3]) for i in range(300)]
    assignment, _ = assign_splits(images, ("a", "b", "c"), 0.15, 0.15, seed=1)
    assert patient_overlap(images, assignment) == 0
    for label in "abc":
        assert {assignment[m.image_id] for m in images if m.label == label} == {"train", "eval", "test"}


def test_provided_split_is_honoured_but_not_at_the_cost_of_leakage():
    images = [meta(0, "p0", "a", "train"), meta(1, "p0", "a", "test"), meta(2, "p0", "a", "test"),
              meta(3, "p1", "a", "test")]
    assignment, notes = assign_splits(images, ("a", "b"), 0.15, 0.15, seed=1)
    assert assignment["img0"] == assignment["img1"] == assignment["img2"] == "test"
    assert notes["patients_reassigned_to_avoid_leakage"] == 1
    assert patient_overlap(images, assignment) == 0


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    images = [meta(i, f"p{i}", "ab"[i % 2]) for i in range(100)]
    first, _ = assign_splits(images, ("a", "b"), 0.2, 0.2, seed=3)
    assert assign_splits(list(reversed(images)), ("a", "b"), 0.2, 0.2, seed=3)[0] == first
    assert assign_splits(images, ("a", "b"), 0.2, 0.2, seed=4)[0] != first


def test_each_patient_is_placed_by_its_own_hash_bucket():
    images = [meta(i, f"p{i}", "abc"[i % 3]) for i in range(900)]
    assignment, notes = assign_splits(images, ("a", "b", "c"), 0.15, 0.2, seed=7)
    assert notes["fallback"] == []
    for m in images:
        expected = "test" if u(7, m.patient_id) < 0.2 else "eval" if u(7, m.patient_id) < 0.35 else "train"
        assert assignment[m.image_id] == expected, m.patient_id
    assert bucket(7, "p1") == u(7, "p1")
    shares = Counter(assignment.values())
    assert abs(shares["test"] / 900 - 0.2) < 0.04 and abs(shares["eval"] / 900 - 0.15) < 0.04


def test_no_earlier_patient_changes_split_when_half_as_many_patients_again_arrive():
    """Issue 13.1: the old rule took the first round(n * fraction) patients in hash order, so
    growing n moved earlier test patients into train (this test failed on it)."""
    classes = ("a", "b", "c")
    first = [meta(i, f"p{i}", classes[i % 3]) for i in range(600)]
    grown = first + [meta(i, f"p{i}", classes[i % 3]) for i in range(600, 900)]
    before, notes_before = assign_splits(first, classes, 0.15, 0.15, seed=11)
    after, notes_after = assign_splits(grown, classes, 0.15, 0.15, seed=11)
    assert notes_before["fallback"] == notes_after["fallback"] == []
    assert {i: after[i] for i in before} == before


def test_a_source_with_train_only_gets_its_test_carved_per_source():
    """Issue 11: Kaggle's snapshot ships train/ only. Honoured as train, it left bacterial and
    normal without a test image. Each source is now judged alone."""
    kaggle = [meta(i, f"k{i}", "bn"[i % 2], "train", "kaggle:kaggle") for i in range(400)]
    ieee = [meta(1000 + i, f"i{i}", "c", "", "ieee:ieee") for i in range(100)]
    images = kaggle + ieee
    assignment, notes = assign_splits(images, ("c", "b", "n"), 0.15, 0.15, seed=5)
    for m in images:
        expected = "test" if u(5, m.patient_id) < 0.15 else "eval" if u(5, m.patient_id) < 0.3 else "train"
        assert assignment[m.image_id] == expected
    for label in "cbn":
        assert {assignment[m.image_id] for m in images if m.label == label} == {"train", "eval", "test"}
    assert notes["split_methods"]["kaggle:kaggle"] == {"test": "carved by patient", "eval": "carved by patient"}


def test_a_source_that_ships_test_and_eval_keeps_them_and_is_not_carved():
    shipped = [meta(i, f"s{i}", "ab"[i % 2], ("train", "train", "train", "eval", "test")[i % 5], "folders:a")
               for i in range(200)]
    unsplit = [meta(1000 + i, f"u{i}", "ab"[i % 2], "", "folders:b") for i in range(200)]
    assignment, notes = assign_splits(shipped + unsplit, ("a", "b"), 0.15, 0.15, seed=2)
    assert all(assignment[m.image_id] == m.provided_split for m in shipped)
    assert {assignment[m.image_id] for m in unsplit} == {"train", "eval", "test"}
    assert notes["split_methods"]["folders:a"] == {"test": "provided", "eval": "provided"}


def test_eval_is_carved_per_source_when_only_another_source_ships_eval():
    """Before, one source's eval folder stopped eval being carved from every other source."""
    with_eval = [meta(i, f"s{i}", "a", ("train", "eval", "test")[i % 3], "folders:a") for i in range(30)]
    train_only = [meta(100 + i, f"t{i}", "b", "train", "folders:b") for i in range(300)]
    assignment, _ = assign_splits(with_eval + train_only, ("a", "b"), 0.15, 0.15, seed=2)
    assert Counter(assignment[m.image_id] for m in train_only)["eval"] > 20


def test_test_source_is_the_whole_test_split_and_never_trains():
    external = [meta(i, f"e{i // 2}", "ab"[i % 2], "", "ieee:ieee") for i in range(40)]
    internal = [meta(100 + i, f"k{i}", "ab"[i % 2], ("train", "test")[i % 2], "kaggle:kaggle") for i in range(300)]
    assignment, notes = assign_splits(external + internal, ("a", "b"), 0.15, 0.15, seed=3, test_source="ieee:ieee")
    assert patient_overlap(external + internal, assignment) == 0
    assert {assignment[m.image_id] for m in external} == {"test"}
    # The other source's own test folder trains too: every test metric is external.
    assert {assignment[m.image_id] for m in internal} == {"train", "eval"}
    for m in internal:
        in_eval = 0.15 <= u(3, m.patient_id) < 0.3
        assert assignment[m.image_id] == ("eval" if in_eval else "train")
    assert notes["split_methods"]["ieee:ieee"]["test"] == "whole source"


def test_test_source_is_named_in_full_or_by_kind_and_an_unknown_name_lists_the_sources():
    sources = ["ieee:ieee", "kaggle:chest_xray", "folders:a", "folders:b"]
    assert resolve_source("ieee:ieee", sources) == "ieee:ieee"
    assert resolve_source("kaggle", sources) == "kaggle:chest_xray"
    with pytest.raises(ValueError, match="several sources.*folders:a"):
        resolve_source("folders", sources)
    with pytest.raises(ValueError, match=r"not one of the sources given: \['folders:a'"):
        resolve_source("nih", sources)


def patients_above(seed, low, count, prefix):
    """`count` patient ids whose bucket lies at or above `low` (train by bucket)."""
    found, i = [], 0
    while len(found) < count:
        if u(seed, f"{prefix}{i}") >= low:
            found.append(f"{prefix}{i}")
        i += 1
    return found


def test_a_class_left_out_of_test_and_eval_by_its_buckets_gets_its_lowest_bucket_patients_moved():
    rare = patients_above(4, 0.3, 3, "r")
    common = [meta(i, f"c{i}", "a") for i in range(200)]
    images = common + [meta(500 + i, p, "b") for i, p in enumerate(rare)]
    assignment, notes = assign_splits(images, ("a", "b"), 0.15, 0.15, seed=4)
    by_u = sorted(rare, key=lambda p: u(4, p))
    splits = patient_splits(images, assignment)
    assert [splits[p] for p in by_u] == ["test", "eval", "train"]
    assert notes["fallback"] == [{"patient_id": by_u[0], "class": "b", "split": "test"},
                                 {"patient_id": by_u[1], "class": "b", "split": "eval"}]


def test_a_class_of_two_patients_is_not_moved():
    pair = patients_above(4, 0.3, 2, "r")
    images = [meta(i, f"c{i}", "a") for i in range(50)] + [meta(500 + i, p, "b") for i, p in enumerate(pair)]
    assignment, notes = assign_splits(images, ("a", "b"), 0.15, 0.15, seed=4)
    assert {patient_splits(images, assignment)[p] for p in pair} == {"train"}
    assert [f for f in notes["fallback"] if f["class"] == "b"] == []


def test_a_class_missing_from_a_shipped_test_split_still_gets_a_test_patient():
    """A source whose own test folder lacks a class: rather than no test share, its lowest-bucket
    train patient of that class moves to test."""
    images = [meta(i, f"a{i}", "a", ("train", "test")[i % 2], "folders:x") for i in range(40)]
    images += [meta(100 + i, f"b{i}", "b", "train", "folders:x") for i in range(10)]
    assignment, notes = assign_splits(images, ("a", "b"), 0.15, 0.15, seed=1)
    # Not carvable for test (the source ships one); eval comes by bucket as the source ships none.
    splits = patient_splits(images, assignment)
    train_b = sorted((p for p in splits if p.startswith("b") and splits[p] != "eval"), key=lambda p: u(1, p))
    assert [p for p in splits if p.startswith("b") and splits[p] == "test"] == [train_b[0]]
    assert {"patient_id": train_b[0], "class": "b", "split": "test"} in notes["fallback"]


def test_each_source_of_a_class_gets_its_own_test_and_eval_patient():
    """Adult bacterial films (IEEE) must reach test even when paediatric ones (Kaggle) already do."""
    adults = patients_above(6, 0.3, 5, "adult")
    images = [meta(i, f"kid{i}", "b", "train", "kaggle:k") for i in range(200)]
    images += [meta(500 + i, p, "b", "", "ieee:i") for i, p in enumerate(adults)]
    assignment, notes = assign_splits(images, ("a", "b"), 0.15, 0.15, seed=6)
    by_u = sorted(adults, key=lambda p: u(6, p))
    splits = patient_splits(images, assignment)
    assert [splits[p] for p in by_u] == ["test", "eval", "train", "train", "train"]
    assert [f["patient_id"] for f in notes["fallback"]] == by_u[:2]
