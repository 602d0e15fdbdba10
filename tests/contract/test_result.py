"""TrainerResult: its JSON round trip, the 4096-byte bound, and decoding hostile input.

The termination message is the pod's to write, so ``decode_result`` must turn anything into
either None or a result whose every value has the documented type and range; ``encode_result``
must stay within Kubernetes' 4096 bytes whatever the result holds.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from finetune_contract import (
    APPLIED_STRATEGIES,
    FIELD_CHECKS,
    LOAD_LISTS,
    RESULT_MAX_BYTES,
    ClassScore,
    FreezeDecision,
    LoadSummary,
    TrainerResult,
    decode_result,
    encode_result,
)
from finetune_contract.result import INT64_MAX, MAX_CLASS_NAME, MAX_DEPTH, MAX_WORST_CLASSES
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.contract.sample import SAMPLE_RESULT
from tests.contract.strategies import anything, hostile, valid_results

# --------------------------------------------------------------------------------------------
# What every decoded result must satisfy
# --------------------------------------------------------------------------------------------
# The documented type and range of each scalar field, stated here independently of the checks
# decode_result uses (the status schema: fractions in [0, 1], int64 counts, no NaN or Infinity).
FRACTIONS = {"top1", "top5", "lastTop1"}
NON_NEGATIVE = {"learningRate", "imagesPerSecond", "durationSeconds"}
COUNTS = {
    "epochs",
    "epochsRun",
    "bestEpoch",
    "numClasses",
    "trainImages",
    "valImages",
    "resumedFromEpoch",
    "corruptImagesSkipped",
}
TEXTS = {"reason": 1024, "message": 32768, "outputDir": 32768}


def test_every_scalar_field_has_a_documented_range():
    assert set(FIELD_CHECKS) == FRACTIONS | NON_NEGATIVE | COUNTS | set(TEXTS) | {"exitCode"}


def in_range(name: str, value: Any) -> bool:
    if name in TEXTS:
        return isinstance(value, str) and len(value) <= TEXTS[name]
    if isinstance(value, bool):
        return False
    if name == "exitCode":
        return isinstance(value, int) and 0 <= value <= 255
    if name in COUNTS:
        return isinstance(value, int) and 0 <= value <= INT64_MAX
    high = 1.0 if name in FRACTIONS else math.inf
    return isinstance(value, float) and math.isfinite(value) and 0 <= value <= high


def assert_well_typed(result: TrainerResult) -> None:
    for name in FIELD_CHECKS:
        value = getattr(result, name)
        assert value is None or in_range(name, value), f"{name}={value!r} is outside its type and range"
    if result.load is not None:
        for key in LOAD_LISTS:
            assert all(isinstance(n, str) for n in getattr(result.load, key)), key
        assert all(k in LOAD_LISTS and 0 <= v <= INT64_MAX for k, v in result.load.truncated.items())
    if result.freeze is not None:
        f = result.freeze
        assert f.strategy in APPLIED_STRATEGIES and 0 <= f.stages <= 4
        assert f.decidedBy in (None, "user", "auto")
        assert f.rule is None or 1 <= f.rule <= 4
        assert f.trainableParameters is None or 0 <= f.trainableParameters <= INT64_MAX
        assert isinstance(f.evidence, dict)
        assert_plain_json(f.evidence, 0)
    if result.worstClasses is not None:
        assert len(result.worstClasses) <= MAX_WORST_CLASSES
        for c in result.worstClasses:
            assert isinstance(c.name, str) and len(c.name) <= MAX_CLASS_NAME
            assert in_range("numClasses", c.label) and in_range("numClasses", c.images)
            assert in_range("top1", c.accuracy)
            assert c.precision is None or in_range("top1", c.precision)
    # What the operator forwards must serialise as standard JSON (no NaN, no Infinity).
    json.dumps(result.to_dict(), allow_nan=False)


def assert_plain_json(value: Any, depth: int) -> None:
    assert depth <= MAX_DEPTH
    if isinstance(value, dict):
        for v in value.values():
            assert_plain_json(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            assert_plain_json(v, depth + 1)
    elif isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        assert -(2**63) <= value <= INT64_MAX
    else:
        assert value is None or isinstance(value, (bool, str))


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------
def test_sample_round_trips_through_the_termination_message():
    text = encode_result(SAMPLE_RESULT)
    assert len(text.encode()) <= RESULT_MAX_BYTES
    assert decode_result(text) == SAMPLE_RESULT


def test_wire_format_is_flat_camel_case_with_the_freeze_decision_nested():
    data = json.loads(encode_result(SAMPLE_RESULT))
    assert data["top1"] == 0.8125 and data["bestEpoch"] == 3 and data["epochsRun"] == 4
    assert data["strippedParameters"] == ["fc.weight", "fc.bias"] and data["strippedParametersCount"] == 2
    assert data["freeze"]["decidedBy"] == "auto" and data["freeze"]["rule"] == 1
    assert "load" not in data and "metrics" not in data and "finetune" not in data


@settings(max_examples=150, deadline=None)
@given(valid_results(text_size=60, list_size=8))
def test_small_results_round_trip_exactly(result: TrainerResult):
    data = result.to_dict()
    data.update({f"{k}Count": len(data[k]) for k in LOAD_LISTS if k in data})
    assume(len(json.dumps(data, separators=(",", ":"))) <= RESULT_MAX_BYTES)  # nothing to cut
    assert decode_result(encode_result(result)) == result


@settings(max_examples=150, deadline=None)
@given(valid_results(text_size=3000, list_size=200, big=True))
def test_the_full_result_json_round_trips_whatever_its_size(result: TrainerResult):
    """<output>/result.json holds the result unbounded; reading it back gives the same result."""
    text = json.dumps(result.to_dict(), indent=1, sort_keys=True)
    assert decode_result(text) == result


# --------------------------------------------------------------------------------------------
# The bound
# --------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(valid_results(text_size=9000, list_size=400, big=True))
def test_encoding_never_exceeds_4096_bytes_and_keeps_every_number(result: TrainerResult):
    text = encode_result(result)
    assert len(text.encode()) <= RESULT_MAX_BYTES
    back = decode_result(text)
    assert back is not None, text[:200]
    for name in FIELD_CHECKS:
        value = getattr(result, name)
        if isinstance(value, (int, float)):
            assert getattr(back, name) == value, name  # numbers always survive the bound
    if result.load is not None and back.load is not None:
        for key in LOAD_LISTS:
            full, kept = getattr(result.load, key), getattr(back.load, key)
            assert kept == full[: len(kept)]  # a prefix, its full length known
            assert back.load.truncated.get(key, len(kept)) == len(full)
    if result.worstClasses:  # the worst first: what is kept is a prefix
        kept = back.worstClasses or []  # None after the last resort
        assert kept == result.worstClasses[: len(kept)]


def test_long_parameter_lists_are_truncated_with_their_counts():
    many = [f"auxiliary_head.some_long_parameter_name_{i:04d}.weight" for i in range(400)]
    result = TrainerResult(exitCode=0, top1=0.5, load=LoadSummary(["fc.weight", "fc.bias"], [], many))
    text = encode_result(result)
    assert len(text.encode()) <= RESULT_MAX_BYTES
    back = decode_result(text)
    assert back.load.truncated == {"unexpectedParameters": 400}
    assert back.load.strippedParameters == ["fc.weight", "fc.bias"]
    assert back.load.unexpectedParameters == many[: len(back.load.unexpectedParameters)]
    assert back.top1 == 0.5


def test_a_long_message_is_shortened_then_the_evidence_dropped():
    result = TrainerResult(
        exitCode=3,
        reason="DataError",
        message="x" * 5000,
        freeze=FreezeDecision("none", evidence={"setting": "finetune.freeze=none"}),
    )
    data = json.loads(encode_result(result))
    assert data["message"].endswith("...") and len(data["message"]) < 4096
    assert data["freeze"]["evidence"] == {"setting": "finetune.freeze=none"}  # the message was enough
    huge_evidence = FreezeDecision("none", evidence={f"k{i}": "v" * 100 for i in range(60)})
    data = json.loads(encode_result(TrainerResult(exitCode=0, freeze=huge_evidence)))
    assert data["freeze"] == {"strategy": "none", "stages": 0, "decidedBy": "user", "rule": None}


def test_the_worst_classes_survive_long_parameter_lists_and_are_cut_last():
    worst = [ClassScore("n" * 64, i, 0.1 * i, 10, 0.5) for i in range(MAX_WORST_CLASSES)]
    many = [f"auxiliary_head.some_long_parameter_name_{i:04d}.weight" for i in range(400)]
    result = TrainerResult(exitCode=0, top1=0.9, load=LoadSummary([], [], many), worstClasses=worst)
    back = decode_result(encode_result(result))
    assert back.worstClasses == worst and back.load.truncated == {"unexpectedParameters": 400}
    # Names of 4-byte characters: the five no longer fit beside a long message, so they are halved.
    wide = [ClassScore("\U0001f33a" * 64, i, 0.5, 10) for i in range(MAX_WORST_CLASSES)]
    result = TrainerResult(exitCode=0, top1=0.9, message="m" * 3000, worstClasses=wide)
    text = encode_result(result)
    back = decode_result(text)
    assert len(text.encode()) <= RESULT_MAX_BYTES
    assert back.worstClasses == wide[: len(back.worstClasses)] and back.top1 == 0.9


def test_last_resort_keeps_the_numbers_and_stays_valid_json():
    result = TrainerResult(exitCode=1, reason="TrainerError", top1=0.25, outputDir="/" + "d" * 9000)
    text = encode_result(result)
    assert len(text.encode()) <= RESULT_MAX_BYTES
    back = decode_result(text)
    assert (back.exitCode, back.reason, back.top1, back.outputDir) == (1, "TrainerError", 0.25, None)


def test_non_finite_numbers_are_never_written():
    result = TrainerResult(exitCode=0, top1=math.nan, imagesPerSecond=math.inf)
    result.freeze = FreezeDecision("none", evidence={"similarity": math.nan, "deep": [math.inf]})
    text = encode_result(result)
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} written"))
    back = decode_result(text)
    assert back.top1 is None and back.imagesPerSecond is None
    assert back.freeze.evidence == {"similarity": None, "deep": [None]}


# --------------------------------------------------------------------------------------------
# Hostile input
# --------------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(hostile)
def test_decoding_hostile_json_yields_only_well_typed_values(data: dict[str, Any]):
    result = decode_result(json.dumps(data))
    assert result is not None  # any JSON object is a (possibly empty) result
    assert_well_typed(result)
    assert len(encode_result(result).encode()) <= RESULT_MAX_BYTES


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | anything.map(json.dumps))
def test_decoding_never_raises(text: str):
    result = decode_result(text)
    assert result is None or isinstance(result, TrainerResult)
    if result is not None:
        assert_well_typed(result)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Traceback (most recent call last):\n  ...\nKeyError: 'x'",  # the kubelet's log fallback
        "[1, 2]",
        '{"top1": 0.5',  # cut short
        '{"a":' + "[" * 100_000 + "]" * 100_000 + "}",  # nested beyond the parser's recursion limit
        '{"epochsRun": ' + "9" * 5000 + "}",  # beyond Python's integer conversion limit
    ],
    ids=["empty", "log-tail", "array", "cut", "deep", "huge-int"],
)
def test_what_is_not_a_result_decodes_to_none(text: str):
    assert decode_result(text) is None


def test_out_of_range_values_and_unknown_shapes_are_dropped():
    text = json.dumps(
        {
            "top1": 1.7,
            "top5": "high",
            "bestEpoch": -1,
            "epochsRun": 3,
            "exitCode": 300,
            "durationSeconds": float("inf"),
            "imagesPerSecond": 10**400,
            "metrics": {"top1": 0.9},  # a nested shape the trainer never writes
            "finetune": {"strippedParameters": ["fc.weight"]},
            "strippedParameters": ["fc.weight", 7, None, {"x": 1}],
            "freeze": {"strategy": "auto", "rule": 1},  # "auto" is a setting, never a decision
        }
    )
    result = decode_result(text)
    assert result == TrainerResult(epochsRun=3, load=LoadSummary(strippedParameters=["fc.weight"]))
    bad_fields = decode_result(json.dumps({"freeze": {"strategy": "stages", "stages": 9, "rule": "small"}}))
    assert bad_fields.freeze == FreezeDecision("stages", stages=0, decidedBy=None, rule=None)


def test_strings_and_lists_are_bounded():
    text = json.dumps(
        {"message": "m" * 100_000, "missingParameters": ["k"] * 10_050, "unexpectedParameters": ["u" * 5000]}
    )
    result = decode_result(text)
    assert len(result.message) == 32768
    assert len(result.load.missingParameters) == 10_000
    assert result.load.unexpectedParameters == ["u" * 1024]
