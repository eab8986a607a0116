"""t-SNE of the test embeddings, by class and by source: has the model learned the disease or
the dataset?

Chest X-ray collections differ in scanner, exposure, burnt-in markers and patient age. A
classifier trained on sources that each hold mostly one class can score well by recognising
the source. If the test embeddings cluster by source more cleanly than by class, that is the
warning sign; tsne.json says so in words for the report.

Separation is the silhouette score of the 2-D t-SNE map (what the picture shows): about 0 for
groups that overlap, towards 1 for groups that form separate islands. It does not depend on the
number or the balance of the groups, so class and source scores compare directly (a k-NN
accuracy would not: its chance level differs between 3 balanced classes and 2 skewed sources).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrflow.io_utils import write_bytes_atomic, write_json_atomic
from cxrflow.report.plots import MARKERS, _png, _pyplot

# Sources must beat classes by this much silhouette before the note raises the alarm: on small
# test sets both scores move by a few hundredths between seeds.
MARGIN = 0.05
# Barnes-Hut t-SNE is O(n log n) but still ~1 min at 10k points; a seeded sample of this size
# shows the same structure.
MAX_POINTS = 3000
MIN_POINTS = 4  # t-SNE needs perplexity < n, and a silhouette needs at least 2 groups of points


def tsne_perplexity(n: int) -> float:
    """30 (sklearn's default) for large sets, shrunk for small ones so that perplexity < n."""
    return float(min(30, max(2, (n - 1) // 3)))


def tsne_2d(embeddings: np.ndarray, seed: int) -> np.ndarray:
    """[n, D] -> [n, 2] t-SNE map (seeded through random_state, not the global RNG)."""
    from sklearn.manifold import TSNE  # lazy: the Evaluator imports this module; sklearn only for t-SNE

    x = np.asarray(embeddings, dtype=np.float64)
    n = len(x)
    init = "pca" if min(x.shape) >= 2 else "random"
    return TSNE(n_components=2, perplexity=tsne_perplexity(n), init=init, random_state=seed).fit_transform(x)


def separation(points: np.ndarray, groups: Sequence[str]) -> float | None:
    """Silhouette of `points` grouped by `groups`; None when it is undefined (one group, or
    as many groups as points)."""
    from sklearn.metrics import silhouette_score  # lazy: the Evaluator imports this module; sklearn only for t-SNE

    groups = np.asarray(groups)
    k = len(np.unique(groups))
    if k < 2 or k >= len(groups):
        return None
    return float(silhouette_score(points, groups))


def describe(class_sep: float | None, source_sep: float | None, n_sources: int) -> tuple[bool, str]:
    """(sources separate more than classes, the finding in words)."""
    def fmt(v: float | None) -> str:
        return "undefined" if v is None else f"{v:.2f}"

    scores = f"silhouette of the t-SNE map: by class {fmt(class_sep)}, by source {fmt(source_sep)}"
    if n_sources < 2:
        return False, (f"The test split comes from a single source, so source effects cannot be seen here "
                       f"({scores}).")
    if class_sep is None or source_sep is None:
        return False, f"Too few test images per group to compare class and source separation ({scores})."
    if source_sep > class_sep + MARGIN:
        return True, (f"Warning: the test images separate more cleanly by source than by class ({scores}): "
                      "the model may have learned the dataset rather than the disease. Check the per-source "
                      "slices and whether each source holds mostly one class.")
    if class_sep > source_sep + MARGIN:
        return False, f"The test images separate more cleanly by class than by source ({scores})."
    return False, f"Class and source separate about equally well ({scores}); no clear source effect."


def _scatter(ax, points: np.ndarray, groups: np.ndarray, title: str) -> None:
    for i, name in enumerate(sorted(set(groups.tolist()))):
        sel = groups == name
        # Marker and fill differ per group, so the panels read in grayscale print too.
        ax.scatter(points[sel, 0], points[sel, 1], s=28, marker=MARKERS[i % len(MARKERS)], color=f"C{i}",
                   edgecolors="black", linewidths=0.4, label=f"{name} (n={int(sel.sum())})")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, loc="best")


def tsne_png(points: np.ndarray, classes: Sequence[str], sources: Sequence[str], info: dict) -> bytes:
    def sil(key: str) -> str:
        return "undefined" if info[key] is None else f"{info[key]:.2f}"

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    _scatter(axes[0], points, np.asarray(classes), f"by class (silhouette {sil('class_separation')})")
    _scatter(axes[1], points, np.asarray(sources), f"by source (silhouette {sil('source_separation')})")
    fig.suptitle("t-SNE of the test-set embeddings (penultimate layer)")
    fig.tight_layout()
    return _png(fig)


def tsne_report(embeddings: np.ndarray, class_names: Sequence[str], sources: Sequence[str],
                seed: int) -> tuple[np.ndarray | None, dict]:
    """The t-SNE map ([n, 2], None with too few points) and the tsne.json dict."""
    n_sources = len(set(sources))
    if len(embeddings) < MIN_POINTS:
        note = f"Only {len(embeddings)} test images: too few for a t-SNE map."
        return None, {"class_separation": None, "source_separation": None,
                      "sources_separate_more_than_classes": False, "note": note, "n": len(embeddings)}
    points = tsne_2d(embeddings, seed)
    class_sep, source_sep = separation(points, class_names), separation(points, sources)
    flagged, note = describe(class_sep, source_sep, n_sources)
    return points, {
        "class_separation": None if class_sep is None else round(class_sep, 4),
        "source_separation": None if source_sep is None else round(source_sep, 4),
        "sources_separate_more_than_classes": flagged,
        "note": note,
        "n": len(points),
        "measure": "silhouette score of the 2-D t-SNE map (0 overlapping groups, 1 separate islands)",
        "perplexity": tsne_perplexity(len(points)),
    }


def write_tsne(embeddings: np.ndarray, class_names: Sequence[str], sources: Sequence[str], seed: int,
               png_path: str, json_path: str) -> dict:
    """Writes tsne.png (when there are enough points) and tsne.json; returns the json dict.

    Above MAX_POINTS images a seeded random sample is mapped.
    """
    embeddings, class_names, sources = np.asarray(embeddings), np.asarray(class_names), np.asarray(sources)
    if len(embeddings) > MAX_POINTS:
        keep = np.sort(np.random.default_rng(seed).choice(len(embeddings), MAX_POINTS, replace=False))
        embeddings, class_names, sources = embeddings[keep], class_names[keep], sources[keep]
    points, info = tsne_report(embeddings, class_names, sources, seed)
    if points is not None:
        write_bytes_atomic(png_path, tsne_png(points, class_names, sources, info))
    write_json_atomic(json_path, info)
    return info
