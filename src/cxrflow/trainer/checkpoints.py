"""Kill-safe training state: resume backup, best checkpoint and early stopping in one callback.

Keras' BackupAndRestore and ModelCheckpoint write their files in place, so a SIGKILL during a
write leaves a half-written .h5 that the next run cannot load, and EarlyStopping's patience
and ModelCheckpoint's best score restart from scratch after a resume (the first resumed epoch
would then overwrite a better checkpoint). Here each epoch's state is written to a temporary
directory that replaces the previous one by rename, and the best score and the patience counter
travel in that state.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil

import keras

STATE = "state"
WEIGHTS = "latest.weights.h5"
META = "meta.json"


def _replace_file(write, path: str) -> None:
    tmp = path[: -len(".weights.h5")] + ".tmp.weights.h5" if path.endswith(".weights.h5") else path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def averaged_weights(model: keras.Model):
    """Puts the optimizer's moving average of the weights (Keras' `use_ema`) into the model for
    the duration and the raw weights back afterwards, since training goes on from those. Does
    nothing when the optimizer keeps no average or has not taken a step yet."""
    optimizer = model.optimizer
    if optimizer is None or not getattr(optimizer, "use_ema", False) or not optimizer.built:
        yield
        return
    raw = [variable.numpy() for variable in model.trainable_variables]
    optimizer.finalize_variable_values(model.trainable_variables)  # Keras' public "EMA into the model"
    try:
        yield
    finally:
        for variable, value in zip(model.trainable_variables, raw, strict=True):
            variable.assign(value)


class AveragedEvaluation(keras.callbacks.Callback):
    """Scores the eval split with the averaged weights: Keras' EMA alone only swaps them in once
    training ends, so every epoch's eval loss (and the best epoch chosen from it) would describe
    raw weights that are never exported. ResumableTraining saves the best epoch averaged too."""

    def __init__(self) -> None:
        super().__init__()
        self._swap = contextlib.ExitStack()

    def on_test_begin(self, logs=None) -> None:
        self._swap.enter_context(averaged_weights(self.model))

    def on_test_end(self, logs=None) -> None:
        self._swap.close()


class ResumableTraining(keras.callbacks.Callback):
    """Restores the last finished epoch at train start; keeps the best weights; stops early.

    `backup_dir` holds `state/` (latest weights with optimizer state, and meta.json with the
    epoch, best score and patience counter); `best_path` the best weights so far. With an
    optimizer that averages the weights (EMA), the best weights saved are the averaged ones,
    which AveragedEvaluation scored; the resume state keeps the raw weights and, in the
    optimizer's state, the average.

    `initial_best` is the score of the weights already in `best_path`: a later training phase
    (fine-tuning after the frozen-backbone phase) passes the earlier phase's best, so it replaces
    those weights only with better ones. One best is kept across phases.

    `mode` "max" keeps the highest value (a recall) instead of the lowest (a loss); `best` is
    then stored negated, so that one comparison and `initial_best=inf` serve both.

    `tie_break` names a second value, always minimised (the eval loss), that decides between
    epochs whose monitored value is equal. A recall on a small eval split moves in steps of one
    film and often sits on a plateau while the loss still falls; without it the first epoch of a
    plateau would be kept and patience would end training on it. An equal score with a lower
    tie-break counts as an improvement (saved, patience reset); `best_tie` is its value.
    Patience also restarts whenever the tie-break value reaches a new low of its own
    (`lowest_tie`): training stops only once neither the decisions nor the loss have improved
    for `patience` epochs. On a small eval split a recall can peak early by chance and then dip
    while the loss keeps falling (the synthetic demo: recall 0.74 at epoch 5, 1.0 from epoch 16),
    and a recall-only patience would end training on that early peak.

    `min_epochs`: training is never stopped before this many epochs of the phase, however long
    the wait; the best epoch is still tracked from the first. The CNN can sit at chance for
    several epochs before it starts to learn (real X-rays, seed 1: epochs 2-6 no better than
    epoch 1), and patience counted from a chance-level epoch 1 would end training there.

    `no_skill_loss`: patience does not count until an epoch's eval loss (`val_loss`, whatever
    the monitor) goes below it: the eval loss of always predicting the eval split's class mix
    (`trainer/losses.py`). Until then the model has learned nothing, and an epoch "better" than
    a chance-level one is no evidence that training is done (stronger augmentation kept the real
    seed 1 at chance past epoch 10, and the floor alone ended it there: macro recall 0.333).
    `learned` says whether some epoch (of this or, passed in, an earlier phase) got below it;
    math.inf (the default) counts from the first epoch, as without the check.
    """

    def __init__(self, backup_dir: str, best_path: str, monitor: str = "val_loss", patience: int = 6,
                 initial_best: float = math.inf, mode: str = "min", tie_break: str | None = None,
                 initial_tie: float = math.inf, min_epochs: int = 0, no_skill_loss: float = math.inf,
                 learned: bool = False) -> None:
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be min or max, got {mode!r}")
        self.backup_dir = backup_dir
        self.best_path = best_path
        self.monitor = monitor
        self.sign = 1.0 if mode == "min" else -1.0
        self.patience = patience
        self.min_epochs = min_epochs
        self.no_skill_loss = float(no_skill_loss)
        self.learned = learned or not math.isfinite(self.no_skill_loss)
        self.best = float(initial_best)
        self.tie_break = tie_break
        self.best_tie = float(initial_tie)
        self.lowest_tie = float(initial_tie)
        self.best_epoch: int | None = None  # 1-based, in this phase; None while an earlier phase's best stands
        self.wait = 0
        self.resumed_from_epoch = 0

    def _state_dir(self) -> str | None:
        for name in (STATE, STATE + ".old"):  # .old: a kill came between the two renames
            path = os.path.join(self.backup_dir, name)
            if os.path.exists(os.path.join(path, META)):
                return path
        return None

    def on_train_begin(self, logs=None) -> None:
        state = self._state_dir()
        self.model._initial_epoch = None  # a previous phase's resume point must not leak in
        if state is None:
            return
        with open(os.path.join(state, META)) as f:
            meta = json.load(f)
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(state, WEIGHTS))
        self.best, self.wait = meta["best"], meta["wait"]
        # absent from backups written before tie-breaks
        self.best_tie, self.lowest_tie = meta.get("best_tie", math.inf), meta.get("lowest_tie", math.inf)
        self.best_epoch = meta.get("best_epoch")
        self.learned = meta.get("learned", True)  # absent from backups written before the no-skill check
        self.resumed_from_epoch = meta["epoch"]
        # What Keras' own BackupAndRestore sets too; a run that had already stopped early (or
        # finished) skips the epoch loop entirely.
        done = meta.get("stopped") or meta["epoch"] >= self.params.get("epochs", math.inf)
        self.model._initial_epoch = self.params["epochs"] if done else meta["epoch"]

    def _improves(self, score: float, tie: float) -> bool:
        if math.isclose(score, self.best, rel_tol=0.0, abs_tol=1e-7):  # float32 metrics of equal counts
            return tie < self.best_tie
        return score < self.best

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        value = logs.get(self.monitor)
        tie = float(logs.get(self.tie_break, math.inf)) if self.tie_break else math.inf
        if value is not None and self._improves(self.sign * float(value), tie):
            self.best, self.best_tie, self.wait, self.best_epoch = self.sign * float(value), tie, 0, epoch + 1
            with averaged_weights(self.model):
                _replace_file(lambda p: self.model.save_weights(p), self.best_path)
        elif tie < self.lowest_tie:  # not a better epoch, but the loss is still falling
            self.wait = 0
        else:
            self.wait += 1
        self.lowest_tie = min(self.lowest_tie, tie)
        loss = logs.get("val_loss")
        self.learned = self.learned or (loss is not None and float(loss) < self.no_skill_loss)
        if not self.learned:
            self.wait = 0  # still at chance: patience waits for the model to learn something
        stopped = self.wait >= self.patience and epoch + 1 >= self.min_epochs
        self._save(epoch + 1, stopped)
        if stopped:
            self.model.stop_training = True

    def _save(self, epoch: int, stopped: bool) -> None:
        os.makedirs(self.backup_dir, exist_ok=True)
        tmp = os.path.join(self.backup_dir, STATE + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        self.model.save_weights(os.path.join(tmp, WEIGHTS))
        with open(os.path.join(tmp, META), "w") as f:
            json.dump({"epoch": epoch, "best": self.best, "best_tie": self.best_tie,
                       "lowest_tie": self.lowest_tie, "best_epoch": self.best_epoch, "wait": self.wait,
                       "learned": self.learned, "stopped": stopped}, f)
        current, old = os.path.join(self.backup_dir, STATE), os.path.join(self.backup_dir, STATE + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(current):
            os.rename(current, old)
        os.rename(tmp, current)
        shutil.rmtree(old, ignore_errors=True)
