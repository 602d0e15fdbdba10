"""Several nodes, one training: real processes, real collectives (gloo on CPU), split the way a
multi-node job splits them (``tests/trainer/ranks_kit.py``).

Same training, split differently: 2 nodes x 1 process, 1 node x 2 processes and 1 process, with
the same global batch (24 images: 12 per rank, or 24 in the one process) and seed, train on
the same 24 images in the same order (the sampler shuffles the whole set by seed and epoch and
gives rank r the r-th slice of each global batch; augmentation depends on (seed, epoch, image)),
from the same start (rank 0's, DataParallel broadcasts its weights), with gradients averaged
over the ranks. What is equal, and why:

* 2 x 1 and 1 x 2 run the same arithmetic: the same ranks see the same images and compute the
  same per-rank gradients, and all-reducing two float32 values is one addition (IEEE addition
  is commutative), so where the processes run cannot change a bit. Asserted **exactly equal**:
  losses, accuracies and every final weight.
* 1 process with the full batch equals them when BatchNorm does not normalise with batch
  statistics, here ``freeze: fc-only`` (frozen layers keep BatchNorm in eval mode): the mean of
  two 12-image mean gradients is the 24-image mean gradient, up to float32 rounding from
  summing in another order. Asserted within **1e-6 on the weights** (float32's epsilon is
  1.2e-7 and the weights are O(0.1); measured 1.5e-8) and **1e-5 on the losses** (the history
  keeps 6 decimals).
* With BatchNorm training (``freeze: none``) the two split runs are still exactly equal, but one
  process differs from them from the first step: DataParallel's BatchNorm normalises each rank's
  12 images by their own statistics, one process normalises 24 by theirs. That is the training
  a multi-node job really does (PaddleClas does the same unless SyncBatchNorm is configured),
  so it is asserted as a difference well beyond the tolerance above.

Each epoch is one step (24 images, global batch 24), so the per-epoch history is the per-step
loss curve. The start is a finetune: stand-in pretrained weights for 5 classes, the classifier
head stripped and trained anew for 3.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time

import numpy as np
import pytest
from finetune_contract import PROGRESS_PREFIX, decode_result
from finetune_trainer import checkpoint

from tests.operator import crd
from tests.trainer.ranks_kit import Run, calibrated_weights, finish, run_split, start
from tests.trainer.tiny_data import write_list_dataset

pytestmark = pytest.mark.slow

EPOCHS = 6
WEIGHT_TOLERANCE = 1e-6
LOSS_TOLERANCE = 1e-5
GRACE_SECONDS = crd.node("spec.runPolicy.terminationGracePeriodSeconds")["default"]


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    data = write_list_dataset(root / "data", classes=3, train_per_class=8)  # 24 train, 6 val images
    weights = calibrated_weights(root / "pretrained.pdparams", root / "pretraining-data")
    settings = {
        "dataset.root": data,
        "dataset.imageSize": 16,
        "dataset.resizeShort": 16,
        "model.architecture": "ResNet18_vd",
        "model.pretrained.path": weights,
        "finetune.freeze": "fc-only",
        "training.epochs": EPOCHS,
        "training.warmupEpochs": 1,
        "training.learningRate": 0.01,
        "training.numWorkers": 0,
        "training.seed": 7,
        "cacheDir": root / "cache",
    }
    return root, settings


SPLITS = {"2 nodes x 1": (2, 1, 12), "1 node x 2": (1, 2, 12), "1 process": (1, 1, 24)}


def three_splits(root, settings, prefix: str) -> dict[str, Run]:
    runs = {}
    for label, (nnodes, nproc, batch) in SPLITS.items():
        name = f"{prefix}-{nnodes}x{nproc}"
        runs[label] = run = run_split(root, name, nnodes, nproc, {**settings, "training.batchSize": batch})
        assert run.codes == [0] * nnodes, run.explain()
    return runs


@pytest.fixture(scope="module")
def fc_only_runs(setting):
    root, settings = setting
    return three_splits(root, settings, "fc")


def curve(run: Run) -> list[tuple[float, float, float]]:
    return [(h["trainLoss"], h["valLoss"], h["top1"]) for h in run.state(EPOCHS)["history"]]


def weight_gap(a: Run, b: Run) -> float:
    wa, wb = a.weights(EPOCHS), b.weights(EPOCHS)
    assert wa.keys() == wb.keys()
    return max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)


def test_same_training_split_differently_gives_the_same_loss_curve(fc_only_runs):
    two_nodes, two_procs, one = (fc_only_runs[k] for k in SPLITS)
    assert "batch 12 x 2 process(es)" in two_nodes.logs[0]
    assert "batch 24 x 1 process(es)" in one.logs[0]
    reference = curve(two_nodes)
    assert len(reference) == EPOCHS
    losses = [loss for loss, _, _ in reference]
    assert losses[-1] < losses[0] / 2, f"the finetune did not learn: {reference}"  # a real curve
    assert reference[-1][2] == 1.0  # three colours are easy once the head has learned them

    assert curve(two_procs) == reference  # exactly: the same arithmetic, placed differently
    assert weight_gap(two_nodes, two_procs) == 0.0

    for ours, theirs in zip(curve(one), reference, strict=True):
        assert ours[0] == pytest.approx(theirs[0], abs=LOSS_TOLERANCE)
        assert ours[1] == pytest.approx(theirs[1], abs=LOSS_TOLERANCE)
        assert ours[2] == theirs[2]
    assert weight_gap(two_nodes, one) <= WEIGHT_TOLERANCE

    # Only rank 0 writes: the other node's termination message stays empty on success.
    assert not two_nodes.result_paths[1].exists() or not two_nodes.result_paths[1].read_text()
    done = decode_result(two_nodes.result_paths[0].read_text())
    assert done.exitCode == 0 and done.epochsRun == EPOCHS and done.trainImages == 24
    assert json.loads((two_nodes.out / "result.json").read_text())["top1"] == done.top1
    assert done.freeze.strategy == "fc-only" and "fc.weight" in done.load.strippedParameters


def test_with_batchnorm_training_the_ranks_normalise_their_own_batches(setting):
    root, settings = setting
    runs = three_splits(root, {**settings, "finetune.freeze": "none"}, "bn")
    two_nodes, two_procs, one = (runs[k] for k in SPLITS)
    assert curve(two_procs) == curve(two_nodes)
    assert weight_gap(two_nodes, two_procs) == 0.0
    first_step = abs(curve(one)[0][0] - curve(two_nodes)[0][0])
    assert first_step > 100 * LOSS_TOLERANCE, "BatchNorm over 24 images should differ from 2 x 12"


def _wait_for_epoch(run: Run, epoch: int, timeout: float = 600) -> None:
    log = run.out.parent / f"{run.name}-logs-node0" / "workerlog.0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file():
            lines = [x for x in log.read_text().splitlines() if x.startswith(PROGRESS_PREFIX)]
            if any(json.loads(x[len(PROGRESS_PREFIX) :])["epoch"] >= epoch for x in lines):
                return
        time.sleep(0.2)
    raise AssertionError(f"rank 0 never finished epoch {epoch}")


def test_sigterm_to_one_node_stops_every_rank_and_the_rerun_resumes_from_rank_0s_checkpoint(
    setting, fc_only_runs
):
    """SIGTERM reaches only node 1 (as when one pod is deleted): the ranks agree to stop at the
    same step, rank 0 checkpoints it, both exit 143. The rerun resumes every rank from that
    checkpoint (weights, momentum, schedule) and ends where the run that never stopped ended."""
    root, settings = setting
    settings = {**settings, "training.batchSize": 12}
    procs, run = start(root, "stopped", 2, 1, settings)
    try:
        _wait_for_epoch(run, 2)
        procs[1].send_signal(signal.SIGTERM)
    finally:
        finish(procs, run, timeout=300)
    stopped = decode_result(run.result_paths[0].read_text())
    assert stopped.reason == "Interrupted", run.explain()
    assert 2 <= stopped.epochsRun < EPOCHS, run.explain()
    assert all(code != 0 for code in run.codes)

    rerun = run_split(root, "stopped", 2, 1, settings)
    assert rerun.codes == [0, 0], rerun.explain()
    done = decode_result(rerun.result_paths[0].read_text())
    assert done.exitCode == 0 and done.epochsRun == EPOCHS
    assert done.resumedFromEpoch == stopped.epochsRun
    reference = fc_only_runs["2 nodes x 1"]
    assert weight_gap(rerun, reference) <= WEIGHT_TOLERANCE
    ours, theirs = curve(rerun), curve(reference)
    for epoch, (a, b) in enumerate(zip(ours, theirs, strict=True), start=1):
        assert a[1] == pytest.approx(b[1], abs=LOSS_TOLERANCE), f"epoch {epoch}: {ours} vs {theirs}"
        assert a[2] == b[2]


def test_when_rank_0_cannot_start_every_rank_fails_with_its_reason(setting):
    root, settings = setting
    broken = {"model.pretrained.path": root / "no-such-weights.pdparams"}  # rank 0 alone reads it
    run = run_split(root, "no-weights", 2, 1, {**settings, "training.batchSize": 12}, per_node=[broken, {}])
    assert all(code != 0 for code in run.codes), run.explain()
    first, second = (decode_result(p.read_text()) for p in run.result_paths)
    assert first.reason == "PretrainedWeightsError", run.explain()
    assert second.reason == first.reason and second.exitCode == first.exitCode
    assert second.message.startswith("rank 0 could not start: ")
    assert "no-such-weights.pdparams" in second.message


def test_a_rank_that_sees_other_data_stops_every_rank(setting):
    root, settings = setting
    other = root / "other-data"
    if not other.exists():
        shutil.copytree(settings["dataset.root"], other)
        lines = (other / "train_list.txt").read_text().splitlines(keepends=True)
        (other / "train_list.txt").write_text("".join(lines[:-1]))  # one image fewer
    run = run_split(
        root,
        "other-data",
        2,
        1,
        {**settings, "training.batchSize": 12},
        per_node=[{}, {"dataset.root": other}],
    )
    assert all(code != 0 for code in run.codes), run.explain()
    first, second = (decode_result(p.read_text()) for p in run.result_paths)
    assert first.reason == second.reason == "DataError", run.explain()
    assert "rank 1 reads a different dataset than rank 0: 23 training" in second.message
    assert "1 of 2 ranks cannot read the dataset rank 0 reads" in first.message
    assert not (run.out / "checkpoints").exists()  # nothing was trained


def test_a_world_the_launchers_did_not_start_stops_every_rank_before_training(setting):
    """The settings say 3 nodes (the job), 2 launchers started: every rank exits 2 naming it."""
    root, settings = setting
    three = {**settings, "training.batchSize": 12, "world.nodes": 3}
    run = run_split(root, "wrong-world", 2, 1, three)
    assert all(code != 0 for code in run.codes), run.explain()  # the launcher's own exit code
    for path in run.result_paths:
        result = decode_result(path.read_text())
        assert (result.exitCode, result.reason) == (2, "InvalidSettings"), run.explain()
        assert "world: the job asks for 3 node(s) x 1 process(es) = 3, but 2 process(es)" in result.message
    assert not (run.out / "checkpoints").exists()


def _wait_for_log(run: Run, pattern: str, timeout: float = 600) -> None:
    log = run.out.parent / f"{run.name}-logs-node0" / "workerlog.0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and re.search(pattern, log.read_text()):
            return
        time.sleep(0.05)
    raise AssertionError(f"rank 0 never logged {pattern!r}")


def test_sigterm_during_evaluation_stops_every_rank_at_the_next_batch_and_the_rerun_matches(setting):
    """SIGTERM reaches node 1 while the ranks evaluate, on shards of different lengths (1201
    validation images: 601 and 600, 151 and 150 batches of 4). The ranks agree on it before
    every batch, the shorter shard answering in the round it has no batch for, so every rank
    abandons the pass at the same batch: rank 0 checkpoints the trained epoch (not evaluated)
    and both exit well inside the grace period, long before the evaluation would have ended.
    The rerun evaluates that epoch first and ends where a run that never stopped ends."""
    root, settings = setting
    data = root / "long-val"
    if not data.exists():
        write_list_dataset(data, classes=3, train_per_class=4, val_per_class=401)
        lines = (data / "val_list.txt").read_text().splitlines(keepends=True)
        (data / "val_list.txt").write_text("".join(lines[:1201]))
    settings = {
        **settings,
        "dataset.root": data,
        "dataset.imageSize": 32,
        "dataset.resizeShort": 32,
        "training.batchSize": 4,  # 12 training images, 6 a rank: 2 steps an epoch
        "training.epochs": 2,
    }
    procs, run = start(root, "eval-stopped", 2, 1, settings)
    try:
        _wait_for_log(run, r"\] epoch 1/2: evaluating on 1201 images")
        time.sleep(0.5)
        sent = time.monotonic()
        procs[1].send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=GRACE_SECONDS)  # past it, the kubelet would SIGKILL: the test fails
        elapsed = time.monotonic() - sent
    finally:
        finish(procs, run, timeout=60)
    assert all(code != 0 for code in run.codes), run.explain()
    messages = [decode_result(path.read_text()).message for path in run.result_paths]
    pattern = r"during evaluation \(abandoned after (\d+) of (\d+) batches\)"
    abandoned = [re.search(pattern, m) for m in messages]
    assert all(abandoned), run.explain()
    assert abandoned[0][1] == abandoned[1][1], messages  # the same batch on both ranks
    assert int(abandoned[0][1]) < int(abandoned[0][2]) == 151, messages
    latest = checkpoint.find_latest(run.out)
    assert latest.name == "epoch-0000-step00002", run.explain()  # trained (2 steps), not evaluated
    rank_0_log = (root / "eval-stopped-logs-node0" / "workerlog.0").read_text()
    assert "interrupted: saved epoch 1 step 2" in rank_0_log

    reference = run_split(root, "eval-reference", 2, 1, settings)
    assert reference.codes == [0, 0], reference.explain()
    rerun = run_split(root, "eval-stopped", 2, 1, settings)
    assert rerun.codes == [0, 0], rerun.explain()
    done = decode_result(rerun.result_paths[0].read_text())
    assert done.exitCode == 0 and done.epochsRun == 2 and done.resumedFromEpoch == 0
    final, expected = rerun.state(2), reference.state(2)
    assert final["globalStep"] == expected["globalStep"] == 4  # no step trained twice
    for ours, theirs in zip(final["history"], expected["history"], strict=True):
        assert ours["valImages"] == theirs["valImages"] == 1201  # every image once, both shards
        assert ours["trainLoss"] == pytest.approx(theirs["trainLoss"], abs=LOSS_TOLERANCE)
        assert ours["valLoss"] == pytest.approx(theirs["valLoss"], abs=LOSS_TOLERANCE)
        assert ours["top1"] == theirs["top1"]
    wa, wb = rerun.weights(2), reference.weights(2)
    assert max(float(np.abs(wa[k] - wb[k]).max()) for k in wa) <= WEIGHT_TOLERANCE
    print(
        f"\n2 ranks, SIGTERM to node 1 during evaluation: abandoned after {abandoned[0][1]} of 151 "
        f"batches on both ranks, checkpoint {latest.name}, both exited {elapsed:.1f}s after SIGTERM "
        f"(grace {GRACE_SECONDS}s)"
    )
