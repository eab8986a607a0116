"""MacroRecall, the Trainer's early-stopping metric, against sklearn."""

import numpy as np
import pytest
from sklearn.metrics import recall_score

from cxrflow.trainer.training_metrics import MacroRecall


def test_macro_recall_over_batches_matches_sklearn():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 50)
    probs = rng.dirichlet(np.ones(3), 50).astype("float32")
    metric = MacroRecall(3)
    for start in range(0, 50, 16):  # accumulated batch by batch, as Keras does over validation steps
        metric.update_state(labels[start:start + 16], probs[start:start + 16])
    assert float(metric.result()) == pytest.approx(recall_score(labels, probs.argmax(1), average="macro"), abs=1e-6)
    metric.reset_state()
    metric.update_state(np.array([0, 0, 1]), np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.1, 0.9, 0]]))
    # class 2 absent: the mean of classes 0 (1/2) and 1 (1/1), as sklearn with the present labels
    assert float(metric.result()) == pytest.approx(recall_score([0, 0, 1], [0, 1, 1], average="macro"), abs=1e-6)
    assert MacroRecall.from_config(metric.get_config()).num_classes == 3
