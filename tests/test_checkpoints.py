"""ResumableTraining: atomic epoch state, best checkpoint and patience that survive a resume."""

import json
import os
import shutil

import keras
import numpy as np

from cxrflow.trainer.checkpoints import META, STATE, WEIGHTS, AveragedEvaluation, ResumableTraining

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
    assert json.load(open(tmp_path / "b" / STATE / META)) == {"epoch": 3, "best": 0.5, "best_tie": float("inf"),
                                                                 "lowest_tie": float("inf"), "best_epoch": 2, "wait": 1,
                                                                 "learned": True, "stopped": False}
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


class _ValLoss(keras.callbacks.Callback):
    def __init__(self, losses):
        super().__init__()
        self.losses = losses

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = self.losses[epoch]


def test_a_later_phase_replaces_the_best_weights_only_with_better_ones(tmp_path):
    """Fine-tuning starts from the head phase's best score, not from infinity (one best across phases)."""
    x = np.random.default_rng(0).random((8, 4), dtype=np.float32)
    best_path = str(tmp_path / "best.weights.h5")
    head = _model()
    first = ResumableTraining(str(tmp_path / "head"), best_path, patience=5)
    head.fit(x, np.array([0, 1] * 4), epochs=2, verbose=0, callbacks=[_ValLoss([0.9, 0.4]), first])
    head_best = [w.copy() for w in head.get_weights()]
    assert first.best == 0.4

    finetune = _model()  # other weights: were they saved, best_path would change
    second = ResumableTraining(str(tmp_path / "finetune"), best_path, patience=5, initial_best=first.best)
    finetune.fit(x, np.array([0, 1] * 4), epochs=2, verbose=0, callbacks=[_ValLoss([0.6, 0.5]), second])
    reloaded = _model()
    reloaded.load_weights(best_path)
    for a, b in zip(head_best, reloaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert second.best == 0.4 and second.wait == 2

    third = ResumableTraining(str(tmp_path / "third"), best_path, patience=5, initial_best=second.best)
    finetune.fit(x, np.array([0, 1] * 4), epochs=1, verbose=0, callbacks=[_ValLoss([0.3]), third])
    reloaded.load_weights(best_path)
    for a, b in zip(finetune.get_weights(), reloaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


class _ValRecall(keras.callbacks.Callback):
    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch, logs=None):
        logs["val_macro_recall"] = self.values[epoch]


def test_a_maximised_monitor_keeps_the_highest_value_and_stops_after_patience(tmp_path):
    x = np.random.default_rng(0).random((8, 4), dtype=np.float32)
    tracker = ResumableTraining(str(tmp_path / "b"), str(tmp_path / "best.weights.h5"), monitor="val_macro_recall",
                                patience=2, mode="max")
    history = _model().fit(x, np.array([0, 1] * 4), epochs=6, verbose=0,
                           callbacks=[_ValRecall([0.4, 0.7, 0.6, 0.65, 0.9, 0.95]), tracker])
    # best 0.7 at epoch 2; epochs 3 and 4 are not better: stopped after 4 epochs, 0.9 never seen
    assert len(history.history["loss"]) == 4 and tracker.best == -0.7 and tracker.wait == 2


def test_min_epochs_keeps_training_through_a_chance_level_start(tmp_path):
    """The real seed-1 shape: epoch 1 at chance, then five epochs no better, then learning."""
    x = np.random.default_rng(0).random((8, 4), dtype=np.float32)
    losses = [1.04, 1.09, 1.10, 1.10, 1.09, 1.06, 1.00, 0.95, 0.90, 0.85]

    class _Losses(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = losses[epoch]

    def run(name, min_epochs):
        tracker = ResumableTraining(str(tmp_path / name), str(tmp_path / f"{name}.weights.h5"), patience=3,
                                    min_epochs=min_epochs)
        history = _model().fit(x, np.array([0, 1] * 4), epochs=10, verbose=0, callbacks=[_Losses(), tracker])
        return len(history.history["loss"]), tracker

    # Without the guard: epochs 2-4 are no better than epoch 1, patience 3 ends training there.
    epochs, tracker = run("plain", 0)
    assert (epochs, tracker.best_epoch, tracker.best) == (4, 1, 1.04)
    # With it: no stop before epoch 8; epoch 7 beats epoch 1, and training runs on to the end.
    epochs, tracker = run("guarded", 8)
    assert (epochs, tracker.best_epoch, tracker.best) == (10, 10, 0.85)
    # The guard only delays the stop: past min_epochs, a run that never improves stops at once.
    losses[6:] = [1.2] * 4
    epochs, tracker = run("late", 8)
    assert (epochs, tracker.best_epoch) == (8, 1)


# The first ten eval losses of the real seed 1 with stronger augmentation (rotation 10, zoom 0.16):
# epoch 1 near the class mix's level, nine epochs at ln 3 (the real run stayed there until epoch
# 16); then learning, shortened here. That eval split's no-skill loss is 1.013.
CHANCE_START = [1.042, 1.097, 1.098, 1.097, 1.097, 1.100, 1.101, 1.099, 1.099, 1.100,
                1.050, 0.990, 0.900, 0.850, 0.800, 0.820, 0.830, 0.840, 0.850, 0.860, 0.870, 0.880]


def _chance_run(tmp_path, name, no_skill, kill_at=None):
    x = np.random.default_rng(0).random((8, 4), dtype=np.float32)

    class _Losses(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = CHANCE_START[epoch]
            if epoch + 1 == kill_at:
                raise KeyboardInterrupt

    tracker = ResumableTraining(str(tmp_path / name), str(tmp_path / f"{name}.weights.h5"), patience=6,
                                min_epochs=10, no_skill_loss=no_skill)
    history = _model().fit(x, np.array([0, 1] * 4), epochs=len(CHANCE_START), verbose=0,
                           callbacks=[_Losses(), tracker])
    return len(history.history["loss"]), tracker


def test_patience_waits_until_the_eval_loss_beats_the_no_skill_loss(tmp_path):
    # The floor alone: epoch 1 stays best through epoch 10, patience is spent, training ends there.
    epochs, tracker = _chance_run(tmp_path, "floor_only", float("inf"))
    assert (epochs, tracker.best_epoch, tracker.learned) == (10, 1, True)
    # With the check: no wait counts until epoch 12 (0.990 < 1.013); the best is epoch 15 (0.800),
    # and six epochs without a better one end training at epoch 21.
    epochs, tracker = _chance_run(tmp_path, "checked", 1.013)
    assert (epochs, tracker.best_epoch, tracker.best, tracker.learned) == (21, 15, 0.8, True)


def test_a_run_that_never_beats_the_no_skill_loss_trains_to_the_end_and_says_so(tmp_path):
    epochs, tracker = _chance_run(tmp_path, "never", 0.5)
    assert (epochs, tracker.learned, tracker.wait) == (len(CHANCE_START), False, 0)


def test_whether_the_model_has_learned_survives_a_resume(tmp_path):
    try:
        _chance_run(tmp_path, "resumed", 1.013, kill_at=14)  # epochs 1-13 saved; learned at epoch 12
    except KeyboardInterrupt:
        pass
    assert json.load(open(tmp_path / "resumed" / STATE / META))["learned"] is True
    restored = ResumableTraining(str(tmp_path / "resumed"), str(tmp_path / "resumed.weights.h5"), patience=6,
                                 min_epochs=10, no_skill_loss=1.013)
    restored.set_model(_model())
    restored.set_params({"epochs": len(CHANCE_START)})
    restored.on_train_begin()
    assert (restored.learned, restored.resumed_from_epoch) == (True, 13)
    # Resumed, the run stops where the unkilled one stops (epoch 21), with the same best.
    epochs, tracker = _chance_run(tmp_path, "resumed", 1.013)
    assert (epochs, tracker.best_epoch, tracker.best) == (21 - 13, 15, 0.8)


class _RecallAndLoss(keras.callbacks.Callback):
    def __init__(self, recalls, losses):
        super().__init__()
        self.recalls, self.losses = recalls, losses

    def on_epoch_end(self, epoch, logs=None):
        logs["val_macro_recall"], logs["val_loss"] = self.recalls[epoch], self.losses[epoch]


class _SaveWeightsPerEpoch(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([w.copy() for w in self.model.get_weights()])


def _plateau_fit(tmp_path, name, tie_break, recalls=None, losses=None):
    """By default recall reaches its plateau (0.6) at epoch 2; the loss falls until epoch 5, then rises."""
    x = np.random.default_rng(0).random((8, 4), dtype=np.float32)
    recalls = recalls or [0.4, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    losses = losses or [1.0, 0.9, 0.8, 0.7, 0.6, 0.65, 0.7, 0.75]
    tracker = ResumableTraining(str(tmp_path / name), str(tmp_path / f"{name}.weights.h5"),
                                monitor="val_macro_recall", patience=2, mode="max", tie_break=tie_break)
    model, seen = _model(), _SaveWeightsPerEpoch()
    history = model.fit(x, np.array([0, 1] * 4), epochs=len(recalls), verbose=0,
                        callbacks=[_RecallAndLoss(recalls, losses), seen, tracker])
    kept = _model()
    kept.load_weights(str(tmp_path / f"{name}.weights.h5"))
    return tracker, len(history.history["loss"]), seen.weights, kept.get_weights()


def test_equal_recalls_go_to_the_lower_loss_and_reset_patience(tmp_path):
    tracker, epochs, per_epoch, kept = _plateau_fit(tmp_path, "tie", "val_loss")
    # epochs 3-5 tie on recall with a lower loss each: kept, patience reset; 6 and 7 are worse
    assert epochs == 7 and tracker.best == -0.6 and tracker.best_tie == 0.6 and tracker.wait == 2
    for a, b in zip(per_epoch[4], kept, strict=True):  # epoch 5 (index 4), the lowest loss
        np.testing.assert_array_equal(a, b)
    assert json.load(open(tmp_path / "tie" / STATE / META))["best_tie"] == 0.6


def test_without_a_tie_break_the_first_epoch_of_a_plateau_is_kept(tmp_path):
    tracker, epochs, per_epoch, kept = _plateau_fit(tmp_path, "plain", None)
    assert epochs == 4 and tracker.best == -0.6 and tracker.wait == 2
    for a, b in zip(per_epoch[1], kept, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_tie_break_score_survives_a_resume_and_a_phase_change(tmp_path):
    x, y = np.random.default_rng(0).random((8, 4), dtype=np.float32), np.array([0, 1] * 4)
    best_path = str(tmp_path / "best.weights.h5")
    first = ResumableTraining(str(tmp_path / "a"), best_path, monitor="val_macro_recall", patience=5, mode="max",
                              tie_break="val_loss")
    _model().fit(x, y, epochs=2, verbose=0, callbacks=[_RecallAndLoss([0.5, 0.5], [0.9, 0.8]), first])
    resumed = ResumableTraining(str(tmp_path / "a"), best_path, monitor="val_macro_recall", patience=5,
                                mode="max", tie_break="val_loss")
    _model().fit(x, y, epochs=3, verbose=0, callbacks=[_RecallAndLoss([0, 0, 0.5], [0, 0, 0.85]), resumed])
    assert (resumed.best, resumed.best_tie, resumed.wait) == (-0.5, 0.8, 1)  # 0.85 does not beat 0.8
    later = ResumableTraining(str(tmp_path / "b"), best_path, monitor="val_macro_recall", patience=5, mode="max",
                              tie_break="val_loss", initial_best=resumed.best, initial_tie=resumed.best_tie)
    _model().fit(x, y, epochs=1, verbose=0, callbacks=[_RecallAndLoss([0.5], [0.7]), later])
    assert (later.best, later.best_tie, later.wait) == (-0.5, 0.7, 0)


def test_a_falling_loss_keeps_training_past_an_early_recall_peak(tmp_path):
    """The demo's shape: recall peaks early by chance and dips while the loss still falls."""
    recalls = [0.4, 0.7, 0.6, 0.6, 0.65, 0.8, 0.7, 0.7, 0.9, 0.9]
    losses = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.55, 0.6, 0.65, 0.7]
    tracker, epochs, per_epoch, kept = _plateau_fit(tmp_path, "dip", "val_loss", recalls, losses)
    # epochs 3-5 are worse than 0.7 on recall but set new loss lows: patience restarts; epoch 6
    # is the best (0.8); epochs 7 and 8 improve neither: stopped after 8, the late 0.9 never seen
    assert epochs == 8 and tracker.best == -0.8 and tracker.best_tie == 0.5 and tracker.lowest_tie == 0.5
    assert tracker.best_epoch == 6
    for a, b in zip(per_epoch[5], kept, strict=True):
        np.testing.assert_array_equal(a, b)
    _, plain_epochs, _, _ = _plateau_fit(tmp_path, "dip_plain", None, recalls, losses)
    assert plain_epochs == 4  # recall alone: patience 2 runs out on the early peak


def _ema_data():
    rng = np.random.default_rng(3)
    x, x_eval = rng.normal(size=(64, 4)).astype("float32"), rng.normal(size=(32, 4)).astype("float32")
    return x, (x[:, 0] > 0).astype("int64"), x_eval, (x_eval[:, 0] + 0.5 * x_eval[:, 1] > 0).astype("int64")


def _ema_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
        2, activation="softmax", kernel_initializer=keras.initializers.GlorotUniform(seed=1))])
    model.compile(optimizer=keras.optimizers.Adam(0.05, use_ema=True, ema_momentum=0.8),
                  loss="sparse_categorical_crossentropy")
    return model


def _ema_fit(tmp_path, model, epochs=5, extra=()):
    x, y, x_eval, y_eval = _ema_data()
    tracker = ResumableTraining(str(tmp_path / "b"), str(tmp_path / "best.weights.h5"), patience=99)
    fit = model.fit(x, y, batch_size=8, epochs=epochs, validation_data=(x_eval, y_eval), shuffle=False, verbose=0,
                    callbacks=[AveragedEvaluation(), tracker, *extra])
    return fit.history.get("val_loss", [])


def _eval_loss(tmp_path, weights_file):
    _, _, x_eval, y_eval = _ema_data()
    model = _ema_model()
    model.optimizer.build(model.trainable_variables)  # the state file holds the optimizer's variables too
    model.load_weights(str(tmp_path / weights_file))
    return model.evaluate(x_eval, y_eval, verbose=0)


def test_with_ema_the_eval_split_scores_and_the_best_file_holds_the_averaged_weights(tmp_path):
    """Keras' EMA alone swaps the average in only when fit ends: the logged eval loss (and the
    best epoch) would describe raw weights, and the best file would hold raw weights."""
    model = _ema_model()
    val_losses = _ema_fit(tmp_path, model)
    _, _, x_eval, y_eval = _ema_data()
    # fit ends by putting the average into the model: its loss is the last logged one
    np.testing.assert_allclose(model.evaluate(x_eval, y_eval, verbose=0), val_losses[-1], rtol=1e-5)
    # the best file holds the weights whose logged eval loss was lowest
    np.testing.assert_allclose(_eval_loss(tmp_path, "best.weights.h5"), min(val_losses), rtol=1e-5)
    # the resume state keeps the raw weights, which differ from the average
    raw = _eval_loss(tmp_path, f"b/{STATE}/{WEIGHTS}")
    assert abs(raw - val_losses[-1]) > 1e-3


def test_with_ema_a_resumed_run_continues_the_same_average(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    _ema_fit(whole, _ema_model(), epochs=4)
    try:
        _ema_fit(killed, _ema_model(), epochs=4, extra=[_Kill()])
    except KeyboardInterrupt:
        pass
    _ema_fit(killed, _ema_model(), epochs=4)  # resumes after epoch 3 (the kill came at its end)
    whole_best, killed_best = _ema_model(), _ema_model()
    whole_best.load_weights(str(whole / "best.weights.h5"))
    killed_best.load_weights(str(killed / "best.weights.h5"))
    for a, b in zip(whole_best.get_weights(), killed_best.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
