"""ResumableTraining: atomic epoch state, best checkpoint and patience that survive a resume."""

import json
import os
import shutil

import keras
import numpy as np

from cxrflow.trainer.checkpoints import META, STATE, ResumableTraining

LOSSES = [1.0, 0.5, 0.7, 0.8, 0.9, 0.95]


def _model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


class _FakeValLoss(keras.callbacks.Callback):
    """Deterministic monitor values, set before ResumableTraining reads them."""

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = LOSSES[epoch]


class _Kill(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt


class _RecordStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = [w.copy() for w in self.model.get_weights()]


def _fit(model, callbacks, epochs=6):
    x = np.random.default_rng(0).random((8, 4), dtype=np.float32)
    return model.fit(x, np.array([0, 1] * 4), epochs=epochs, verbose=0, callbacks=[_FakeValLoss(), *callbacks])


def _killed_run(tmp_path):
    model = _model()
    cb = ResumableTraining(str(tmp_path / "b"), str(tmp_path / "best.weights.h5"), patience=3)
    try:
        _fit(model, [cb, _Kill()])
    except KeyboardInterrupt:
        pass
    return [w.copy() for w in model.get_weights()]


def test_resume_restores_epoch_weights_best_score_and_patience(tmp_path):
    at_kill = _killed_run(tmp_path)
    assert json.load(open(tmp_path / "b" / STATE / META)) == {"epoch": 3, "best": 0.5, "wait": 1, "stopped": False}
    cb = ResumableTraining(str(tmp_path / "b"), str(tmp_path / "best.weights.h5"), patience=3)
    start = _RecordStart()
    history = _fit(_model(), [cb, start])
    assert history.epoch == [3, 4]  # resumed at epoch 3; patience 3 is used up after epoch 4
    assert cb.best == 0.5
    for a, b in zip(at_kill, start.weights, strict=True):
        np.testing.assert_allclose(a, b)
    # A finished (early-stopped) run resumes to nothing: no epoch is trained again.
    again = ResumableTraining(str(tmp_path / "b"), str(tmp_path / "best.weights.h5"), patience=3)
    assert _fit(_model(), [again]).epoch == []


def test_a_kill_between_the_renames_or_mid_write_loses_nothing(tmp_path):
    at_kill = _killed_run(tmp_path)
    backup = tmp_path / "b"
    # Kill after `state` was moved aside and while `state.tmp` was half-written.
    os.rename(backup / STATE, backup / (STATE + ".old"))
    (backup / (STATE + ".tmp")).mkdir()
    (backup / (STATE + ".tmp") / "latest.weights.h5").write_bytes(b"\x89HDF half written")
    cb = ResumableTraining(str(backup), str(tmp_path / "best.weights.h5"), patience=3)
    start = _RecordStart()
    assert _fit(_model(), [cb, start]).epoch[0] == 3
    for a, b in zip(at_kill, start.weights, strict=True):
        np.testing.assert_allclose(a, b)
    assert not (backup / (STATE + ".old")).exists() and not (backup / (STATE + ".tmp")).exists()


def test_no_backup_starts_at_epoch_zero(tmp_path):
    cb = ResumableTraining(str(tmp_path / "none"), str(tmp_path / "best.weights.h5"), patience=10)
    assert _fit(_model(), [cb], epochs=2).epoch == [0, 1]
    shutil.rmtree(tmp_path / "none")
