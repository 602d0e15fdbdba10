"""One training attempt: ``run(settings) -> TrainerResult``.

The layers, as PaddleClas's engine has them: ``setup.py`` prepares the attempt (device, process
group, data, model, the starting point: the output directory's latest checkpoint, else the
pretrained weights with mismatched tensors stripped and a freeze decision, then optimiser and
schedule); ``loop.py`` trains epoch by epoch, evaluating, checkpointing and keeping the best
model, and exports it at the end; ``state.py`` holds what a checkpoint carries, what the attempt
has established so far and how failures map to exit codes. This module turns an attempt into
its result, also when it fails.

What the outside sees (rank 0 only, ``report.py``): a tqdm progress bar and log lines on stderr,
one ``FINETUNE_PROGRESS`` line per epoch on stdout (and one at the start, epoch 0), and the
result: bounded (``finetune_contract.encode_result``, <= 4096 bytes) in ``output.resultPath``,
in full in ``<output>/result.json``. Failures map to the contract's exit codes; the result then
carries ``reason``, ``message`` and ``exitCode``.

Several GPUs, one node or several: under ``python -m paddle.distributed.launch`` each process
trains on its shard (DataParallel averages gradients) from the start rank 0 sends it
(``ranks.py``); evaluation counts are summed over ranks; only rank 0 writes the output
directory and a successful result. A failure's result goes to the termination message of its
own pod unless another process of that pod wrote one first since this one started: the first
failure is the cause, the rest are ranks stopped because of it (the launcher stops a pod's
other processes when one fails).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from finetune_contract import EXIT_OK, TrainerResult, TrainerSettings, exit_reason

from . import loop, setup
from .report import write_result
from .state import Attempt, failure_of


def run(settings: TrainerSettings) -> TrainerResult:
    """Run one training attempt; returns its result (``exitCode`` 0 on success)."""
    started = time.time()
    dist = setup.Distributed.from_env()  # the rank is known before the process group is joined
    attempt = Attempt(epochs=settings.training.epochs, output_dir=settings.output.dir)
    try:
        with loop.SigtermGuard() as guard:
            dist = setup.setup_distributed(settings.world)
            loop.train(setup.prepare(settings, dist, attempt), guard)
        code, message = EXIT_OK, None
    except Exception as exc:  # noqa: BLE001 - every failure must still produce a result
        failure = failure_of(exc)
        if failure is None:
            # A bug or an unforeseen failure: report it (exit code 1, permanent), then let the
            # traceback through for the log.
            _finish(settings, dist, attempt, 1, f"{type(exc).__name__}: {str(exc)[-500:]}", started)
            raise
        code, message = failure
    return _finish(settings, dist, attempt, code, message, started)


def _finish(
    settings: TrainerSettings,
    dist: setup.Distributed,
    attempt: Attempt,
    code: int,
    message: str | None,
    started: float,
) -> TrainerResult:
    if code != EXIT_OK:
        where = f" on rank {dist.rank}" if dist.world_size > 1 else ""
        print(f"[finetune] failed{where} ({exit_reason(code)}): {message}", file=sys.stderr, flush=True)
    result = attempt.result(code, message, time.time() - started)
    # A failure of one of several processes: the first failure of the pod tells the cause.
    first_failure = started if code != EXIT_OK and dist.world_size > 1 else None
    if dist.is_main:
        write_result(result, Path(settings.output.dir), settings.output.resultPath, first_failure)
    elif code != EXIT_OK:
        write_result(result, None, settings.output.resultPath, first_failure)
    return result
