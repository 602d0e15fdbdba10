"""Hypothesis strategies for trainer results: the ones a trainer could write, and hostile JSON
(the termination message is the pod's to write)."""

from __future__ import annotations

from typing import Any

from finetune_contract import (
    APPLIED_STRATEGIES,
    FIELD_CHECKS,
    LOAD_LISTS,
    MAX_WORST_CLASSES,
    ClassScore,
    FreezeDecision,
    LoadSummary,
    TrainerResult,
)
from finetune_contract.result import INT64_MAX, MAX_CLASS_NAME
from hypothesis import strategies as st

SCALARS = list(FIELD_CHECKS)
finite = st.floats(allow_nan=False, allow_infinity=False)
counts = st.integers(0, INT64_MAX)
scalar_json = st.none() | st.booleans() | st.integers(-(2**63), INT64_MAX) | finite | st.text(max_size=20)
# Evidence as decide_auto writes it: numbers, strings, flags, a nested object or list.
evidence = st.dictionaries(
    st.text(max_size=12),
    scalar_json
    | st.lists(scalar_json, max_size=4)
    | st.dictionaries(st.text(max_size=8), scalar_json, max_size=4),
    max_size=8,
)


def valid_results(
    text_size: int = 200, list_size: int = 40, big: bool = False
) -> st.SearchStrategy[TrainerResult]:
    """Results the trainer could write: every value of its type and range. ``big``: texts and
    lists are often near their maximum size (left alone, Hypothesis keeps them short)."""
    maybe = st.none

    def texts(size: int) -> st.SearchStrategy[str]:
        short = st.text(max_size=min(size, 200))
        if not big:
            return short
        # Repeated, since Hypothesis will not draw kilobytes of text for one value.
        return short | st.tuples(st.text(min_size=1, max_size=40), st.integers(1, size)).map(
            lambda t: (t[0] * t[1])[:size]
        )

    def lists(size: int) -> st.SearchStrategy[list[str]]:
        short = st.lists(st.text(max_size=60), max_size=min(size, 40))
        if not big:
            return short
        return short | st.tuples(
            st.lists(st.text(min_size=1, max_size=50), min_size=1, max_size=8), st.integers(1, size)
        ).map(lambda t: [f"{name}.{i}" for i in range(t[1]) for name in t[0]][:size])

    return st.builds(
        TrainerResult,
        exitCode=maybe() | st.integers(0, 255),
        reason=maybe() | st.text(max_size=40),
        message=maybe() | texts(text_size),
        epochs=maybe() | counts,
        epochsRun=maybe() | counts,
        bestEpoch=maybe() | counts,
        top1=maybe() | st.floats(0, 1),
        top5=maybe() | st.floats(0, 1),
        lastTop1=maybe() | st.floats(0, 1),
        numClasses=maybe() | counts,
        trainImages=maybe() | counts,
        valImages=maybe() | counts,
        learningRate=maybe() | st.floats(0, 1e30),
        resumedFromEpoch=maybe() | counts,
        imagesPerSecond=maybe() | st.floats(0, 1e12),
        corruptImagesSkipped=maybe() | counts,
        durationSeconds=maybe() | st.floats(0, 1e9),
        outputDir=maybe() | texts(text_size),
        load=maybe()
        | st.builds(
            LoadSummary,
            strippedParameters=lists(list_size),
            missingParameters=lists(list_size),
            unexpectedParameters=lists(list_size),
        ),
        freeze=maybe()
        | st.builds(
            FreezeDecision,
            strategy=st.sampled_from(APPLIED_STRATEGIES),
            stages=st.integers(0, 4),
            decidedBy=st.sampled_from(("user", "auto")),
            rule=maybe() | st.integers(1, 4),
            evidence=evidence,
            trainableParameters=maybe() | counts,
        ),
        worstClasses=maybe()
        | st.lists(
            st.builds(
                ClassScore,
                name=texts(MAX_CLASS_NAME) if big else st.text(max_size=MAX_CLASS_NAME),
                label=counts,
                accuracy=st.floats(0, 1),
                images=counts,
                precision=maybe() | st.floats(0, 1),
            ),
            max_size=MAX_WORST_CLASSES,
        ),
    )


# Anything JSON can carry, including what Python's json module writes and reads beyond the
# standard (NaN, Infinity) and integers far beyond int64.
anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=25,
)


def repeated(item: st.SearchStrategy[Any], times: int) -> st.SearchStrategy[list[Any]]:
    """A drawn item repeated up to ``times`` times: big values Hypothesis would not draw whole."""
    return st.tuples(item, st.integers(1, times)).map(lambda t: [t[0]] * t[1])


# A value where the contract expects a number, a string or a list: anything of the wrong type
# or range, huge integers, NaN and Infinity, long strings, lists of mixed items.
wrong = st.one_of(
    st.floats(),
    st.integers(),
    st.integers(INT64_MAX - 5, 2**70) | st.integers(-(2**70), -1),
    st.floats(-2.0, 3.0),
    st.booleans(),
    st.none(),
    st.text(max_size=40),
    repeated(st.text(min_size=1, max_size=20), 3000).map("".join),  # long strings
    st.lists(st.text(max_size=200) | anything, max_size=40),
    repeated(st.text(max_size=40) | anything, 500),  # long lists
    anything,
)
FREEZE_KEYS = ["strategy", "stages", "decidedBy", "rule", "evidence", "trainableParameters"]
hostile_freeze = st.fixed_dictionaries(
    {},
    optional={
        **{key: wrong for key in FREEZE_KEYS},
        "strategy": st.sampled_from(APPLIED_STRATEGIES) | wrong,
        "decidedBy": st.sampled_from(("user", "auto")) | wrong,
        "evidence": anything | st.dictionaries(st.text(max_size=5), anything, max_size=30),
    },
)
RESULT_KEYS = SCALARS + list(LOAD_LISTS) + [f"{k}{s}" for k in LOAD_LISTS for s in ("Count", "Truncated")]
CLASS_KEYS = ["name", "label", "accuracy", "images", "precision"]
hostile_class = st.fixed_dictionaries(
    {},
    optional={
        **{key: wrong for key in CLASS_KEYS},
        "name": st.text(max_size=200) | wrong,
        "label": counts | wrong,
        "accuracy": st.floats(0, 1) | wrong,
        "images": counts | wrong,
    },
)
hostile = st.tuples(
    st.fixed_dictionaries({}, optional={key: wrong for key in RESULT_KEYS}),
    st.fixed_dictionaries(
        {},
        optional={
            "freeze": hostile_freeze | wrong,
            "worstClasses": st.lists(hostile_class | wrong, max_size=12) | wrong,
        },
    ),
    st.dictionaries(st.sampled_from(["metrics", "finetune"]) | st.text(max_size=12), wrong, max_size=4),
).map(lambda parts: {**parts[2], **parts[0], **parts[1]})
