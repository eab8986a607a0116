"""Evaluation extras and the run report: patient-level bootstrap CIs, ROC curves, t-SNE of the
test embeddings, Grad-CAM overlays, report.html.

Imports are lazy (matplotlib, scikit-learn load on first use), so importing this package from
the CLI or the run helpers costs nothing.
"""

from __future__ import annotations

REPORT_FILE = "report.html"
ROC_PNG = "roc_curves.png"
TSNE_PNG = "tsne.png"
TSNE_JSON = "tsne.json"
GRADCAM_PNG = "gradcam.png"

__all__ = [
    "GRADCAM_PNG", "REPORT_FILE", "ROC_PNG", "TSNE_JSON", "TSNE_PNG",
    "bootstrap_ci", "build_report", "plot_roc", "plot_training_curves",
]


def __getattr__(name: str):
    if name == "bootstrap_ci":
        from cxrflow.report.bootstrap import bootstrap_ci  # lazy: PEP 562, importing the package loads no module

        return bootstrap_ci
    if name in ("plot_roc", "plot_training_curves"):
        from cxrflow.report import plots  # lazy: PEP 562, importing the package loads no module

        return getattr(plots, name)
    if name == "build_report":
        from cxrflow.report.html import build_report  # lazy: cycle, html.py imports this package's names

        return build_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
