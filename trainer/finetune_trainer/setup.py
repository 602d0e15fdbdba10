"""Setting up one attempt: device and process group, data, model and its starting point (the
output directory's latest checkpoint, else the pretrained weights with mismatched tensors
stripped and a freeze decision), then the optimiser, schedule and loaders the loop runs on.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import paddle
from finetune_contract import EXIT_BAD_SETTINGS, FreezeDecision, LoadSummary, TrainerSettings, WorldSettings

from . import checkpoint as ckpt
from . import ranks, resume
from .data import (
    CORRUPT_LABEL,
    CorruptImageCounter,
    DataError,
    DatasetIndex,
    EpochBatchSampler,
    ImageDataset,
    index_dataset,
    make_loader,
)
from .freeze import apply_freeze, decide_auto, sample_indices, user_decision, without_weights_decision
from .model import build_model
from .pretrained import fetch_pretrained, load_pretrained
from .report import Log
from .schedule import WarmupCosine, build_optimizer, default_learning_rate, warmup_steps_for
from .state import Attempt, RunState, TrainerFailure, failure_of

if TYPE_CHECKING:
    from .visual import Visuals


# --------------------------------------------------------------------------------------------
# Device and process group
# --------------------------------------------------------------------------------------------
@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        """This process's place as ``paddle.distributed.launch`` sets it (global rank and count,
        over all nodes), before joining the process group."""
        world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1") or 1)
        return cls(int(os.environ.get("PADDLE_TRAINER_ID", "0") or 0), world) if world > 1 else cls()


def setup_distributed(world: WorldSettings | None = None) -> Distributed:
    """Join the process group when started by ``paddle.distributed.launch`` with several ranks
    (on one node or several: ``--nnodes``; on CPU the launcher picks the gloo backend). With
    ``world`` set (the job's nodes x processes per node), the launcher must have started exactly
    that many processes, checked before joining: every rank sees the same count and stops the
    same way, where a wrong count would train on another global batch than the job asked for."""
    started = Distributed.from_env().world_size
    if world is not None and world.size and world.size != started:
        raise TrainerFailure(
            EXIT_BAD_SETTINGS,
            f"world: the job asks for {world.nodes} node(s) x {world.processesPerNode} process(es) = "
            f"{world.size}, but {started} process(es) were started (PADDLE_TRAINERS_NUM="
            f"{os.environ.get('PADDLE_TRAINERS_NUM', 'unset')}): the pod's paddle.distributed.launch "
            "arguments do not match the settings",
        )
    if started <= 1:
        return Distributed()
    paddle.distributed.init_parallel_env()
    return Distributed(paddle.distributed.get_rank(), paddle.distributed.get_world_size())


def pick_device() -> bool:
    """Use the GPU when Paddle has one (the launcher restricts each rank to its own); True on GPU."""
    if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        paddle.set_device("gpu")
        return True
    paddle.set_device("cpu")
    return False


def amp_dtype_for(mode: str, on_gpu: bool) -> str | None:
    """The autocast dtype, or None for full float32 (always on CPU)."""
    if not on_gpu or mode == "off":
        return None
    return "float16" if mode == "auto" else mode


# --------------------------------------------------------------------------------------------
# What the loop works on
# --------------------------------------------------------------------------------------------
@dataclass
class Session:
    """Everything one attempt's loop needs, set up by ``prepare``."""

    settings: TrainerSettings
    dist: Distributed
    log: Log
    output: Path
    amp_dtype: str | None
    index: DatasetIndex
    model: paddle.nn.Layer
    net: paddle.nn.Layer  # the model, or its DataParallel wrapper with several ranks
    state: RunState
    optimizer: paddle.optimizer.Optimizer
    scheduler: WarmupCosine
    scaler: paddle.amp.GradScaler | None
    base_lr: float
    counter: CorruptImageCounter
    train_set: ImageDataset
    val_set: ImageDataset
    sampler: EpochBatchSampler
    val_loader: paddle.io.DataLoader
    visuals: Visuals | None = None  # VisualDL logs and pictures, opened by loop.train (visual.py)

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch()


def prepare(settings: TrainerSettings, dist: Distributed, attempt: Attempt) -> Session:
    """Set up the attempt, recording in ``attempt`` what is established on the way."""
    d, t = settings.dataset, settings.training
    log = Log(dist.is_main)
    on_gpu = pick_device()
    amp_dtype = amp_dtype_for(t.amp, on_gpu)
    if t.amp not in ("auto", "off") and not on_gpu:
        log(f"training.amp={t.amp} ignored: no GPU, training in float32")
    paddle.seed(t.seed)
    np.random.seed(t.seed & 0xFFFFFFFF)
    output = Path(settings.output.dir)
    if dist.is_main:
        output.mkdir(parents=True, exist_ok=True)

    if dist.world_size > 1:
        index, model, state, optimizer_state, resumed = begin_together(settings, dist, output, log, attempt)
    else:
        index, model, state, optimizer_state, resumed = begin(settings, output, log, attempt)
    attempt.state, attempt.resumed_from_epoch = state, resumed

    train_set = ImageDataset(
        index.train, d.imageSize, d.resizeShort, True, t.seed, d.cropScaleMin, d.horizontalFlip
    )
    val_set = ImageDataset(index.val, d.imageSize, d.resizeShort, train=False)
    sampler = EpochBatchSampler(train_set, t.batchSize, dist.rank, dist.world_size, shuffle=True, seed=t.seed)
    # Each rank evaluates its own slice (no padding, so every image counts once when summed).
    val_shard = paddle.io.Subset(val_set, list(range(dist.rank, len(val_set), dist.world_size)))
    val_sampler = paddle.io.BatchSampler(val_shard, batch_size=t.batchSize)
    optimizer, scheduler, scaler, base_lr = optimisation(
        settings, model, state, optimizer_state, sampler.steps_per_epoch(), dist, amp_dtype, log
    )
    counter = attempt.corrupt = CorruptImageCounter(d.corruptImages, d.maxCorruptImages)
    counter.seen.update(state.corruptImages)
    return Session(
        settings=settings,
        dist=dist,
        log=log,
        output=output,
        amp_dtype=amp_dtype,
        index=index,
        model=model,
        net=paddle.DataParallel(model) if dist.world_size > 1 else model,
        state=state,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        base_lr=base_lr,
        counter=counter,
        train_set=train_set,
        val_set=val_set,
        sampler=sampler,
        val_loader=make_loader(val_shard, val_sampler, t.numWorkers),
    )


Begun = tuple[DatasetIndex, paddle.nn.Layer, RunState, dict[str, Any] | None, int | None]


def begin(settings: TrainerSettings, output: Path, log: Log, attempt: Attempt) -> Begun:
    """One process, or rank 0: (data index, model, run state, optimiser state to restore or
    None, the epoch resumed from or None)."""
    index = attempt.index = index_data(settings)
    log(
        f"data: {len(index.train)} training / {len(index.val)} validation images, {index.num_classes} classes"
    )
    model = build_model(settings.model.architecture, index.num_classes, settings.finetune.lrMultList)
    state, optimizer_state, resumed = starting_point(settings, model, index, output, log)
    return index, model, state, optimizer_state, resumed


def begin_together(
    settings: TrainerSettings, dist: Distributed, output: Path, log: Log, attempt: Attempt
) -> Begun:
    """Several ranks: rank 0 begins (``begin``), the others take its start (``ranks.py``): the
    run state, the freeze applied to their own model (whose weights DataParallel replaces with
    rank 0's) and the optimiser state."""
    made: dict[str, Any] = {}

    def lead() -> tuple[DatasetIndex, dict[str, Any], dict[str, Any] | None]:
        index, model, state, optimizer_state, resumed = begin(settings, output, log, attempt)
        made.update(model=model, state=state, resumed=resumed)
        start = {"state": state.to_checkpoint(), "resumed": resumed, "optimizer": optimizer_state is not None}
        return index, start, optimizer_state

    def follow(start: dict[str, Any]) -> DatasetIndex:
        index = attempt.index = index_data(settings)
        model = build_model(settings.model.architecture, index.num_classes, settings.finetune.lrMultList)
        state = RunState.from_checkpoint(start["state"])
        if state.freeze is None:
            raise ValueError("rank 0 sent a start without a freeze decision")
        apply_freeze(model, state.freeze.strategy, state.freeze.stages)
        made.update(model=model, state=state, resumed=start["resumed"])
        return index

    index, _, optimizer_state = ranks.start_together(dist, settings.dataset.root, lead, follow, _failure)
    return index, made["model"], made["state"], optimizer_state, made["resumed"]


def _failure(exc: Exception) -> tuple[int, str]:
    return failure_of(exc) or (1, f"{type(exc).__name__}: {str(exc)[-500:]}")


def index_data(settings: TrainerSettings) -> DatasetIndex:
    d = settings.dataset
    return index_dataset(
        d.root,
        d.format,
        d.numClasses,
        trainList=d.trainList,
        valList=d.valList,
        labelList=d.labelList,
        trainDir=d.trainDir,
        valDir=d.valDir,
    )


# --------------------------------------------------------------------------------------------
# Where training starts: a checkpoint, or the pretrained weights and a freeze decision
# --------------------------------------------------------------------------------------------
def starting_point(
    settings: TrainerSettings,
    model: paddle.nn.Layer,
    index: DatasetIndex,
    output: Path,
    log: Log,
    is_main: bool = True,
) -> tuple[RunState, dict[str, Any] | None, int | None]:
    """(run state, optimiser state to restore or None, the epoch resumed from or None). Resumes
    from the output directory's newest checkpoint that verifies (``checkpoint.py``), if it is
    this job's and made with these settings (``resume.py``), keeping its freeze decision; else
    loads the pretrained weights and decides what to train."""
    found, rejected = ckpt.latest_checkpoint(output, log)
    if is_main:
        for path in rejected:
            with contextlib.suppress(OSError):
                log(f"set {path.name} aside as {ckpt.set_aside(path).name}")
    if found is None:
        if rejected:
            log("warning: no checkpoint could be used: starting afresh")
        state = RunState(
            seed=settings.training.seed,
            architecture=settings.model.architecture,
            numClasses=index.num_classes,
        )
        state.load, decision = initialise(settings, model, index, log)
        report = apply_freeze(model, decision.strategy, decision.stages)
        optimizer_state, resumed = None, None
    else:
        resume.check_resumable(found.state, settings, index.num_classes, found.path)
        state = RunState.from_checkpoint(found.state)
        if state.freeze is None:
            raise ValueError(f"{found.path}/state.json holds no freeze decision")
        decision = state.freeze
        # Freeze first: "from-scratch" re-initialises the weights, which the checkpoint then replaces.
        report = apply_freeze(model, decision.strategy, decision.stages)
        model.set_state_dict(found.weights)
        optimizer_state, resumed = found.optimizer, state.epoch
        log(f"resuming from {found.path} (epoch {state.epoch}, step {state.stepInEpoch} of the next)")
    state.job = resume.job_identity(settings)
    state.settings = resume.resume_settings(settings)
    state.fingerprint = resume.fingerprint(state.settings)
    state.freeze = f = report.applied(decision)
    log(
        f"freeze: {f.strategy} (decided by {f.decidedBy}{f', rule {f.rule}' if f.rule else ''}; "
        f"evidence {json.dumps(f.evidence)}); {f.trainableParameters:,} trainable parameters"
    )
    return state, optimizer_state, resumed


def initialise(
    settings: TrainerSettings, model: paddle.nn.Layer, index: DatasetIndex, log: Log
) -> tuple[LoadSummary, FreezeDecision]:
    """A fresh run: load the pretrained weights (stripping mismatches), then decide what to train."""
    f = settings.finetune
    source = settings.model.pretrained
    load, pretrained = LoadSummary(), False
    if f.freeze != "from-scratch" and (source.name or source.url or source.path):
        path = fetch_pretrained(source, settings.cacheDir)
        if path is not None:
            report = load_pretrained(model, path, strip_mismatched=f.stripMismatched)
            load, pretrained = report.load_summary(), True
            log(
                f"pretrained {path}: {len(report.loaded)} loaded, {len(report.stripped)} stripped "
                f"({', '.join(report.stripped[:4])}), {len(report.missing)} missing, "
                f"{len(report.unexpected)} unexpected"
            )
    if f.freeze != "auto":
        if f.freeze != "from-scratch" and not pretrained:
            log(f"warning: finetune.freeze={f.freeze} without pretrained weights trains from random weights")
        return load, user_decision(f.freeze, f.freezeStages)
    if not pretrained:
        return load, without_weights_decision()
    images, labels = auto_sample(index, settings)
    return load, decide_auto(model, images, labels, index.num_classes, len(index.train))


def auto_sample(index: DatasetIndex, settings: TrainerSettings) -> tuple[paddle.Tensor, list[int]]:
    """A class-balanced sample of training images (eval transform) for ``freeze.decide_auto``."""
    d = settings.dataset
    dataset = ImageDataset(index.train, d.imageSize, d.resizeShort, train=False)
    images, labels = [], []
    for i in sample_indices([s.label for s in index.train], seed=settings.training.seed):
        image, label, _ = dataset[i]
        if label != CORRUPT_LABEL:
            images.append(image)
            labels.append(int(label))
    if not images:
        raise DataError(f"{d.root}: none of the sampled training images could be decoded")
    return paddle.to_tensor(np.stack(images)), labels


# --------------------------------------------------------------------------------------------
# Optimiser, schedule, AMP scaler
# --------------------------------------------------------------------------------------------
def optimisation(
    settings: TrainerSettings,
    model: paddle.nn.Layer,
    state: RunState,
    optimizer_state: dict[str, Any] | None,
    steps_per_epoch: int,
    dist: Distributed,
    amp_dtype: str | None,
    log: Log,
) -> tuple[paddle.optimizer.Optimizer, WarmupCosine, paddle.amp.GradScaler | None, float]:
    """The recipe's momentum SGD with warm-up and cosine, restored to the checkpoint's position
    when resuming; returns (optimiser, scheduler, scaler or None, peak learning rate)."""
    t = settings.training
    total_steps = steps_per_epoch * t.epochs
    from_scratch = state.freeze is not None and state.freeze.strategy == "from-scratch"
    base_lr = t.learningRate or default_learning_rate(t.batchSize * dist.world_size, from_scratch)
    warmup = warmup_steps_for(t.warmupEpochs, t.epochs, steps_per_epoch)
    if warmup < t.warmupEpochs * steps_per_epoch:
        log(f"warm-up shortened to {warmup} steps (at most half of the {total_steps}-step run)")
    scheduler = WarmupCosine(base_lr, warmup, total_steps)
    trainable = [p for p in model.parameters() if not p.stop_gradient]
    optimizer = build_optimizer(trainable, scheduler, t.momentum, t.weightDecay)
    scaler = paddle.amp.GradScaler(init_loss_scaling=2.0**15) if amp_dtype == "float16" else None
    if optimizer_state is not None:
        optimizer.set_state_dict(ckpt.restore_optimizer_state(optimizer_state, model))
        scheduler.set_state_dict(state.scheduler)
        if scaler is not None and state.scaler:
            scaler.load_state_dict(state.scaler)
    state.learningRate = base_lr
    log(
        f"{settings.model.architecture}: lr {base_lr:g} (warm-up {warmup} steps, cosine to step "
        f"{total_steps}), batch {t.batchSize} x {dist.world_size} process(es), amp {amp_dtype or 'off'}"
    )
    return optimizer, scheduler, scaler, base_lr
