"""How each class fares on the validation set: the confusion matrix and what follows from it.

The loop counts a confusion matrix during every evaluation (on the device, summed over ranks;
``loop.evaluate``) and keeps the best epoch's in the run state, sparse (``to_sparse``), so a
resumed attempt still has it. From it come the per-class report (``<output>/per_class.json``:
accuracy, i.e. recall, precision, F1 and the classes each is mistaken for), the few worst
classes in the result (``finetune_contract.ClassScore``) and the order the confusion-matrix
picture shows the classes in. No Paddle here: numpy only.

Rows are true classes, columns predicted ones: ``matrix[t, p]`` counts validation images of class
``t`` predicted as ``p``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from finetune_contract import MAX_WORST_CLASSES, ClassScore
from finetune_contract.result import MAX_CLASS_NAME

# Beyond this many classes no matrix is counted (10^6 cells already; the report is skipped).
MAX_CONFUSION_CLASSES = 1024
CONFUSED_WITH = 3  # per class, the classes it is most often mistaken for, in the report


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true, predicted) pairs, ``[num_classes, num_classes]`` int64."""
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def to_sparse(matrix: np.ndarray) -> list[list[int]]:
    """``[[true, predicted, count], ...]`` of the non-zero cells: at most one entry per validation
    image, so a checkpoint's state stays small whatever the class count."""
    rows, cols = np.nonzero(matrix)
    return [[int(t), int(p), int(matrix[t, p])] for t, p in zip(rows, cols, strict=True)]


def from_sparse(entries: list[list[int]], num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p, count in entries:
        matrix[t, p] += count
    return matrix


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise numerator / denominator, NaN where the denominator is 0."""
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def class_table(matrix: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """One row per class: images, correct, accuracy (recall), precision, F1 (None where undefined:
    no images, or never predicted) and the classes it is most often mistaken for."""
    matrix = np.asarray(matrix, np.int64)
    correct = np.diag(matrix)
    images, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    recall, precision = _ratio(correct, images), _ratio(correct, predicted)
    f1 = _ratio(2 * precision * recall, precision + recall)
    rows = []
    for c, name in enumerate(names):
        wrong = matrix[c].copy()
        wrong[c] = 0
        confused = [
            {"label": int(p), "name": names[p], "images": int(wrong[p])}
            for p in np.argsort(-wrong, kind="stable")[:CONFUSED_WITH]
            if wrong[p] > 0
        ]
        rows.append(
            {
                "label": c,
                "name": name,
                "images": int(images[c]),
                "correct": int(correct[c]),
                "accuracy": _rounded(recall[c]),
                "precision": _rounded(precision[c]),
                "f1": _rounded(f1[c]),
                "predicted": int(predicted[c]),
                "confusedWith": confused,
            }
        )
    return rows


def _rounded(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 6)


def worst_classes(matrix: np.ndarray, names: list[str], count: int = MAX_WORST_CLASSES) -> list[ClassScore]:
    """The ``count`` classes with the lowest accuracy (ties: more images first, then the lower
    precision), among those with validation images and at least one wrong; worst first (empty
    when every image was right)."""
    table = [row for row in class_table(matrix, names) if row["images"] > row["correct"]]
    table.sort(
        key=lambda r: (
            r["accuracy"],
            -r["images"],
            r["precision"] if r["precision"] is not None else -1.0,
            r["label"],
        )
    )
    return [
        ClassScore(
            name=r["name"][:MAX_CLASS_NAME],
            label=r["label"],
            accuracy=r["accuracy"],
            images=r["images"],
            precision=r["precision"],
        )
        for r in table[:count]
    ]


def most_confused(matrix: np.ndarray, count: int = 12) -> list[tuple[int, int, int]]:
    """The largest off-diagonal cells: (true, predicted, images), largest first."""
    off = np.asarray(matrix, np.int64).copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:count]
    pairs = [(int(i // off.shape[1]), int(i % off.shape[1])) for i in flat]
    return [(t, p, int(off[t, p])) for t, p in pairs if off[t, p] > 0]


def display_order(matrix: np.ndarray) -> list[int]:
    """A class order that puts classes mistaken for each other next to each other: single-linkage
    clusters of the symmetric confusion counts (largest first), the clusters with most errors
    first, then the classes without errors in label order. The picture of a 102-class matrix then
    shows its errors as blocks near the diagonal instead of dots scattered over the square."""
    n = matrix.shape[0]
    symmetric = np.asarray(matrix, np.int64) + np.asarray(matrix, np.int64).T
    np.fill_diagonal(symmetric, 0)
    members: dict[int, list[int]] = {c: [c] for c in range(n)}
    root = list(range(n))

    def find(c: int) -> int:
        while root[c] != c:
            root[c] = root[root[c]]
            c = root[c]
        return c

    rows, cols = np.nonzero(np.triu(symmetric, 1))
    for i in np.argsort(-symmetric[rows, cols], kind="stable"):
        a, b = find(int(rows[i])), find(int(cols[i]))
        if a != b:  # join the two chains end to end, the pair that joins them side by side
            root[b] = a
            members[a] = members[a] + members.pop(b)
    errors = symmetric.sum(axis=1)  # mistakes each class is part of, either way round
    clusters = sorted(members.values(), key=lambda group: (-int(errors[group].sum()), min(group)))
    return [c for group in clusters for c in group]


def report(matrix: np.ndarray, names: list[str], epoch: int, top1: float) -> dict[str, Any]:
    """``per_class.json``: the best epoch's per-class table, its worst classes and its matrix."""
    table = class_table(matrix, names)
    return {
        "epoch": epoch,
        "top1": top1,
        "valImages": int(np.asarray(matrix).sum()),
        "note": "accuracy is the share of a class's validation images predicted as it (its recall); "
        "matrix[true][predicted] counts validation images",
        "worstClasses": [c.to_dict() for c in worst_classes(matrix, names)],
        "mostConfused": [
            {"true": names[t], "predicted": names[p], "images": n} for t, p, n in most_confused(matrix)
        ],
        "classes": table,
        "matrix": np.asarray(matrix, np.int64).tolist(),
    }
