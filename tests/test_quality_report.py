"""The quality benchmark's range-target power (bench/quality_report.py), against a brute-force
enumeration of every outcome and counts worked out by hand."""

import itertools

import pytest
from bench.quality_report import range_target_chance, summarise
from scipy.stats import binom


def _brute_force(films, recall, limit):
    """Every combination of hits over the splits, its probability, and whether its range fits."""
    total = 0.0
    for hits in itertools.product(*(range(n + 1) for n in films)):
        recalls = [k / n for k, n in zip(hits, films, strict=True)]
        if max(recalls) - min(recalls) <= limit + 1e-9:
            prob = 1.0
            for k, n in zip(hits, films, strict=True):
                prob *= binom.pmf(k, n, recall)
            total += prob
    return total


@pytest.mark.parametrize("films, recall, limit", [
    ([9, 27, 6], 0.95, 0.10),  # the real set's test splits (bench/README.md)
    ([9, 27, 6], 0.90, 0.10),
    ([4, 5], 0.7, 0.25),
    ([3, 3, 3], 0.5, 0.0),  # only equal recalls fit
])
def test_range_target_chance_matches_every_outcome_enumerated(films, recall, limit):
    assert range_target_chance(films, recall, limit) == pytest.approx(_brute_force(films, recall, limit), abs=1e-12)


def test_range_target_chance_edges_by_hand():
    assert range_target_chance([9, 27, 6], 0.95, 1.0) == pytest.approx(1.0)  # any range fits
    assert range_target_chance([9, 6], 1.0, 0.0) == pytest.approx(1.0)  # a perfect model: all 1.0
    # Two splits of one film each at recall 0.5: equal (both hit or both miss) half the time.
    assert range_target_chance([1, 1], 0.5, 0.0) == pytest.approx(0.5)


def _seed(covid_by_group, missed=0):
    """One seed's scores: COVID films per age group, `missed` of the first group's called normal."""
    groups = {g: {"covid": {"n": n, "correct": n, "predicted": {"covid": n}}} for g, n in covid_by_group.items()}
    first = groups[next(iter(groups))]["covid"]
    first.update(correct=first["n"] - missed, predicted={"covid": first["n"] - missed, "normal": missed})
    films = sum(covid_by_group.values())
    groups.setdefault("child", {})["normal"] = {"n": 10, "correct": 9, "predicted": {"normal": 9, "covid": 1}}
    return {"cxrflow": {"macro_recall": 0.8, "covid_recall": (films - missed) / films, "macro_auc": 0.9,
                        "by_age_group": groups},
            "times": {"trainer_s": 100.0}}


def test_summary_counts_each_seeds_covid_test_films_over_age_groups():
    per_seed = {1: _seed({"adult": 5, "unknown": 4}, missed=1), 2: _seed({"adult": 27}), 3: _seed({"adult": 6})}
    cx = summarise(per_seed, 1200)["cxrflow"]
    assert cx["covid_test_films"] == [9, 27, 6]
    mean = (8 / 9 + 1 + 1) / 3
    assert cx["covid_recall_mean"] == pytest.approx(mean, abs=1e-4)
    assert cx["covid_range_target_chance"] == pytest.approx(_brute_force([9, 27, 6], mean, 0.10), abs=1e-3)
