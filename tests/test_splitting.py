from cxrflow.stages.splitting import ImageMeta, assign_splits, patient_overlap


def meta(i, patient, label, split=""):
    return ImageMeta(f"img{i}", patient, label, "src", split, f"sha{i}", f"ph{i}")


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
