"""What a person looks at in the output folder (rank 0 only), as a PaddleClas user expects it:

``<output>/vdl/<run>/``           VisualDL event files (``visualdl --logdir <output>/vdl``), written
                                  with visualdl's own ``LogWriter`` as PaddleClas's
                                  ``Global.use_visualdl`` does: per logged step (``logEverySteps``,
                                  by global step) ``lr(WarmupCosine)``, ``train_loss``, ``train_top1``,
                                  ``train_top5`` (means over the epoch so far); per epoch ``eval_acc``
                                  (top-1, PaddleClas's name), ``eval_top5``, ``eval_loss``. One run
                                  per attempt (``run_name``).
``<output>/training_curves.png``  loss and top-1 by epoch, training and validation, and the
                                  learning rate; redrawn after every epoch.
``<output>/confusion_matrix.png`` the best epoch's confusion matrix on the validation set.
``<output>/per_class.json``       the best epoch's per-class accuracy (recall), precision, F1,
                                  the classes each is mistaken for, and the matrix.

None of this may cost a run: a failure to draw or log is logged once and the run goes on. The
event files are flushed after every epoch, so an interrupted attempt keeps what it logged.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import per_class
from .checkpoint import checkpoint_name
from .schedule import lr_at

if TYPE_CHECKING:
    from .setup import Session
    from .state import RunState

VDL_DIR = "vdl"
CURVES_FILE = "training_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
PER_CLASS_FILE = "per_class.json"
SCHEDULE_POINTS = 2000  # the learning-rate curve is drawn from at most this many steps


class Visuals:
    """The VisualDL writer and the pictures of one attempt; every method is a no-op off rank 0."""

    def __init__(self, s: Session) -> None:
        self.s = s
        self.enabled = s.dist.is_main
        self.writer: Any = None
        self.failed: set[str] = set()
        self.lr_tag = f"lr({type(s.scheduler).__name__})"  # PaddleClas names it by the scheduler
        if self.enabled:
            self._guard("VisualDL", self._open)

    def _open(self) -> None:
        from visualdl import LogWriter  # the trainer extra; a missing package is logged, not fatal

        folder = self.s.output / VDL_DIR / run_name(self.s.state)
        folder.mkdir(parents=True, exist_ok=True)
        # Unique per process, so a rerun from the same point never truncates another's file.
        name = f"vdlrecords.{int(time.time()):010d}.{os.getpid()}.log"
        self.writer = LogWriter(logdir=str(folder), file_name=name, display_name=folder.name)

    def _guard(self, what: str, action, *args: Any) -> Any:
        """Run ``action``; on failure log once per kind and carry on (pictures never fail a run)."""
        try:
            return action(*args)
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            if what not in self.failed:
                self.failed.add(what)
                self.s.log(f"warning: {what} output skipped: {type(exc).__name__}: {exc}")
            if what == "VisualDL":
                self.writer = None
            return None

    # ----------------------------------------------------------------------------------------
    # VisualDL
    # ----------------------------------------------------------------------------------------
    def step(self, global_step: int, lr: float, loss: float, top1: float, top5: float) -> None:
        """A logged training step: the rate used and the epoch's running means."""
        if self.writer is not None:
            self._guard("VisualDL", self._scalars, global_step, {
                self.lr_tag: lr, "train_loss": loss, "train_top1": top1, "train_top5": top5,
            })  # fmt: skip

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag=tag, step=step, value=float(value))

    def flush(self) -> None:
        if self.writer is not None:
            self._guard("VisualDL", self.writer.flush)

    def close(self) -> None:
        if self.writer is not None:
            self._guard("VisualDL", self.writer.close)
            self.writer = None

    # ----------------------------------------------------------------------------------------
    # After every epoch, at the end
    # ----------------------------------------------------------------------------------------
    def epoch(self, record: dict[str, Any]) -> None:
        """The evaluated epoch: its VisualDL scalars (by epoch, as PaddleClas), the curves."""
        if not self.enabled:
            return
        if self.writer is not None:
            self._guard("VisualDL", self._scalars, record["epoch"], {
                "eval_acc": record["top1"], "eval_top5": record["top5"], "eval_loss": record["valLoss"],
            })  # fmt: skip
            self.flush()
        self._guard("training curves", self._curves)

    def _curves(self) -> None:
        from .curves import plot_curves

        state, t = self.s.state, self.s.settings.training
        plot_curves(
            state.history,
            self.s.output / CURVES_FILE,
            schedule=self.schedule(),
            best_epoch=state.best.get("epoch"),
            title=f"{self.s.settings.model.architecture}, {self.s.index.num_classes} classes, "
            f"batch {t.batchSize} x {self.s.dist.world_size}, peak lr {self.s.base_lr:g}",
        )

    def schedule(self) -> list[tuple[float, float]]:
        """(epoch as a fraction, learning rate) over the whole run, from the schedule itself."""
        sched, steps = self.s.scheduler, self.s.steps_per_epoch
        total = sched.total_steps
        stride = max(1, total // SCHEDULE_POINTS)
        return [
            (step / steps, lr_at(step, sched.base_lr, sched.warmup_steps, total))
            for step in [*range(0, total, stride), total]
        ]

    def finish(self) -> None:
        """The best epoch's per-class report and confusion matrix (after the last epoch)."""
        if self.enabled:
            s = self.s
            self._guard("per-class report", write_per_class, s.output, s.state, s.index.label_names)
        self.close()


def run_name(state: RunState) -> str:
    """The VisualDL run of an attempt, named by where it started: ``from-start``, or the checkpoint
    it resumed from (``from-epoch-0002``, ``from-epoch-0002-step00017``). VisualDL shows one file
    per folder (the newest), so each attempt gets its own; their curves continue one another by
    global step. An attempt that restarts from the same checkpoint replaces the one before."""
    if state.epoch == 0 and state.stepInEpoch == 0:
        return "from-start"
    return f"from-{checkpoint_name(state.epoch, state.stepInEpoch)}"


def write_per_class(output: Path, state: RunState, names: list[str]) -> None:
    """``per_class.json`` and ``confusion_matrix.png`` of the best epoch, if its matrix was counted."""
    if not state.best or state.bestConfusion is None:
        return
    matrix = per_class.from_sparse(state.bestConfusion, state.numClasses)
    epoch, top1 = state.best["epoch"], state.best["top1"]
    report = per_class.report(matrix, names, epoch, top1)
    tmp = output / f".{PER_CLASS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, output / PER_CLASS_FILE)
    from .curves import plot_confusion

    plot_confusion(
        matrix,
        names,
        output / CONFUSION_FILE,
        title=f"Best epoch {epoch}: top-1 {top1:.4f} on {int(matrix.sum())} validation images "
        "(rows: true class, normalised)",
    )
