"""Scoring and printing for the quality benchmark (bench/quality.py): sklearn metrics per seed,
recall per class within each age group with Wilson intervals, means over seeds and the targets."""

from __future__ import annotations

import json
import math
import os

import numpy as np
from scipy.stats import binom

TARGETS = {"macro_recall_gain": 0.03, "covid_recall_mean": 0.95, "covid_recall_range": 0.10, "train_s": 1200}


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """Wilson score 95% interval of k/n: sound at small n and at 0 or n (unlike a bootstrap)."""
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def range_target_chance(films: list[int], recall: float, limit: float) -> float:
    """How likely a model whose recall is truly `recall` on every split is to show a per-split
    recall range within `limit`, given each split's number of films of that class: how much a
    range target can tell at these test sizes. Exact over the binomials: the range is within
    `limit` when all recalls lie in [m, m + limit] for m the lowest, so the sum over every
    attainable m of P(all in [m, m + limit]) - P(all in (m, m + limit])."""
    eps = 1e-9  # recalls are k/n fractions: compare with a little slack
    dists = [(np.arange(n + 1) / n, binom.pmf(np.arange(n + 1), n, recall)) for n in films]
    lows = sorted({float(v) for values, _ in dists for v in values})

    def all_within(low: float, high: float, closed_low: bool) -> float:
        inside = [pmf[((values >= low - eps) if closed_low else (values > low + eps)) & (values <= high + eps)].sum()
                  for values, pmf in dists]
        return float(np.prod(inside))

    return float(sum(all_within(m, m + limit, True) - all_within(m, m + limit, False) for m in lows))


def adult_or_child(group: str) -> str:
    """child / adult / unknown from an age_group value (the older 0-17/18-39/... bins too)."""
    if group in ("child", "adult"):
        return group
    if not group:
        return "unknown"
    return "child" if group.startswith("0-") else "adult"


def score(labels, probs, groups, classes) -> dict:
    """Macro and per-class recall, macro AUC (sklearn), and per-age-group recall counts."""
    from sklearn.metrics import recall_score, roc_auc_score  # lazy: bench.quality imports this; sklearn only to score

    labels, probs = np.asarray(labels), np.asarray(probs)
    pred = probs.argmax(axis=1)
    k = list(range(len(classes)))
    recalls = recall_score(labels, pred, labels=k, average=None, zero_division=0)
    try:
        auc = float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=k))
    except ValueError:  # a class absent from test: AUC undefined
        auc = float("nan")
    by_group: dict = {}
    for g in sorted(set(groups)):
        for i, c in enumerate(classes):
            mask = (np.asarray(groups) == g) & (labels == i)
            n = int(mask.sum())
            if n:
                hits = {classes[j]: int(((pred == j) & mask).sum()) for j in k}
                by_group.setdefault(g, {})[c] = {"n": n, "correct": hits[c], "predicted": hits,
                                                "recall": round(hits[c] / n, 4), "ci95": wilson(hits[c], n)}
    return {"macro_recall": round(float(recalls.mean()), 4),
            "recall": {c: round(float(r), 4) for c, r in zip(classes, recalls, strict=True)},
            "covid_recall": round(float(recalls[classes.index("covid")]), 4), "macro_auc": round(auc, 4),
            "n_test": int(len(labels)), "by_age_group": by_group}


def summarise(per_seed: dict[int, dict], train_limit_s: float) -> dict:
    """Means, ranges, pooled age-group counts over seeds, and the targets."""
    def sides():
        return [s for s in ("cxrflow", "baseline") if all(s in r for r in per_seed.values())]

    out: dict = {}
    for side in sides():
        rows = [r[side] for r in per_seed.values()]
        covid = [r["covid_recall"] for r in rows]
        pooled: dict = {}
        for r in rows:
            for g, by_class in r["by_age_group"].items():
                for c, cell in by_class.items():
                    p = pooled.setdefault(g, {}).setdefault(c, {"n": 0, "correct": 0, "called_covid": 0})
                    p["n"] += cell["n"]
                    p["correct"] += cell["correct"]
                    p["called_covid"] += cell["predicted"].get("covid", 0)
        for by_class in pooled.values():
            for cell in by_class.values():
                cell["recall"] = round(cell["correct"] / cell["n"], 4)
                cell["ci95"] = wilson(cell["correct"], cell["n"])
        films = [sum(by_class.get("covid", {}).get("n", 0) for by_class in r["by_age_group"].values()) for r in rows]
        out[side] = {"macro_recall_mean": round(float(np.mean([r["macro_recall"] for r in rows])), 4),
                     "covid_recall_mean": round(float(np.mean(covid)), 4),
                     "covid_recall_range": round(max(covid) - min(covid), 4),
                     "covid_test_films": films,
                     # The range target's power: a model as good as the mean on every split
                     # meets it this often at these test sizes (bench/README.md).
                     "covid_range_target_chance": (round(range_target_chance(
                         films, float(np.mean(covid)), TARGETS["covid_recall_range"]), 3) if all(films) else None),
                     "macro_auc_mean": round(float(np.nanmean([r["macro_auc"] for r in rows])), 4),
                     "by_age_group_pooled": pooled}
    train_max = max(r["times"]["trainer_s"] for r in per_seed.values())
    cx = out["cxrflow"]
    checks = {"covid_recall_mean": cx["covid_recall_mean"] >= TARGETS["covid_recall_mean"],
              "covid_recall_range": cx["covid_recall_range"] <= TARGETS["covid_recall_range"],
              "train_s": train_max <= train_limit_s}
    if "baseline" in out:
        gain = cx["macro_recall_mean"] - out["baseline"]["macro_recall_mean"]
        out["macro_recall_gain"] = round(gain, 4)
        checks["macro_recall_gain"] = gain >= TARGETS["macro_recall_gain"]
    out.update(checks=checks, ok=all(checks.values()), trainer_s_max=train_max)
    return out


def fmt_row(name: str, r: dict) -> str:
    adult = r["by_age_group"].get("adult", {})
    cells = "  ".join(f"adult {c} {v['correct']}/{v['n']} (covid {v['predicted'].get('covid', 0)})"
                      for c, v in adult.items() if c != "covid")
    return (f"  {name:<9} macro recall {r['macro_recall']:.3f}  covid recall {r['covid_recall']:.3f}  "
            f"macro AUC {r['macro_auc']:.3f}  {cells}")


def shortcut_summary(metrics_path: str) -> dict:
    """The Evaluator's shortcut checks of one seed (metrics.json `shortcut`), in a few numbers: the
    file-trait probe's and the lungs-hidden macro recall against the CNN's, and how many warnings.
    {} when the Evaluator wrote no metrics (it failed: the seed says why in `evaluator_error`)."""
    if not os.path.exists(metrics_path):
        return {}
    with open(metrics_path) as f:
        checks = json.load(f).get("shortcut", {})
    probe, hidden = checks.get("trait_probe", {}), checks.get("lungs_hidden", {})
    return {"trait_probe_macro_recall": probe.get("metrics", {}).get("macro_recall"),
            "trait_probe_skipped": probe.get("skipped"),
            "lungs_hidden_macro_recall": hidden.get("macro_recall_lungs_hidden"),
            "macro_recall_intact": hidden.get("macro_recall_intact"),
            "chance": hidden.get("chance"),
            "warnings": checks.get("warnings", [])}


def fmt_shortcut(s: dict) -> str:
    def num(v):
        return "n/a" if v is None else f"{v:.3f}"

    return (f"  shortcut  file-trait probe {num(s.get('trait_probe_macro_recall'))}  "
            f"lungs hidden {num(s.get('lungs_hidden_macro_recall'))} (intact {num(s.get('macro_recall_intact'))}, "
            f"chance {num(s.get('chance'))})  {len(s.get('warnings', []))} warnings")


def print_report(per_seed: dict, summary: dict) -> None:
    for seed, r in per_seed.items():
        print(f"seed {seed} (train {r['times']['trainer_s']:.0f}s, {r['epochs_run']} epochs; "
              f"baseline train {r.get('baseline', {}).get('train_s', 0):.0f}s):")
        for side in ("cxrflow", "baseline"):
            if side in r:
                print(fmt_row(side, r[side]))
        if r.get("shortcut"):
            print(fmt_shortcut(r["shortcut"]))
    for side in ("cxrflow", "baseline"):
        if side not in summary:
            continue
        s = summary[side]
        print(f"mean {side:<9} macro recall {s['macro_recall_mean']:.3f}  covid recall {s['covid_recall_mean']:.3f} "
              f"(range {s['covid_recall_range']:.3f})  macro AUC {s['macro_auc_mean']:.3f}")
        for g, by_class in s["by_age_group_pooled"].items():
            print(f"    {g:<8} " + "  ".join(
                f"{c} {v['correct']}/{v['n']} = {v['recall']:.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]"
                f" (called covid {v['called_covid']})" for c, v in by_class.items()))
    verdict = ", ".join(f"{k} {'ok' if v else 'MISS'}" for k, v in summary["checks"].items())
    print(f"targets: {verdict}")
    cx = summary["cxrflow"]
    if cx.get("covid_range_target_chance") is not None:
        films = cx["covid_test_films"]
        print(f"COVID test films per seed: {' / '.join(map(str, films))} (one film = "
              f"{' / '.join(f'{1 / n:.3f}' for n in films)} of recall); a model whose COVID recall is truly "
              f"{cx['covid_recall_mean']:.3f} on every split stays within the {TARGETS['covid_recall_range']:.2f} "
              f"range with probability {cx['covid_range_target_chance']:.2f} at these sizes")
