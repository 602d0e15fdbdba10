"""The trainer's input pipeline against its bare train step, on the same batches.

Full loop: ``finetune_trainer.train.run`` on a synthetic JPEG dataset (decode, random resized
crop, flip, normalise in 2 DataLoader workers, the step, the loss check, the progress bar); its
images/s is that of its second epoch (the first warms up). Bare step: ``loop.train_step`` on
the same kind of batches already in memory. The two alternate, three rounds, medians reported
(the machine is shared, so single runs drift). Overhead = 1 - full / bare, per round.
Input pipeline alone: images/s out of the DataLoader with no step, to compare with the step's,
and CPU seconds per image of the workers against the step's (CPU time is barely disturbed by
other processes on a shared machine, wall-clock rates are).
A cProfile of one more (1-epoch) run says where the main process spends its time.

    .venv/bin/python bench/trainer_pipeline.py [--out bench/results/trainer_pipeline.json]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import paddle
from finetune_contract import TrainerSettings
from finetune_trainer import loop, train
from finetune_trainer.data import EpochBatchSampler, ImageDataset, index_dataset, make_loader
from finetune_trainer.model import build_model
from finetune_trainer.schedule import WarmupCosine, build_optimizer
from PIL import Image

ARCH, IMAGES, SOURCE_SIZE, IMAGE_SIZE, BATCH, WORKERS, CLASSES = "ResNet18_vd", 384, 96, 64, 32, 2, 4
ROUNDS = 3  # bare step, then a 2-epoch full run, alternating; medians are reported


def write_dataset(root: Path) -> None:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(IMAGES):
        pixels = rng.integers(0, 256, size=(SOURCE_SIZE, SOURCE_SIZE + 16, 3), dtype=np.uint8)
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "img" / f"{i}.jpg", quality=90)
        lines.append(f"img/{i}.jpg {i % CLASSES}\n")
    (root / "train_list.txt").write_text("".join(lines))
    (root / "val_list.txt").write_text("".join(lines[:BATCH]))


def settings_for(root: Path, out: Path, epochs: int) -> TrainerSettings:
    return TrainerSettings.from_dict(
        {
            "model": {"architecture": ARCH},
            "dataset": {"root": str(root), "imageSize": IMAGE_SIZE, "resizeShort": IMAGE_SIZE},
            "finetune": {"freeze": "none"},
            "training": {"epochs": epochs, "batchSize": BATCH, "numWorkers": WORKERS, "warmupEpochs": 0},
            "output": {"dir": str(out), "resultPath": ""},
        }
    )


def bare_step_rate(root: Path, steps: int) -> tuple[float, float]:
    """Images/s of the bare train step and its CPU seconds per image (all of Paddle's threads)."""
    index = index_dataset(root, "list")
    dataset = ImageDataset(index.train, IMAGE_SIZE, IMAGE_SIZE, train=True)
    batches = []
    for start in range(0, BATCH * steps, BATCH):
        items = [dataset[i % len(dataset)] for i in range(start, start + BATCH)]
        batches.append(
            (
                paddle.to_tensor(np.stack([x[0] for x in items])),
                paddle.to_tensor(np.stack([x[1] for x in items])),
            )
        )
    model = build_model(ARCH, CLASSES)
    scheduler = WarmupCosine(0.01, 0, 10_000)
    optimizer = build_optimizer(model.parameters(), scheduler, 0.9, 1e-5)
    model.train()
    for images, labels in batches[:2]:  # warm-up, like the full loop's first epoch
        float(loop.train_step(model, optimizer, None, images, labels, None, 0.0)[0])
    tick, cpu = time.perf_counter(), time.process_time()
    for images, labels in batches:
        float(loop.train_step(model, optimizer, None, images, labels, None, 0.0)[0])
        scheduler.step()
    images = BATCH * len(batches)
    return images / (time.perf_counter() - tick), (time.process_time() - cpu) / images


def pipeline_only_rate(root: Path) -> tuple[float, float]:
    """The input pipeline alone: images/s out of the 2-worker DataLoader with no train step, and
    the workers' CPU seconds per image."""
    index = index_dataset(root, "list")
    dataset = ImageDataset(index.train, IMAGE_SIZE, IMAGE_SIZE, train=True)
    sampler = EpochBatchSampler(dataset, BATCH, 0, 1, shuffle=True, seed=0)
    rates = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        tick = time.perf_counter()
        count = sum(int(labels.shape[0]) for _, labels, _ in make_loader(dataset, sampler, WORKERS))
        rates.append(count / (time.perf_counter() - tick))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers have been joined
        cpu = (after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime) / count
    return rates[-1], cpu


def profile_summary(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds of the main process in the parts of the loop that matter."""
    wanted = {
        "trainStep": ("loop.py", "train_step"),
        "waitingForBatches": ("dataloader_iter.py", "__next__"),
        "corruptImageCheck": ("loop.py", "split_corrupt"),
        "progressBar": ("std.py", "update"),
        "evaluate": ("loop.py", "evaluate"),
        "checkpointSave": ("checkpoint.py", "save_checkpoint"),
        "exportInference": ("export.py", "export_inference"),
        "wholeRun": ("train.py", "run"),
    }
    return {
        label: round(
            sum(v[3] for (f, _, name), v in stats.stats.items() if f.endswith(filename) and name == func), 3
        )
        for label, (filename, func) in wanted.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/trainer_pipeline.json")
    args = parser.parse_args()
    paddle.set_device("cpu")
    work = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    try:
        write_dataset(work / "data")
        steps = IMAGES // BATCH
        rounds = []  # alternate bare and full, so drift on a shared machine hits both alike
        for r in range(ROUNDS):
            bare, step_cpu = bare_step_rate(work / "data", steps)
            out = work / f"out{r}"
            result = train.run(settings_for(work / "data", out, epochs=2))
            latest = json.loads((out / "checkpoints" / "latest.json").read_text())["dir"]
            history = json.loads((out / "checkpoints" / latest / "state.json").read_text())["history"]
            full = history[-1]["imagesPerSecond"]  # epoch 2: epoch 1 warms up
            rounds.append(
                {
                    "bare": round(bare, 2),
                    "full": full,
                    "overhead": round(1 - full / bare, 4),
                    "stepCpu": step_cpu,
                }
            )
        pipeline, pipeline_cpu = pipeline_only_rate(work / "data")
        step_cpu = float(np.median([x.pop("stepCpu") for x in rounds]))
        bare = float(np.median([x["bare"] for x in rounds]))
        full = float(np.median([x["full"] for x in rounds]))
        overhead = float(np.median([x["overhead"] for x in rounds]))

        profiler = cProfile.Profile()
        profiler.enable()
        train.run(settings_for(work / "data", work / "profiled", epochs=1))
        profiler.disable()
        seconds = profile_summary(pstats.Stats(profiler))
        epoch_seconds = seconds["trainStep"] + seconds["waitingForBatches"]
        report = {
            "benchmark": "trainer input pipeline vs bare train step",
            "machine": {
                "cpus": len(os.sched_getaffinity(0)),
                "python": platform.python_version(),
            },
            "paddle": paddle.__version__,
            "config": {
                "architecture": ARCH,
                "images": IMAGES,
                "sourceSize": f"{SOURCE_SIZE + 16}x{SOURCE_SIZE} JPEG",
                "imageSize": IMAGE_SIZE,
                "batchSize": BATCH,
                "numWorkers": WORKERS,
            },
            "fullLoopImagesPerSecond": round(full, 2),
            "bareStepImagesPerSecond": round(bare, 2),
            "overheadFraction": round(overhead, 4),
            "rounds": rounds,
            "goal": "overheadFraction < 0.10",
            "inputPipelineOnlyImagesPerSecond": round(pipeline, 2),
            "inputPipelineOverStep": round(pipeline / bare, 2),
            # CPU seconds per image: robust to other load, unlike wall-clock rates. Their ratio is
            # the share of the CPU the input pipeline takes from the step when they share cores.
            "cpuSecondsPerImage": {
                "inputPipelineWorkers": round(pipeline_cpu, 5),
                "trainStep": round(step_cpu, 5),
            },
            "inputPipelineCpuShare": round(pipeline_cpu / (pipeline_cpu + step_cpu), 4),
            "fullLoopExitCode": result.exitCode,
            "profileSeconds": seconds,
            "profileNote": (
                "one 1-epoch run under cProfile (main process only): waitingForBatches is time blocked "
                "on the DataLoader; the rest of the run is model build, evaluation, checkpoint, export"
            ),
            "trainingShareOfEpoch": round(seconds["trainStep"] / max(epoch_seconds, 1e-9), 4),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
