"""The per-class numbers (per_class.py, numpy only): the confusion matrix, its sparse form, the
per-class table, the worst classes and the display order, checked against direct counting over
generated predictions."""

from __future__ import annotations

import numpy as np
from finetune_contract import MAX_WORST_CLASSES
from finetune_contract.result import MAX_CLASS_NAME
from finetune_trainer import per_class
from hypothesis import given, settings
from hypothesis import strategies as st


@st.composite
def predictions(draw, max_classes: int = 12):
    """(labels, predictions, class count) of a validation set."""
    classes = draw(st.integers(1, max_classes))
    size = draw(st.integers(0, 60))
    labels = draw(st.lists(st.integers(0, classes - 1), min_size=size, max_size=size))
    predicted = draw(st.lists(st.integers(0, classes - 1), min_size=size, max_size=size))
    return np.array(labels, np.int64), np.array(predicted, np.int64), classes


@settings(max_examples=200, deadline=None)
@given(predictions())
def test_the_matrix_counts_every_image_once_in_its_true_row_and_predicted_column(case):
    labels, predicted, classes = case
    matrix = per_class.confusion_matrix(labels, predicted, classes)
    assert matrix.shape == (classes, classes) and matrix.dtype == np.int64
    assert matrix.sum() == len(labels)
    assert matrix.sum(axis=1).tolist() == np.bincount(labels, minlength=classes).tolist()
    assert matrix.sum(axis=0).tolist() == np.bincount(predicted, minlength=classes).tolist()
    assert np.trace(matrix) == int((labels == predicted).sum())
    for t, p in zip(labels, predicted, strict=True):
        assert matrix[t, p] >= 1
    # The sparse form the checkpoint keeps is the same matrix, with one entry per non-zero cell.
    sparse = per_class.to_sparse(matrix)
    assert len(sparse) == np.count_nonzero(matrix) <= len(labels)
    np.testing.assert_array_equal(per_class.from_sparse(sparse, classes), matrix)


@settings(max_examples=200, deadline=None)
@given(predictions())
def test_the_table_agrees_with_counting_by_hand(case):
    labels, predicted, classes = case
    names = [f"class {c}" for c in range(classes)]
    table = per_class.class_table(per_class.confusion_matrix(labels, predicted, classes), names)
    assert [row["label"] for row in table] == list(range(classes))
    for c, row in enumerate(table):
        mine, called = labels == c, predicted == c
        assert row["images"] == mine.sum() and row["predicted"] == called.sum()
        assert row["correct"] == (mine & called).sum()
        if mine.sum():
            assert row["accuracy"] == round((mine & called).sum() / mine.sum(), 6)
        else:
            assert row["accuracy"] is None
        if called.sum():
            assert row["precision"] == round((mine & called).sum() / called.sum(), 6)
        else:
            assert row["precision"] is None
        mistaken = [(int(((labels == c) & (predicted == p)).sum()), p) for p in range(classes) if p != c]
        expected = [p for n, p in sorted(mistaken, key=lambda x: (-x[0], x[1])) if n > 0][:3]
        assert [x["label"] for x in row["confusedWith"]] == expected


@settings(max_examples=200, deadline=None)
@given(predictions(max_classes=20))
def test_worst_classes_are_the_lowest_accuracies_with_a_mistake_worst_first(case):
    labels, predicted, classes = case
    names = [f"{'very long flower name ' * 5}{c}" for c in range(classes)]
    matrix = per_class.confusion_matrix(labels, predicted, classes)
    worst = per_class.worst_classes(matrix, names)
    table = per_class.class_table(matrix, names)
    wrong = [row for row in table if row["images"] > row["correct"]]
    assert len(worst) == min(MAX_WORST_CLASSES, len(wrong))
    assert [w.accuracy for w in worst] == sorted(w.accuracy for w in worst)
    cutoff = max((w.accuracy for w in worst), default=None)
    for row in wrong:  # nobody left out is worse than the last one named
        if row["label"] not in {w.label for w in worst}:
            assert row["accuracy"] >= cutoff
    for w in worst:
        row = table[w.label]
        assert (w.accuracy, w.images, w.precision) == (row["accuracy"], row["images"], row["precision"])
        assert w.name == names[w.label][:MAX_CLASS_NAME]


def test_worst_classes_break_ties_by_evidence_and_skip_perfect_classes():
    # class 0: 1 of 2 right; class 1: 2 of 4 right (same accuracy, more images: named first);
    # class 2: all right; class 3: no validation images.
    labels = [0, 0, 1, 1, 1, 1, 2, 2]
    predicted = [0, 2, 1, 1, 0, 0, 2, 2]
    matrix = per_class.confusion_matrix(np.array(labels), np.array(predicted), 4)
    worst = per_class.worst_classes(matrix, ["a", "b", "c", "d"])
    assert [(w.name, w.accuracy, w.images) for w in worst] == [("b", 0.5, 4), ("a", 0.5, 2)]
    assert worst[1].precision == round(1 / 3, 6)  # "a" predicted 3 times, right once
    assert per_class.worst_classes(np.eye(3, dtype=np.int64), ["x", "y", "z"]) == []


@settings(max_examples=100, deadline=None)
@given(predictions(max_classes=30))
def test_the_display_order_is_a_permutation_that_puts_confused_pairs_together(case):
    labels, predicted, classes = case
    matrix = per_class.confusion_matrix(labels, predicted, classes)
    order = per_class.display_order(matrix)
    assert sorted(order) == list(range(classes))


def test_the_display_order_groups_classes_mistaken_for_each_other():
    matrix = np.eye(8, dtype=np.int64) * 10
    matrix[1, 6] = matrix[6, 1] = 3  # 1 and 6 are often confused
    matrix[3, 5] = 1  # 3 once mistaken for 5
    order = per_class.display_order(matrix)
    assert abs(order.index(1) - order.index(6)) == 1
    assert abs(order.index(3) - order.index(5)) == 1
    assert order[:2] in ([1, 6], [6, 1])  # the group with most errors first
    assert order[4:] == [0, 2, 4, 7]  # then the classes without errors, in label order


def test_the_report_holds_the_table_the_matrix_and_the_most_confused_pairs():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 1, 0, 0, 2])
    matrix = per_class.confusion_matrix(labels, predicted, 3)
    report = per_class.report(matrix, ["rose", "tulip", "iris"], epoch=4, top1=4 / 7)
    assert report["valImages"] == 7 and report["epoch"] == 4
    assert report["matrix"] == matrix.tolist()
    assert report["mostConfused"][0] == {"true": "iris", "predicted": "rose", "images": 2}
    assert [w["name"] for w in report["worstClasses"]] == ["iris", "rose"]
    assert sum(row["correct"] for row in report["classes"]) == 4
