"""The training loop: one train step, one epoch, evaluation, and the epochs of a run.

Every epoch: train on the shard, evaluate top-1/top-5 on the validation set, keep the best
epoch's weights, checkpoint, and print a progress line; at the end, export the best model. A
SIGTERM (eviction, preemption) only sets a flag while the loop runs: the loop checkpoints its
position at the next training step or evaluation batch (an evaluation is abandoned, not finished:
the grace period before SIGKILL is short) and stops with ``Interrupted``, so the next attempt
loses nothing.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import paddle
import paddle.nn.functional as F
from finetune_contract import EXIT_CHECKPOINT_REFUSED, EXIT_NON_FINITE_LOSS
from tqdm import tqdm

from . import checkpoint as ckpt
from . import ranks
from .data import CORRUPT_LABEL, CorruptImageCounter, ImageDataset, make_loader
from .export import LABELS_FILE, export_inference, write_labels
from .freeze import freeze_batchnorm_stats
from .per_class import MAX_CONFUSION_CLASSES, to_sparse
from .report import print_progress
from .setup import Distributed, Session
from .state import Interrupted, TrainerFailure
from .statefile import UnsafeFileError
from .visual import Visuals


class SigtermGuard:
    """While the loop runs, SIGTERM only sets a flag, so the loop can checkpoint and stop cleanly
    at the next step; outside the loop it interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.in_loop = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        if not self.in_loop:
            raise Interrupted()

    def __enter__(self) -> SigtermGuard:
        with contextlib.suppress(ValueError):  # not the main thread: no handler
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


# --------------------------------------------------------------------------------------------
# One step, one evaluation
# --------------------------------------------------------------------------------------------
def train_step(
    model: paddle.nn.Layer,
    optimizer: paddle.optimizer.Optimizer,
    scaler: paddle.amp.GradScaler | None,
    images: paddle.Tensor,
    labels: paddle.Tensor,
    amp_dtype: str | None,
    label_smoothing: float,
    weight: float = 1.0,
) -> tuple[paddle.Tensor, paddle.Tensor]:
    """One forward/backward/update; returns the (unscaled) loss and the logits. ``weight`` 0
    makes a step that contributes nothing (a rank whose batch was all corrupt images must still
    take part in the gradient all-reduce)."""
    with paddle.amp.auto_cast(enable=amp_dtype is not None, level="O1", dtype=amp_dtype or "float16"):
        logits = model(images)
    loss = F.cross_entropy(logits.astype("float32"), labels, label_smoothing=label_smoothing)
    objective = loss * weight if weight != 1.0 else loss
    if scaler is not None:
        scaler.scale(objective).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        objective.backward()
        optimizer.step()
    optimizer.clear_grad()
    return loss, logits


def split_corrupt(
    images: paddle.Tensor,
    labels: paddle.Tensor,
    indices: paddle.Tensor,
    dataset: ImageDataset,
    counter: CorruptImageCounter,
) -> tuple[paddle.Tensor, paddle.Tensor] | None:
    """Apply the corrupt-image policy to a batch; None if nothing usable is left."""
    label_values = labels.numpy()
    bad = label_values == CORRUPT_LABEL
    if not bad.any():
        return images, labels
    counter.record([dataset.samples[int(i)] for i in indices.numpy()[bad]])
    keep = paddle.to_tensor(np.flatnonzero(~bad))
    if keep.shape[0] == 0:
        return None
    return paddle.gather(images, keep), paddle.gather(labels, keep)


def evaluate(
    model: paddle.nn.Layer,
    loader: paddle.io.DataLoader,
    dataset: ImageDataset,
    num_classes: int,
    amp_dtype: str | None,
    counter: CorruptImageCounter,
    dist: Distributed,
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Top-1, top-min(5, classes), mean loss, image count and the confusion matrix (None beyond
    ``per_class.MAX_CONFUSION_CLASSES`` classes) over the validation set (all ranks). ``stop`` is
    asked before every batch: when it says so, the pass is abandoned (Interrupted).

    With several ranks, ``stop`` is asked of every rank at every round and the answers are
    summed, so all ranks abandon the pass at the same round when any of them was asked to stop.
    The shards differ by up to one batch: there are as many rounds as the longest shard has
    batches, and a rank whose shard is done still answers in the rounds left (one rank leaving
    the pass alone would leave the others blocked in a collective it never joins)."""
    model.eval()
    k = min(5, num_classes)
    cells = num_classes * num_classes if num_classes <= MAX_CONFUSION_CLASSES else 0
    # correct@1, correct@k, loss sum, count, then the confusion matrix's cells (true * C + predicted)
    totals = paddle.zeros([4 + cells], dtype="float64")
    together = stop is not None and dist.world_size > 1
    rounds = ranks.max_over_ranks(len(loader), dist) if together else len(loader)
    batches = iter(loader)
    with paddle.no_grad():
        for done in range(rounds):
            if stop is not None:
                requested = stop()
                if together:
                    (requested,) = ranks.sum_over_ranks([float(requested)], dist)
                if requested:
                    raise Interrupted(
                        f"received SIGTERM during evaluation (abandoned after {done} of {rounds} batches)"
                    )
            item = next(batches, None)
            if item is None:  # this rank's shard is done; it answers the others until theirs are
                continue
            images, labels, indices = item
            batch = split_corrupt(images, labels, indices, dataset, counter)
            if batch is None:
                continue
            images, labels = batch
            with paddle.amp.auto_cast(enable=amp_dtype is not None, level="O1", dtype=amp_dtype or "float16"):
                logits = model(images)
            logits = logits.astype("float32")
            top = paddle.topk(logits, k=k, axis=1)[1]
            hits = (top == labels.unsqueeze(1).astype(top.dtype)).astype("float64")
            loss = F.cross_entropy(logits, labels, reduction="sum").astype("float64")
            batch_totals = paddle.stack(
                [
                    hits[:, 0].sum(),
                    hits.sum(),
                    loss.reshape([]),
                    paddle.to_tensor(float(labels.shape[0]), "float64"),
                ]
            )
            if cells:
                pairs = labels.astype("int64").reshape([-1]) * num_classes + top[:, 0].astype("int64")
                batch_totals = paddle.concat(
                    [batch_totals, paddle.bincount(pairs, minlength=cells).astype("float64")]
                )
            totals += batch_totals
    if dist.world_size > 1:
        paddle.distributed.all_reduce(totals)
    values = totals.numpy()
    c1, ck, loss_sum, count = (float(v) for v in values[:4])
    seen = max(count, 1.0)
    confusion = values[4:].round().astype(np.int64).reshape(num_classes, num_classes) if cells else None
    return {
        "top1": c1 / seen,
        "top5": ck / seen,
        "loss": loss_sum / seen,
        "count": int(count),
        "confusion": confusion,
    }


# --------------------------------------------------------------------------------------------
# The run: epochs until done
# --------------------------------------------------------------------------------------------
def train(s: Session, guard: SigtermGuard) -> None:
    """Train the remaining epochs, then export the best model (rank 0)."""
    epochs = s.settings.training.epochs
    s.visuals = Visuals(s)
    print_progress(s.dist.is_main, s.state.epoch, epochs, phase="Training", stepsPerEpoch=s.steps_per_epoch)
    guard.in_loop = True  # from here on SIGTERM is handled at the next step or evaluation batch
    while s.state.epoch < epochs:
        trained = train_epoch(s, guard)
        s.log(f"epoch {s.state.epoch + 1}/{epochs}: evaluating on {len(s.val_set)} images")
        try:
            metrics = evaluate(
                s.net,
                s.val_loader,
                s.val_set,
                s.index.num_classes,
                s.amp_dtype,
                s.counter,
                s.dist,
                stop=lambda: guard.requested,  # the ranks agree on it at every batch
            )
        except Interrupted:
            save_interrupted(s, trained)  # the epoch's training is done: evaluate it next time
            raise
        end_epoch(s, trained, metrics)
        # Arrived in the last evaluation batch or while saving: this epoch's checkpoint is complete.
        if stop_agreed(s, guard):
            raise Interrupted(f"received SIGTERM; stopped after epoch {s.state.epoch} (checkpoint saved)")
    guard.in_loop = False
    s.visuals.finish()
    if s.dist.is_main:
        export_best(s)


def stop_agreed(s: Session, guard: SigtermGuard) -> bool:
    """Whether any rank received SIGTERM: every rank asks at the same points and stops at the
    same step (one rank stopping alone would leave the others blocked in a collective)."""
    (requested,) = ranks.sum_over_ranks([1.0 if guard.requested else 0.0], s.dist)
    return requested > 0


@dataclass
class EpochTraining:
    """What one epoch of training saw (all ranks)."""

    images: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0
    correct1: int = 0  # training batches' top-1 and top-min(5, classes) hits
    correct5: int = 0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.images, 1)

    @staticmethod
    def hits(logits: paddle.Tensor, labels: paddle.Tensor) -> tuple[int, int]:
        """A batch's top-1 and top-min(5, classes) hits."""
        top = paddle.topk(logits, k=min(5, logits.shape[1]), axis=1)[1]
        hits = (top == labels.reshape([-1, 1]).astype(top.dtype)).astype("int64")
        return int(hits[:, 0].sum()), int(hits.sum())

    @property
    def top1(self) -> float:
        return self.correct1 / max(self.images, 1)

    @property
    def top5(self) -> float:
        return self.correct5 / max(self.images, 1)


def train_epoch(s: Session, guard: SigtermGuard) -> EpochTraining:
    """Train one epoch, from the step the state says (mid-epoch after a SIGTERM checkpoint)."""
    state, t = s.state, s.settings.training
    s.train_set.set_epoch(state.epoch)
    s.sampler.set_epoch(state.epoch, start_step=state.stepInEpoch)
    loader = make_loader(s.train_set, s.sampler, t.numWorkers)
    s.net.train()
    freeze_batchnorm_stats(s.model)
    # Resumed inside the epoch: continue the tally of its steps before the checkpoint.
    resumed = state.stepInEpoch > 0 and state.epochTraining
    seen = EpochTraining(**state.epochTraining) if resumed else EpochTraining()
    tick = time.perf_counter() - seen.seconds
    bar = _progress_bar(s)
    try:
        for images, labels, indices in loader:
            batch = split_corrupt(images, labels, indices, s.train_set, s.counter)
            loss_sum, count, hits = 0.0, 0, (0, 0)
            if batch is not None:
                loss, logits = train_step(
                    s.net, s.optimizer, s.scaler, batch[0], batch[1], s.amp_dtype, t.labelSmoothing
                )
                count = int(batch[1].shape[0])
                loss_sum = float(loss) * count
                hits = seen.hits(logits, batch[1])
            elif s.dist.world_size > 1:  # nothing usable here, but the other ranks all-reduce
                blank = paddle.zeros_like(labels)
                train_step(s.net, s.optimizer, s.scaler, images, blank, s.amp_dtype, 0.0, weight=0.0)
            # The step over all ranks (loss, images, hits), and whether any rank received SIGTERM.
            loss_sum, count, top1, top5, stop = ranks.sum_over_ranks(
                [loss_sum, count, *hits, float(guard.requested)], s.dist
            )
            if count:
                _finite_loss(s, loss_sum / count)
                seen.images += int(count)
                seen.loss_sum += loss_sum
                seen.correct1 += int(top1)
                seen.correct5 += int(top5)
            used_lr = s.scheduler.last_lr
            s.scheduler.step()
            state.stepInEpoch += 1
            state.globalStep += 1
            bar.update(1)
            if state.stepInEpoch % t.logEverySteps == 0 and seen.images:
                rate = seen.images / max(time.perf_counter() - tick, 1e-9)
                bar.set_postfix(loss=f"{seen.mean_loss:.4f}", img_s=f"{rate:.1f}", refresh=False)
                s.visuals.step(state.globalStep, used_lr, seen.mean_loss, seen.top1, seen.top5)
            if stop:
                raise Interrupted()
    except Interrupted:
        seen.seconds = time.perf_counter() - tick
        save_interrupted(s, seen)
        raise
    finally:
        bar.close()
    seen.seconds = time.perf_counter() - tick
    return seen


def _progress_bar(s: Session) -> tqdm:
    return tqdm(
        total=s.steps_per_epoch,
        initial=s.state.stepInEpoch,
        desc=f"epoch {s.state.epoch + 1}/{s.settings.training.epochs}",
        unit="step",
        file=sys.stderr,
        disable=not s.dist.is_main,
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )


def _finite_loss(s: Session, value: float) -> float:
    if not math.isfinite(value):
        raise TrainerFailure(
            EXIT_NON_FINITE_LOSS,
            f"the loss became {value} at epoch {s.state.epoch + 1}, step {s.state.stepInEpoch + 1} "
            f"(learning rate {s.scheduler.get_lr():.4g}): lower training.learningRate "
            f"(now {s.base_lr:g}) or check the data",
        )
    return value


def end_epoch(s: Session, trained: EpochTraining, metrics: dict[str, float]) -> None:
    """Book the finished epoch: history, best model, checkpoint, log and progress lines."""
    state = s.state
    state.epoch += 1
    state.stepInEpoch = 0
    state.epochTraining = {}
    state.trainImages += trained.images  # over all ranks
    state.trainSeconds += trained.seconds
    record = {
        "epoch": state.epoch,
        "top1": round(metrics["top1"], 6),
        "top5": round(metrics["top5"], 6),
        "valLoss": round(metrics["loss"], 6),
        "valImages": metrics["count"],  # evaluated, over all ranks (corrupt ones skipped)
        "trainLoss": round(trained.mean_loss, 6),
        "trainTop1": round(trained.top1, 6),  # over all ranks' batches
        "imagesPerSecond": round(trained.images / max(trained.seconds, 1e-9), 2),
        "learningRate": s.scheduler.get_lr(),
    }
    state.history.append(record)
    improved = not state.best or metrics["top1"] > state.best["top1"]
    if improved:
        state.best = {k: record[k] for k in ("epoch", "top1", "top5", "valLoss")}
        confusion = metrics.get("confusion")
        state.bestConfusion = to_sparse(confusion) if confusion is not None else None
    if s.dist.is_main:
        if improved:
            ckpt.save_best(s.output, s.model, state.best, state.job)
            write_labels(s.output / "best_model" / LABELS_FILE, s.index.label_names)
        save_checkpoint(s)
    s.visuals.epoch(record)
    s.log(
        f"epoch {state.epoch}/{s.settings.training.epochs}: top1 {metrics['top1']:.4f} "
        f"top5 {metrics['top5']:.4f} val loss {metrics['loss']:.4f} train loss {record['trainLoss']:.4f} "
        f"{record['imagesPerSecond']:.1f} img/s "
        f"(best top1 {state.best['top1']:.4f} at epoch {state.best['epoch']})"
    )
    print_progress(
        s.dist.is_main,
        state.epoch,
        s.settings.training.epochs,
        phase="Training",
        top1=record["top1"],
        top5=record["top5"],
        loss=record["trainLoss"],
        valLoss=record["valLoss"],
        imagesPerSecond=record["imagesPerSecond"],
        bestTop1=state.best["top1"],
        bestEpoch=state.best["epoch"],
    )


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------
def save_checkpoint(s: Session) -> None:
    state = s.state
    state.scheduler = s.scheduler.state_dict()
    state.scaler = s.scaler.state_dict() if s.scaler is not None else {}
    state.corruptImages = dict(s.counter.seen)
    ckpt.save_checkpoint(s.output, s.model, s.optimizer, state.to_checkpoint())


def save_interrupted(s: Session, trained: EpochTraining) -> None:
    """On SIGTERM: checkpoint the position inside the epoch (up to all its steps, when the
    evaluation was abandoned), so the next attempt loses nothing."""
    if not s.dist.is_main or s.state.stepInEpoch == 0:
        return  # the end-of-epoch checkpoint already holds this position
    s.visuals.flush()
    try:
        s.state.epochTraining = asdict(trained)
        save_checkpoint(s)
        s.log(
            f"interrupted: saved epoch {s.state.epoch + 1} step {s.state.stepInEpoch} "
            f"to {s.output / 'checkpoints'}"
        )
    except Exception as exc:  # noqa: BLE001 - the grace period may end first; the epoch checkpoint remains
        s.log(f"interrupted: could not save a checkpoint ({exc}); the last epoch checkpoint remains")


def export_best(s: Session) -> None:
    """The best epoch's weights, exported for inference with the label names."""
    try:
        best = ckpt.load_best(s.output)
    except (OSError, UnsafeFileError) as exc:
        raise TrainerFailure(
            EXIT_CHECKPOINT_REFUSED,
            f"the best model cannot be exported: {exc}; remove {s.output / ckpt.BEST_DIR} and "
            f"{s.output / 'checkpoints'} to train again",
        ) from None
    if best is not None:
        s.model.set_state_dict(best)
    else:
        s.log(f"warning: no best model in {s.output / ckpt.BEST_DIR}: exporting the last epoch's weights")
    d = s.settings.dataset
    prefix = export_inference(s.model, s.output, d.imageSize, s.index.label_names, d.resizeShort)
    s.log(f"exported the best model for inference to {prefix} (+ {LABELS_FILE})")
