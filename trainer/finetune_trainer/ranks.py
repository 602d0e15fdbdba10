"""Several processes, one run: what rank 0 decides and the other ranks follow.

Under ``paddle.distributed.launch`` (one node or several, ``--nnodes``) every rank runs this
trainer on its shard of the data. Rank 0 alone reads the output directory and the pretrained
weights: it finds the starting point (the latest checkpoint, else the pretrained weights and a
freeze decision) and sends it to the other ranks over the process group, so every rank starts
from rank 0's state: the run state (epoch and step, schedule position, freeze decision, best
metrics) and the optimiser's moments through this module, the weights through DataParallel,
which broadcasts rank 0's parameters and buffers when it wraps the model. Two consequences: the
other ranks never need the output volume (a ReadWriteOnce claim works for a job across nodes),
and they can never resume from different checkpoints (say, one that rank 0 of an attempt being
deleted wrote a moment later). Every rank reads the dataset itself; a rank that sees different
data (a node-local volume with other contents) stops the run with a DataError instead of
training on something else.

Failures during the start are shared: when rank 0 cannot start (a checkpoint refused, weights
that do not download), the other ranks exit with the same exit code instead of waiting for it.
During training, the ranks agree after every step on the mean loss (a non-finite loss stops all
of them at the same step) and on whether any of them received SIGTERM (all stop at the same
step, and rank 0 checkpoints it; a rank that stopped alone would leave the others blocked in the
next gradient all-reduce); during evaluation they agree on SIGTERM before every batch, padding
the shorter shards with rounds that only answer (``loop.evaluate``). Everything sent is JSON or
plain arrays: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import paddle
import paddle.distributed as pdist

from .data import DataError, DatasetIndex
from .state import TrainerFailure

if TYPE_CHECKING:
    from .setup import Distributed


# --------------------------------------------------------------------------------------------
# Sending values from rank 0
# --------------------------------------------------------------------------------------------
def broadcast_json(value: Any, dist: Distributed) -> Any:
    """Rank 0's ``value`` (plain JSON) on every rank; the others pass anything (ignored)."""
    if dist.is_main:
        data = np.frombuffer(json.dumps(value, separators=(",", ":")).encode(), dtype=np.uint8)
        size = paddle.to_tensor(np.array([data.size], dtype=np.int64))
    else:
        size = paddle.to_tensor(np.zeros([1], dtype=np.int64))
    pdist.broadcast(size, src=0)
    length = int(size.numpy()[0])
    buffer = paddle.to_tensor(data.copy() if dist.is_main else np.zeros([length], dtype=np.uint8))
    pdist.broadcast(buffer, src=0)
    return json.loads(buffer.numpy().tobytes().decode())


def _describe(tree: Any, arrays: list[np.ndarray]) -> Any:
    """The JSON skeleton of a state dict: arrays become ``{"__array__": i, ...}`` (appended to
    ``arrays``), everything else must be plain JSON."""
    if isinstance(tree, dict):
        return {str(k): _describe(v, arrays) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_describe(v, arrays) for v in tree]
    if isinstance(tree, paddle.Tensor):
        tree = tree.numpy()
    if isinstance(tree, np.ndarray):
        arrays.append(np.ascontiguousarray(tree))
        return {"__array__": len(arrays) - 1, "shape": list(tree.shape), "dtype": str(tree.dtype)}
    if isinstance(tree, np.generic):
        return tree.item()
    return tree


def _rebuild(skeleton: Any, arrays: list[paddle.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__array__" in skeleton:
            return arrays[skeleton["__array__"]]
        return {k: _rebuild(v, arrays) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [_rebuild(v, arrays) for v in skeleton]
    return skeleton


def broadcast_tree(tree: Any, dist: Distributed) -> Any:
    """Rank 0's state dict (nested dicts of arrays, tensors and plain values, such as an
    optimiser's) on every rank, arrays as Paddle tensors; the others pass None."""
    arrays: list[np.ndarray] = []
    skeleton = broadcast_json(_describe(tree, arrays) if dist.is_main else None, dist)
    specs: list[dict[str, Any]] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if "__array__" in node:
                specs.append(node)
                return
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    collect(skeleton)
    received: list[paddle.Tensor] = [None] * len(specs)  # type: ignore[list-item]
    for spec in sorted(specs, key=lambda s: s["__array__"]):
        i = spec["__array__"]
        local = arrays[i] if dist.is_main else np.zeros(spec["shape"], dtype=spec["dtype"])
        tensor = paddle.to_tensor(local)
        pdist.broadcast(tensor, src=0)
        received[i] = tensor
    return _rebuild(skeleton, received)


def sum_over_ranks(values: list[float], dist: Distributed) -> list[float]:
    """Element-wise sums over all ranks (float64); the values themselves with one rank."""
    if dist.world_size <= 1:
        return list(values)
    totals = paddle.to_tensor(np.asarray(values, dtype=np.float64))
    pdist.all_reduce(totals)
    return [float(v) for v in totals.numpy()]


def max_over_ranks(value: int, dist: Distributed) -> int:
    """The largest of the ranks' ``value``; the value itself with one rank."""
    if dist.world_size <= 1:
        return value
    largest = paddle.to_tensor(np.asarray([value], dtype=np.int64))
    pdist.all_reduce(largest, op=pdist.ReduceOp.MAX)
    return int(largest.numpy()[0])


# --------------------------------------------------------------------------------------------
# The start: rank 0 decides, the others follow
# --------------------------------------------------------------------------------------------
def data_fingerprint(index: DatasetIndex, root: str) -> str:
    """sha256 of what the run trains and evaluates on: every sample's path (relative to the
    dataset root) and label, the class count and names."""
    digest = hashlib.sha256(f"{index.num_classes}\n{json.dumps(index.label_names)}\n".encode())
    for split, samples in (("train", index.train), ("val", index.val)):
        for sample in samples:
            digest.update(f"{split}\t{os.path.relpath(sample.path, root)}\t{sample.label}\n".encode())
    return digest.hexdigest()


class RankZeroFailed(TrainerFailure):
    """Rank 0 could not start: the other ranks end with its exit code and message."""


def start_together(
    dist: Distributed,
    data_root: str,
    lead: Callable[[], tuple[DatasetIndex, dict[str, Any], Any]],
    follow: Callable[[dict[str, Any]], DatasetIndex],
    failure_of: Callable[[Exception], tuple[int, str]],
) -> tuple[DatasetIndex, dict[str, Any], Any]:
    """Agree on the start. Rank 0 runs ``lead()`` -> (data index, the start as plain JSON,
    optimiser state or None); the others get that JSON and run ``follow(start) -> data index``
    (their own reading of the dataset, and the start applied to their model). Returns (index,
    start, optimiser state) on every rank. A failure of rank 0 reaches every rank (as
    ``RankZeroFailed`` on the others); a rank whose data differs from rank 0's, or that cannot
    read it, stops every rank with a DataError."""
    if dist.is_main:
        try:
            index, start, optimizer_state = lead()
            header = {"start": start, "data": data_fingerprint(index, data_root)}
            header["counts"] = [len(index.train), len(index.val), index.num_classes]
        except Exception as exc:
            code, message = failure_of(exc)
            broadcast_json({"failure": [code, message]}, dist)
            raise
        broadcast_json(header, dist)
        own_problem: Exception | None = None
    else:
        header = broadcast_json(None, dist)
        if "failure" in header:
            code, message = header["failure"]
            raise RankZeroFailed(code, f"rank 0 could not start: {message}")
        optimizer_state = None
        own_problem = None
        try:
            index = follow(header["start"])
            if data_fingerprint(index, data_root) != header["data"]:
                own_problem = DataError(
                    f"rank {dist.rank} reads a different dataset than rank 0: {len(index.train)} "
                    f"training / {len(index.val)} validation images, {index.num_classes} classes here, "
                    f"{header['counts'][0]} / {header['counts'][1]}, {header['counts'][2]} on rank 0: "
                    "every node must mount the same dataset"
                )
        except DataError as exc:
            own_problem = DataError(f"rank {dist.rank}: {exc}")
    # Every rank learns whether any rank could not read the same data, and they stop together.
    (problems,) = sum_over_ranks([1.0 if own_problem is not None else 0.0], dist)
    if own_problem is not None:
        raise own_problem
    if problems:
        raise DataError(
            f"{int(problems)} of {dist.world_size} ranks cannot read the dataset rank 0 reads "
            "(their logs say why): every node must mount the same dataset"
        )
    if header["start"].get("optimizer"):
        optimizer_state = broadcast_tree(optimizer_state, dist)
    return index, header["start"], optimizer_state
