"""Benchmark: our ResNet50_vd train step against PaddleClas 2.6.0's, same CPU, batch and input.

Both models start from the same weights and see the same batch; the runs alternate inside one
process (reference first on even rounds, ours first on odd ones) so that drifting load from
other processes hits both alike. A train step is forward, cross-entropy, backward, a Momentum
update with L2 decay and clearing the gradients. The reported ratio is the reference's median
step time over ours: above 1.0 means ours is faster. Step time is measured as this process's CPU
time (Paddle runs one thread here, OMP_NUM_THREADS=1), which other processes on a shared machine
barely disturb; wall-clock medians are reported alongside.

    .venv/bin/python bench/trainer_step.py [--batch 4] [--size 112] [--rounds 8] [--steps 3]

Prints a table and writes bench/results/trainer_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "trainer"))

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.nn.functional as F  # noqa: E402
from finetune_trainer.model import build_model  # noqa: E402

from bench.paddleclas_reference import load_reference_resnet  # noqa: E402


def make_step(model: paddle.nn.Layer, x: paddle.Tensor, y: paddle.Tensor):
    opt = paddle.optimizer.Momentum(
        learning_rate=0.001,
        momentum=0.9,
        parameters=model.parameters(),
        weight_decay=paddle.regularizer.L2Decay(1e-5),
    )

    def step() -> float:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.clear_grad()
        return float(loss)

    return step


def timed(step, steps: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per step over ``steps`` steps (float(loss) synchronises)."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(steps):
        step()
    return (time.process_time() - cpu) / steps, (time.perf_counter() - wall) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--classes", type=int, default=102)
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds (each times both)")
    parser.add_argument("--steps", type=int, default=3, help="train steps per model per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "trainer_step.json")
    args = parser.parse_args(argv)

    paddle.seed(0)
    ref = load_reference_resnet().ResNet50_vd(class_num=args.classes)
    ours = build_model("ResNet50_vd", args.classes)
    ours.set_state_dict(ref.state_dict())
    ref.train()
    ours.train()
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal((args.batch, 3, args.size, args.size), dtype=np.float32))
    y = paddle.to_tensor(rng.integers(0, args.classes, size=(args.batch,)), dtype="int64")
    steps = {"reference": make_step(ref, x, y), "ours": make_step(ours, x, y)}

    # Same weights, same batch: the first losses must agree, or we are not timing the same work.
    first = {name: step() for name, step in steps.items()}
    if abs(first["reference"] - first["ours"]) > 1e-4 * max(1.0, abs(first["reference"])):
        raise SystemExit(f"first-step losses differ: {first}")
    for step in steps.values():
        for _ in range(args.warmup):
            step()

    times: dict[str, list[float]] = {"reference": [], "ours": []}
    walls: dict[str, list[float]] = {"reference": [], "ours": []}
    for r in range(args.rounds):
        order = ("reference", "ours") if r % 2 == 0 else ("ours", "reference")
        for name in order:
            cpu, wall = timed(steps[name], args.steps)
            times[name].append(cpu)
            walls[name].append(wall)

    med = {name: statistics.median(v) for name, v in times.items()}
    med_wall = {name: statistics.median(v) for name, v in walls.items()}
    ratio = med["reference"] / med["ours"]
    result = {
        "benchmark": "ResNet50_vd train step, ours vs PaddleClas 2.6.0",
        "paddle": paddle.__version__,
        "device": paddle.device.get_device(),
        "cpu": platform.processor() or platform.machine(),
        "cpuCount": os.cpu_count(),
        "batch": args.batch,
        "imageSize": args.size,
        "classes": args.classes,
        "rounds": args.rounds,
        "stepsPerRound": args.steps,
        "threads": os.environ.get("OMP_NUM_THREADS", ""),
        "medianStepCpuSeconds": med,
        "medianStepWallSeconds": med_wall,
        "imagesPerCpuSecond": {name: args.batch / t for name, t in med.items()},
        "roundCpuSeconds": times,
        "roundWallSeconds": walls,
        "ratioReferenceOverOurs": ratio,
        "wallRatioReferenceOverOurs": med_wall["reference"] / med_wall["ours"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    device = paddle.device.get_device()
    print(f"ResNet50_vd train step, batch {args.batch} at {args.size}x{args.size}, {device}")
    print(f"{'model':<12}{'CPU s/step':>12}{'images/CPU s':>14}{'wall s/step':>13}")
    for name in ("reference", "ours"):
        print(f"{name:<12}{med[name]:>12.4f}{args.batch / med[name]:>14.2f}{med_wall[name]:>13.4f}")
    verdict = "ours not slower" if ratio >= 1.0 else "OURS IS SLOWER"
    wall_ratio = result["wallRatioReferenceOverOurs"]
    print(f"ratio reference/ours (CPU time): {ratio:.3f} ({verdict}); wall-clock ratio {wall_ratio:.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
