"""The training loop: ``run(settings) -> result``.

One attempt: index the data, build the model, resume from the output directory's latest
checkpoint or load the pretrained weights (stripping mismatched parameters), choose what to
train, then train with the recipe's schedule, evaluating top-1/top-5 every epoch, checkpointing
every epoch, keeping the best model, and exporting it for inference at the end.

What the outside sees (rank 0 only): a tqdm progress bar and log lines on stderr, one
``FINETUNE_PROGRESS`` line per epoch on stdout (and one at the start, epoch 0), and the result
JSON (``finetune_contract.encode_result``, <= 4096 bytes) in ``output.resultPath`` plus the full
result in ``<output>/result.json``. Failures map to the contract's exit codes; the result then
carries ``reason``, ``message`` and ``exitCode``.

Several GPUs: under ``python -m paddle.distributed.launch`` each process trains on its shard
(DataParallel averages gradients); evaluation counts are summed over ranks; only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import paddle.nn.functional as F
from finetune_contract import (
    EXIT_BAD_SETTINGS,
    EXIT_DATA_ERROR,
    EXIT_DOWNLOAD_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NON_FINITE_LOSS,
    EXIT_OK,
    EXIT_PRETRAINED_ERROR,
    EXIT_TRANSIENT,
    SettingsError,
    TrainerSettings,
    encode_result,
    exit_reason,
    format_progress,
)
from tqdm import tqdm

from . import checkpoint as ckpt
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
from .export import LABELS_FILE, export_inference, write_labels
from .freeze import apply_freeze, decide_auto, freeze_batchnorm_stats, sample_indices
from .model import build_model
from .pretrained import DownloadError, PretrainedError, fetch_pretrained, load_pretrained
from .schedule import WarmupCosine, build_optimizer, default_learning_rate, warmup_steps_for


class TrainerFailure(Exception):
    """Ends the attempt with a contract exit code; the message goes into the result."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(TrainerFailure):
    def __init__(self, message: str = "received SIGTERM") -> None:
        super().__init__(EXIT_INTERRUPTED, message)


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Distributed:
    """Join the process group when started by ``paddle.distributed.launch`` with several ranks."""
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1") or 1)
    if world <= 1:
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


def train_step(
    model: paddle.nn.Layer,
    optimizer: paddle.optimizer.Optimizer,
    scaler: paddle.amp.GradScaler | None,
    images: paddle.Tensor,
    labels: paddle.Tensor,
    amp_dtype: str | None,
    label_smoothing: float,
) -> paddle.Tensor:
    """One forward/backward/update; returns the (unscaled) loss tensor."""
    with paddle.amp.auto_cast(enable=amp_dtype is not None, level="O1", dtype=amp_dtype or "float16"):
        logits = model(images)
    loss = F.cross_entropy(logits.astype("float32"), labels, label_smoothing=label_smoothing)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    optimizer.clear_grad()
    return loss


def _split_corrupt(
    images: paddle.Tensor, labels: paddle.Tensor, indices: paddle.Tensor, dataset: ImageDataset, counter
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
) -> dict[str, float]:
    """Top-1, top-min(5, classes), mean loss and image count over the validation set (all ranks)."""
    model.eval()
    k = min(5, num_classes)
    totals = paddle.zeros([4], dtype="float64")  # correct@1, correct@k, loss sum, count
    with paddle.no_grad():
        for images, labels, indices in loader:
            batch = _split_corrupt(images, labels, indices, dataset, counter)
            if batch is None:
                continue
            images, labels = batch
            with paddle.amp.auto_cast(enable=amp_dtype is not None, level="O1", dtype=amp_dtype or "float16"):
                logits = model(images)
            logits = logits.astype("float32")
            top = paddle.topk(logits, k=k, axis=1)[1]
            hits = (top == labels.unsqueeze(1).astype(top.dtype)).astype("float64")
            loss = F.cross_entropy(logits, labels, reduction="sum").astype("float64")
            totals += paddle.stack(
                [
                    hits[:, 0].sum(),
                    hits.sum(),
                    loss.reshape([]),
                    paddle.to_tensor(float(labels.shape[0]), "float64"),
                ]
            )
    if dist.world_size > 1:
        paddle.distributed.all_reduce(totals)
    c1, ck, loss_sum, count = (float(v) for v in totals.numpy())
    seen = max(count, 1.0)
    return {"top1": c1 / seen, "top5": ck / seen, "loss": loss_sum / seen, "count": int(count)}


@dataclass
class RunState:
    """What a checkpoint carries besides weights and optimiser (see checkpoint.py)."""

    epoch: int = 0  # completed epochs
    stepInEpoch: int = 0
    globalStep: int = 0
    best: dict[str, Any] = field(default_factory=dict)  # epoch, top1, top5, loss
    history: list[dict[str, Any]] = field(default_factory=list)
    freeze: dict[str, Any] = field(default_factory=dict)
    load: dict[str, list[str]] = field(default_factory=dict)
    trainImages: int = 0  # images trained on (all attempts), for images/s
    trainSeconds: float = 0.0
    corruptImages: dict[str, str] = field(default_factory=dict)
    learningRate: float = 0.0
    seed: int = 0
    architecture: str = ""
    numClasses: int = 0
    scheduler: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)


class _Log:
    """Human-readable lines on stderr (rank 0), kept clear of the progress bar."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            tqdm.write(f"[finetune] {message}", file=sys.stderr)


def _progress(dist: Distributed, epoch: int, epochs: int, **extra: Any) -> None:
    if dist.is_main:
        print(format_progress(epoch, epochs, **extra), flush=True)


def _is_out_of_memory(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    # A DataLoader worker that "exited unexpectedly" was almost always killed by the OOM killer.
    markers = ("out of memory", "resourceexhausted", "exit unexpectedly", "exited unexpectedly")
    return isinstance(exc, MemoryError) or any(m in text for m in markers)


class _SigtermGuard:
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

    def __enter__(self) -> _SigtermGuard:
        with contextlib.suppress(ValueError):  # not the main thread: no handler
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def run(settings: TrainerSettings) -> dict[str, Any]:
    """Run one training attempt; returns the result (``exitCode`` 0 on success)."""
    started = time.time()
    dist = Distributed()
    info: dict[str, Any] = {}
    output = Path(settings.output.dir)
    try:
        with _SigtermGuard() as guard:
            dist = setup_distributed()
            result = _train(settings, dist, guard, info)
        result.update(exitCode=EXIT_OK, reason=exit_reason(EXIT_OK))
    except TrainerFailure as exc:
        result = _failure(info, exc.exit_code, str(exc))
    except DataError as exc:
        result = _failure(info, EXIT_DATA_ERROR, str(exc))
    except SettingsError as exc:
        result = _failure(info, EXIT_BAD_SETTINGS, str(exc))
    except PretrainedError as exc:
        result = _failure(info, EXIT_PRETRAINED_ERROR, str(exc))
    except DownloadError as exc:
        result = _failure(info, EXIT_DOWNLOAD_ERROR, str(exc))
    except Exception as exc:  # noqa: BLE001 - every failure must still produce a result
        if not _is_out_of_memory(exc):
            # A bug or an unforeseen failure: report it (exit code 1, permanent), then let the
            # traceback through for the log.
            crash = _failure(info, 1, f"{type(exc).__name__}: {str(exc)[-500:]}")
            crash["durationSeconds"] = round(time.time() - started, 2)
            if dist.is_main:
                write_result(crash, output, settings.output.resultPath)
            raise
        result = _failure(info, EXIT_TRANSIENT, f"out of memory: {str(exc)[-300:]} (try a smaller batchSize)")
    result["durationSeconds"] = round(time.time() - started, 2)
    if dist.is_main:
        write_result(result, output, settings.output.resultPath)
    return result


def _failure(info: dict[str, Any], code: int, message: str) -> dict[str, Any]:
    print(f"[finetune] failed ({exit_reason(code)}): {message}", file=sys.stderr, flush=True)
    return {**info, "exitCode": code, "reason": exit_reason(code), "message": message}


def write_result(result: dict[str, Any], output_dir: Path, result_path: str) -> None:
    """The full result in <output>/result.json; the <= 4096-byte encoding at result_path."""
    with contextlib.suppress(OSError):
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "result.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    if result_path:
        try:
            Path(result_path).write_text(encode_result(result))
        except OSError as exc:  # e.g. /dev/termination-log outside a pod
            print(f"[finetune] cannot write the result to {result_path}: {exc}", file=sys.stderr)


def _train(
    settings: TrainerSettings, dist: Distributed, guard: _SigtermGuard, info: dict[str, Any]
) -> dict[str, Any]:
    d, f, t = settings.dataset, settings.finetune, settings.training
    log = _Log(dist.is_main)
    on_gpu = pick_device()
    amp_dtype = amp_dtype_for(t.amp, on_gpu)
    if t.amp not in ("auto", "off") and not on_gpu:
        log(f"training.amp={t.amp} ignored: no GPU, training in float32")
    paddle.seed(t.seed)
    np.random.seed(t.seed & 0xFFFFFFFF)
    output = Path(settings.output.dir)
    if dist.is_main:
        output.mkdir(parents=True, exist_ok=True)

    index = index_dataset(
        d.root,
        d.format,
        d.numClasses,
        trainList=d.trainList,
        valList=d.valList,
        labelList=d.labelList,
        trainDir=d.trainDir,
        valDir=d.valDir,
    )
    num_classes = index.num_classes
    info.update(
        epochs=t.epochs, numClasses=num_classes, trainImages=len(index.train), valImages=len(index.val)
    )
    log(f"data: {len(index.train)} training / {len(index.val)} validation images, {num_classes} classes")

    model = build_model(settings.model.architecture, num_classes, f.lrMultList)
    state = RunState(seed=t.seed, architecture=settings.model.architecture, numClasses=num_classes)
    latest = ckpt.find_latest(output)
    optimizer_state: dict[str, Any] | None = None
    if latest is not None:
        weights, optimizer_state, saved = ckpt.load_checkpoint(latest)
        state = RunState(**{k: v for k, v in saved.items() if k in RunState.__dataclass_fields__})
        if (state.architecture, state.numClasses) != (settings.model.architecture, num_classes):
            raise TrainerFailure(
                EXIT_BAD_SETTINGS,
                f"output.dir {output} holds a checkpoint of {state.architecture} with {state.numClasses} "
                f"classes, but this run is {settings.model.architecture} with {num_classes}: "
                "use a new output.dir",
            )
        # Freeze first: "from-scratch" re-initialises the weights, which the checkpoint then replaces.
        freeze_report = apply_freeze(model, state.freeze["strategy"], state.freeze.get("stages", 0))
        model.set_state_dict(weights)
        info["resumedFromEpoch"] = state.epoch
        log(f"resuming from {latest} (epoch {state.epoch}, step {state.stepInEpoch} of the next)")
    else:
        state.load, state.freeze = _initialise(settings, model, index, log)
        freeze_report = apply_freeze(model, state.freeze["strategy"], state.freeze.get("stages", 0))
    _fill_load_info(info, state)
    state.freeze["trainableParameters"] = int(freeze_report.trainable_parameters)
    info["freeze"] = dict(state.freeze)
    rule = state.freeze.get("rule")
    log(
        f"freeze: {state.freeze['strategy']} (decided by {state.freeze['decidedBy']}"
        f"{f', rule {rule}' if rule else ''}; evidence {json.dumps(state.freeze.get('evidence'))}); "
        f"{state.freeze['trainableParameters']:,} trainable parameters"
    )

    train_set = ImageDataset(
        index.train, d.imageSize, d.resizeShort, True, t.seed, d.cropScaleMin, d.horizontalFlip
    )
    val_set = ImageDataset(index.val, d.imageSize, d.resizeShort, train=False)
    sampler = EpochBatchSampler(train_set, t.batchSize, dist.rank, dist.world_size, shuffle=True, seed=t.seed)
    # Each rank evaluates its own slice (no padding, so every image counts once when summed).
    val_shard = paddle.io.Subset(val_set, list(range(dist.rank, len(val_set), dist.world_size)))
    val_sampler = paddle.io.BatchSampler(val_shard, batch_size=t.batchSize)
    steps_per_epoch = sampler.steps_per_epoch()
    total_steps = steps_per_epoch * t.epochs
    from_scratch = state.freeze["strategy"] == "from-scratch"
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
    info["learningRate"] = base_lr
    log(
        f"{settings.model.architecture}: lr {base_lr:g} (warm-up {warmup} steps, cosine to step "
        f"{total_steps}), "
        f"batch {t.batchSize} x {dist.world_size} process(es), amp {amp_dtype or 'off'}"
    )

    net: paddle.nn.Layer = paddle.DataParallel(model) if dist.world_size > 1 else model
    counter = CorruptImageCounter(d.corruptImages, d.maxCorruptImages)
    counter.seen.update(state.corruptImages)
    val_loader = make_loader(val_shard, val_sampler, t.numWorkers)
    _progress(dist, state.epoch, t.epochs, phase="Training", stepsPerEpoch=steps_per_epoch)

    guard.in_loop = True  # from here on SIGTERM is handled at the next step or epoch boundary
    while state.epoch < t.epochs:
        epoch = state.epoch  # 0-based index of the epoch being trained
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch, start_step=state.stepInEpoch)
        loader = make_loader(train_set, sampler, t.numWorkers)
        net.train()
        freeze_batchnorm_stats(model)
        epoch_images, loss_sum, loss_count = 0, 0.0, 0
        tick = time.perf_counter()
        bar = tqdm(
            total=steps_per_epoch,
            initial=state.stepInEpoch,
            desc=f"epoch {epoch + 1}/{t.epochs}",
            unit="step",
            file=sys.stderr,
            disable=not dist.is_main,
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
        )
        try:
            for images, labels, indices in loader:
                if guard.requested:
                    raise Interrupted()
                batch = _split_corrupt(images, labels, indices, train_set, counter)
                if batch is not None:
                    loss = train_step(net, optimizer, scaler, batch[0], batch[1], amp_dtype, t.labelSmoothing)
                    loss_value = float(loss)
                    if not math.isfinite(loss_value):
                        raise TrainerFailure(
                            EXIT_NON_FINITE_LOSS,
                            f"the loss became {loss_value} at epoch {epoch + 1}, "
                            f"step {state.stepInEpoch + 1} "
                            f"(learning rate {scheduler.get_lr():.4g}): lower training.learningRate "
                            f"(now {base_lr:g}) or check the data",
                        )
                    count = int(batch[1].shape[0])
                    epoch_images += count
                    loss_sum += loss_value * count
                    loss_count += count
                scheduler.step()
                state.stepInEpoch += 1
                state.globalStep += 1
                bar.update(1)
                if state.stepInEpoch % t.logEverySteps == 0 and loss_count:
                    rate = epoch_images * dist.world_size / max(time.perf_counter() - tick, 1e-9)
                    bar.set_postfix(loss=f"{loss_sum / loss_count:.4f}", img_s=f"{rate:.1f}", refresh=False)
            if guard.requested:
                raise Interrupted()
        except Interrupted:
            _save_interrupted(output, model, optimizer, scheduler, scaler, state, counter, dist, log)
            raise
        finally:
            bar.close()
        seconds = time.perf_counter() - tick
        state.trainImages += epoch_images * dist.world_size
        state.trainSeconds += seconds
        metrics = evaluate(net, val_loader, val_set, num_classes, amp_dtype, counter, dist)
        state.epoch += 1
        state.stepInEpoch = 0
        images_per_second = epoch_images * dist.world_size / max(seconds, 1e-9)
        record = {
            "epoch": state.epoch,
            "top1": round(metrics["top1"], 6),
            "top5": round(metrics["top5"], 6),
            "valLoss": round(metrics["loss"], 6),
            "valImages": metrics["count"],  # evaluated, over all ranks (corrupt ones skipped)
            "trainLoss": round(loss_sum / max(loss_count, 1), 6),
            "imagesPerSecond": round(images_per_second, 2),
            "learningRate": scheduler.get_lr(),
        }
        state.history.append(record)
        improved = not state.best or metrics["top1"] > state.best["top1"]
        if improved:
            state.best = {k: record[k] for k in ("epoch", "top1", "top5", "valLoss")}
        if dist.is_main:
            if improved:
                ckpt.save_best(output, model, state.best)
                write_labels(output / "best_model" / LABELS_FILE, index.label_names)
            _save(output, model, optimizer, scheduler, scaler, state, counter)
        log(
            f"epoch {state.epoch}/{t.epochs}: top1 {metrics['top1']:.4f} top5 {metrics['top5']:.4f} "
            f"val loss {metrics['loss']:.4f} train loss {record['trainLoss']:.4f} "
            f"{images_per_second:.1f} img/s "
            f"(best top1 {state.best['top1']:.4f} at epoch {state.best['epoch']})"
        )
        info.update(epochsRun=state.epoch, bestEpoch=state.best["epoch"], top1=state.best["top1"])
        _progress(
            dist,
            state.epoch,
            t.epochs,
            phase="Training",
            top1=record["top1"],
            top5=record["top5"],
            loss=record["trainLoss"],
            valLoss=record["valLoss"],
            imagesPerSecond=record["imagesPerSecond"],
            bestTop1=state.best["top1"],
            bestEpoch=state.best["epoch"],
        )
        if guard.requested:  # arrived during evaluation or saving: this epoch's checkpoint is complete
            raise Interrupted(f"received SIGTERM; stopped after epoch {state.epoch} (checkpoint saved)")
    guard.in_loop = False

    if dist.is_main:
        _export_best(output, model, num_classes, d.imageSize, index, log)
    return {
        **info,
        "top1": state.best["top1"],
        "top5": state.best["top5"],
        "bestEpoch": state.best["epoch"],
        "epochsRun": state.epoch,
        "epochs": t.epochs,
        "imagesPerSecond": round(state.trainImages / max(state.trainSeconds, 1e-9), 2),
        "corruptImagesSkipped": counter.count,
        "lastTop1": state.history[-1]["top1"] if state.history else None,
        "resumedFromEpoch": info.get("resumedFromEpoch"),
        "outputDir": str(output),
    }


def _initialise(
    settings: TrainerSettings, model: paddle.nn.Layer, index: DatasetIndex, log: _Log
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """A fresh run: load the pretrained weights (stripping mismatches), then decide what to train."""
    f = settings.finetune
    source = settings.model.pretrained
    load = {"strippedParameters": [], "missingParameters": [], "unexpectedParameters": []}
    pretrained = False
    if f.freeze != "from-scratch" and (source.name or source.url or source.path):
        path = fetch_pretrained(source, settings.cacheDir)
        if path is not None:
            report = load_pretrained(model, path, strip_mismatched=f.stripMismatched)
            load = {
                "strippedParameters": list(report.stripped),
                "missingParameters": list(report.missing),
                "unexpectedParameters": list(report.unexpected),
            }
            pretrained = True
            log(
                f"pretrained {path}: {len(report.loaded)} loaded, {len(report.stripped)} stripped "
                f"({', '.join(report.stripped[:4])}), {len(report.missing)} missing, "
                f"{len(report.unexpected)} unexpected"
            )
    if f.freeze != "auto":
        freeze = {
            "strategy": f.freeze,
            "stages": f.freezeStages if f.freeze == "stages" else 0,
            "decidedBy": "user",
            "rule": None,  # the seed's rule number (1..4) applies to auto decisions only
            "evidence": {"setting": f"finetune.freeze={f.freeze}"},
        }
        if f.freeze != "from-scratch" and not pretrained:
            log(f"warning: finetune.freeze={f.freeze} without pretrained weights trains from random weights")
        return load, freeze
    if not pretrained:
        return load, {
            "strategy": "from-scratch",
            "stages": 0,
            "decidedBy": "auto",
            "rule": None,
            "evidence": {
                "note": "no pretrained weights given (model.pretrained is empty): train from scratch"
            },
        }
    images, labels = _auto_sample(index, settings)
    decision = decide_auto(model, images, labels, index.num_classes, len(index.train))
    return load, {
        "strategy": decision.strategy,
        "stages": decision.stages,
        "decidedBy": "auto",
        "rule": decision.rule,
        "evidence": decision.evidence,
    }


def _auto_sample(index: DatasetIndex, settings: TrainerSettings) -> tuple[paddle.Tensor, list[int]]:
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


def _fill_load_info(info: dict[str, Any], state: RunState) -> None:
    for key in ("strippedParameters", "missingParameters", "unexpectedParameters"):
        info[key] = list(state.load.get(key, []))


def _checkpoint_state(state: RunState, scheduler, scaler, counter: CorruptImageCounter) -> dict[str, Any]:
    state.scheduler = scheduler.state_dict()
    state.scaler = scaler.state_dict() if scaler is not None else {}
    state.corruptImages = dict(counter.seen)
    return json.loads(json.dumps(state.__dict__, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):  # e.g. the AMP scaler's "scale"
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, paddle.Tensor):
        return value.numpy().tolist()
    return str(value)


def _save(output: Path, model, optimizer, scheduler, scaler, state: RunState, counter) -> None:
    ckpt.save_checkpoint(output, model, optimizer, _checkpoint_state(state, scheduler, scaler, counter))


def _save_interrupted(output, model, optimizer, scheduler, scaler, state, counter, dist, log) -> None:
    """On SIGTERM: checkpoint the position inside the epoch, so the next attempt loses nothing."""
    if not dist.is_main or state.stepInEpoch == 0:
        return  # the end-of-epoch checkpoint already holds this position
    try:
        _save(output, model, optimizer, scheduler, scaler, state, counter)
        log(
            f"interrupted: saved epoch {state.epoch + 1} step {state.stepInEpoch} to {output / 'checkpoints'}"
        )
    except Exception as exc:  # noqa: BLE001 - the grace period may end first; the epoch checkpoint remains
        log(f"interrupted: could not save a checkpoint ({exc}); the last epoch checkpoint remains")


def _export_best(output: Path, model: paddle.nn.Layer, num_classes: int, image_size: int, index, log) -> None:
    best = output / "best_model" / "model.pdparams"
    if best.is_file():
        model.set_state_dict(paddle.load(str(best)))
    prefix = export_inference(model, output, image_size, index.label_names)
    log(f"exported the best model for inference to {prefix} (+ {LABELS_FILE})")
