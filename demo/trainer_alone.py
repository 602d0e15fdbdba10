"""``python -m demo.trainer_alone``: the finetune recipe end to end on real data, in minutes on a CPU.

1. Pretrain ResNet18_vd from scratch on scikit-learn's handwritten digits 0-5 (our own stand-in
   for an ImageNet checkpoint; the real ones cannot be downloaded here) and save it as .pdparams.
2. Finetune it on the unseen digits 6-9 through the ``finetune-train`` command line (the code path
   a pod runs): the 6-class fc is stripped, every other tensor loads.
3. Print the result: top-1/top-5, the stripped parameters, the freeze decision, the timings.

Everything is written under ``--work-dir`` (a temporary directory by default).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from finetune_trainer.cli import main as cli_main

from demo.digits import (
    FINETUNE_CLASSES,
    PRETRAIN_CLASSES,
    digits_settings,
    finetune_budget,
    make_pretrained_weights,
    write_digits_dataset,
)


def run_demo(work_dir: Path) -> dict:
    started = time.time()
    weights = work_dir / "digits0-5_ResNet18_vd.pdparams"
    print(f"[demo] 1/2 pretraining ResNet18_vd on digits {PRETRAIN_CLASSES} ...", file=sys.stderr)
    pretrain = make_pretrained_weights(weights, work_dir / "pretrain")
    pretrain_seconds = time.time() - started
    print(
        f"[demo] pretrained: top-1 {pretrain['top1']:.3f} in {pretrain_seconds:.0f}s -> {weights}",
        file=sys.stderr,
    )

    data = work_dir / "finetune-data"
    info = write_digits_dataset(data, FINETUNE_CLASSES)
    output = work_dir / "finetune-output"
    settings = digits_settings(data, output, info["numClasses"], **finetune_budget())
    settings.model.pretrained.path = str(weights)
    settings.finetune.freeze = "none"
    print(
        f"[demo] 2/2 finetuning on digits {FINETUNE_CLASSES} ({info['train']} train / {info['val']} val "
        f"images) with finetune-train ...",
        file=sys.stderr,
    )
    tick = time.time()
    code = cli_main(["--settings-json", settings.to_json()])
    result = json.loads((output / "result.json").read_text())
    summary = {
        "exitCode": code,
        "top1": result.get("top1"),
        "top5": result.get("top5"),
        "bestEpoch": result.get("bestEpoch"),
        "epochs": result.get("epochs"),
        "strippedParameters": result.get("strippedParameters"),
        "freeze": {
            k: result.get("freeze", {}).get(k) for k in ("strategy", "decidedBy", "trainableParameters")
        },
        "pretrainTop1": pretrain["top1"],
        "pretrainSeconds": round(pretrain_seconds, 1),
        "finetuneSeconds": round(time.time() - tick, 1),
        "totalSeconds": round(time.time() - started, 1),
        "imagesPerSecond": result.get("imagesPerSecond"),
        "inferenceModel": str(output / "inference"),
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.trainer_alone", description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", help="keep everything here (default: a temporary directory, removed)")
    args = parser.parse_args(argv)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="finetune-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        summary = run_demo(work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    print(
        f"\nFinetuned ResNet18_vd on digits {FINETUNE_CLASSES}: top-1 {summary['top1']:.3f}, "
        f"top-5 {summary['top5']:.3f} (best epoch {summary['bestEpoch']}/{summary['epochs']}); "
        f"stripped {summary['strippedParameters']}; {summary['totalSeconds']:.0f}s in all.",
    )
    return int(summary["exitCode"])


if __name__ == "__main__":
    sys.exit(main())
