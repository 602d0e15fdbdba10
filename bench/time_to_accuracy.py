"""Benchmark: time to accuracy on real data, finetuning against training from scratch.

scikit-learn's handwritten digits (demo.digits): ResNet18_vd is first pretrained on
digits 0-5 (the stand-in for ImageNet; its cost is reported but not counted), then trained on the
unseen digits 6-9 twice with the same settings (epochs, batch, data, seed, each mode's recipe
learning rate unless --learning-rate is given): once from those pretrained weights (its 6-class fc
stripped, freeze none), once from scratch. Each run is the real `finetune-train` command in a
child process; the wall time of every epoch is when its progress line arrives, so start-up and
validation are counted. Reported per mode: the top-1 curve per epoch, and the wall time and
images seen until top-1 first reaches --target.

    .venv/bin/python bench/time_to_accuracy.py [--target 0.9] [--epochs 16]

Writes bench/results/time_to_accuracy.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "contract", ROOT / "trainer"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from finetune_contract import PROGRESS_PREFIX  # noqa: E402

from demo.digits import (  # noqa: E402
    FINETUNE_CLASSES,
    PRETRAIN_CLASSES,
    digits_settings,
    finetune_budget,
    make_pretrained_weights,
    write_digits_dataset,
)

TRAIN = [sys.executable, "-m", "finetune_trainer.cli"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train(settings_json: str, log_path: Path) -> dict[str, Any]:
    """Run the trainer; returns its per-epoch records with arrival times and its result."""
    cpu0 = children_cpu()
    t0 = time.perf_counter()
    epochs: list[dict[str, Any]] = []
    sources = os.pathsep.join(str(ROOT / folder) for folder in ("trainer", "contract"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": sources}
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*TRAIN, "--settings-json", settings_json],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            at = line.find(PROGRESS_PREFIX)
            if at < 0:
                continue
            record = json.loads(line[at + len(PROGRESS_PREFIX) :])
            if "top1" in record and record.get("phase", "Training") == "Training":
                record["wallSeconds"] = round(time.perf_counter() - t0, 2)
                epochs.append(record)
        code = proc.wait()
    if code != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-20:])
        raise RuntimeError(f"finetune-train exited with {code}; last lines of {log_path}:\n{tail}")
    return {
        "epochs": epochs,
        "wallSeconds": round(time.perf_counter() - t0, 2),
        "cpuSeconds": round(children_cpu() - cpu0, 2),
    }


def reached(run: dict[str, Any], target: float, train_images: int) -> dict[str, Any] | None:
    for record in run["epochs"]:
        if record["top1"] >= target:
            return {
                "epoch": record["epoch"],
                "wallSeconds": record["wallSeconds"],
                "imagesSeen": record["epoch"] * train_images,
                "top1": record["top1"],
            }
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", type=float, default=0.9, help="top-1 to reach (default 0.9)")
    parser.add_argument("--epochs", type=int, default=16, help="epochs per run (default 16)")
    parser.add_argument(
        "--learning-rate", type=float, default=0.0, help="both modes (0: each recipe's default)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "time_to_accuracy.json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tta-bench-"))
    try:
        t0 = time.perf_counter()
        weights = work / "digits0-5.pdparams"
        pretrain = make_pretrained_weights(weights, work / "pretrain")
        pretrain_seconds = time.perf_counter() - t0
        data = work / "data"
        info = write_digits_dataset(data, FINETUNE_CLASSES)
        training = {**finetune_budget(), "epochs": args.epochs}
        if args.learning_rate > 0:
            training["learningRate"] = args.learning_rate
        runs: dict[str, Any] = {}
        for mode in ("finetune", "scratch"):
            settings = digits_settings(data, work / mode, info["numClasses"], **training)
            if mode == "finetune":
                settings.model.pretrained.path = str(weights)
                settings.finetune.freeze = "none"
            else:
                settings.finetune.freeze = "from-scratch"
            print(f"training: {mode} ({args.epochs} epochs)", file=sys.stderr)
            run = train(settings.to_json(), work / f"{mode}.log")
            result = json.loads((work / mode / "result.json").read_text())
            run["finalTop1"] = result.get("lastTop1")
            run["bestTop1"] = result.get("top1")
            run["learningRate"] = result.get("learningRate")
            run["reached"] = reached(run, args.target, info["train"])
            runs[mode] = run
        ft, sc = runs["finetune"]["reached"], runs["scratch"]["reached"]
        ratios: dict[str, Any] = {}
        if ft and sc:
            ratios = {
                "wallScratchOverFinetune": round(sc["wallSeconds"] / ft["wallSeconds"], 2),
                "imagesScratchOverFinetune": round(sc["imagesSeen"] / ft["imagesSeen"], 2),
            }
        elif ft:  # scratch never got there: a lower bound
            ratios = {
                "imagesScratchOverFinetuneAtLeast": round(
                    (args.epochs + 1) * info["train"] / ft["imagesSeen"], 2
                ),
                "note": f"from scratch did not reach {args.target} in {args.epochs} epochs",
            }
        report = {
            "benchmark": "time to accuracy: finetune vs from scratch (sklearn digits 6-9)",
            "command": "bench/time_to_accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()},
            "target": args.target,
            "data": {**info, "root": None, "pretrainClasses": list(PRETRAIN_CLASSES)},
            "training": training,
            "pretrain": {
                "seconds": round(pretrain_seconds, 1),
                "top1": pretrain.get("top1"),
                "epochs": pretrain.get("epochsRun"),
            },
            "runs": runs,
            "ratios": ratios,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(markdown(report))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def markdown(report: dict[str, Any]) -> str:
    target = report["target"]
    lines = [
        f"### Time to top-1 {target} on digits 6-9 (ResNet18_vd, {report['data']['train']} training images)",
        "",
        f"| mode | learning rate | top-1 per epoch | epochs to {target} | images seen | wall s to {target} "
        "| run wall s | run CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, run in report["runs"].items():
        curve = " ".join(f"{r['top1']:.3f}" for r in run["epochs"])
        got = run["reached"]
        if got:
            cells = f"{got['epoch']} | {got['imagesSeen']} | {got['wallSeconds']}"
        else:
            cells = "not reached | - | -"
        lines.append(
            f"| {mode} | {run['learningRate']} | {curve} | {cells} | {run['wallSeconds']} "
            f"| {run['cpuSeconds']} |"
        )
    lines += ["", f"Ratios (same run): {json.dumps(report['ratios'])}"]
    lines.append(
        f"Pretraining on digits 0-5 (not counted): {report['pretrain']['seconds']} s, "
        f"top-1 {report['pretrain']['top1']}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
