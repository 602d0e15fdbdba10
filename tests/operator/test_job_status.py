"""What the job's status becomes (job_status): conditions, the diff-only update, and the trainer's
result and progress mapped into status fields the CRD's status schema accepts."""

from __future__ import annotations

import json
from typing import Any

from finetune_contract import ClassScore, LoadSummary, TrainerResult, decode_result, encode_result
from finetune_operator.job_status import (
    StatusUpdate,
    finetune_from_result,
    metrics_from_result,
    phase_conditions,
    progress_at_success,
    progress_from_record,
    same_progress,
    set_condition,
    success_message,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.contract.sample import SAMPLE_RESULT
from tests.contract.strategies import hostile, wrong
from tests.operator import crd

NOW = "2026-01-01T00:00:00Z"


def test_condition_transition_time_moves_only_on_flip():
    conds = set_condition([], "Running", True, "Running", "go", "2026-01-01T00:00:00Z", 1)
    again = set_condition(conds, "Running", True, "Running", "still", "2026-01-01T00:05:00Z", 2)
    assert again[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert (again[0]["message"], again[0]["observedGeneration"]) == ("still", 2)
    flipped = set_condition(again, "Running", False, "Completed", "done", "2026-01-01T00:09:00Z", 2)
    assert (flipped[0]["status"], flipped[0]["lastTransitionTime"]) == ("False", "2026-01-01T00:09:00Z")


def test_phase_conditions_one_true_the_rest_false():
    conds = phase_conditions(None, "Running", "Running", "training", "2026-01-01T00:00:00Z", 4)
    assert [(c["type"], c["status"]) for c in conds] == [
        ("Running", "True"),
        ("Succeeded", "False"),
        ("Failed", "False"),
        ("Suspended", "False"),
    ]
    assert all(c["observedGeneration"] == 4 and c["reason"] and "lastTransitionTime" in c for c in conds)
    done = phase_conditions(conds, "Succeeded", "Completed", "top-1 0.9", "2026-01-01T01:00:00Z", 4)
    by_type = {c["type"]: c for c in done}
    assert by_type["Succeeded"]["status"] == "True"
    assert by_type["Succeeded"]["lastTransitionTime"] == "2026-01-01T01:00:00Z"
    assert by_type["Running"]["status"] == "False"
    assert by_type["Running"]["lastTransitionTime"] == "2026-01-01T01:00:00Z"
    assert by_type["Failed"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"  # stayed False


def test_status_update_patches_only_changes():
    old: dict[str, Any] = {}
    update = StatusUpdate().transition(old, "Running", "Running", "training", "2026-01-01T00:00:00Z", 1)
    first = update.changes(old)
    assert first["phase"] == "Running" and first["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    same = StatusUpdate().transition(first, "Running", "Running", "training", "2026-01-01T00:01:00Z", 1)
    assert same.changes(first) == {}  # nothing to patch: no API call
    cleared = StatusUpdate(fields={"nextAttemptTime": None})
    assert cleared.changes({"nextAttemptTime": "2026-01-01T00:00:00Z"}) == {"nextAttemptTime": None}


# --------------------------------------------------------------------------------------------
# The trainer's result
# --------------------------------------------------------------------------------------------
def test_metrics_and_finetune_report_from_the_result():
    assert metrics_from_result(SAMPLE_RESULT) == {
        "top1": SAMPLE_RESULT.top1,
        "top5": SAMPLE_RESULT.top5,
        "bestEpoch": SAMPLE_RESULT.bestEpoch,
        "epochsRun": SAMPLE_RESULT.epochsRun,
        "durationSeconds": SAMPLE_RESULT.durationSeconds,
        "imagesPerSecond": SAMPLE_RESULT.imagesPerSecond,
        "worstClasses": [
            {"name": "sweet pea", "label": 3, "accuracy": 0.5, "images": 8, "precision": 0.571429},
            {"name": "pink primrose", "label": 0, "accuracy": 0.75, "images": 8, "precision": 0.857143},
            {
                "name": "hard-leaved pocket orchid",
                "label": 1,
                "accuracy": 0.875,
                "images": 8,
                "precision": 1.0,
            },
        ],
    }
    finetune = finetune_from_result(SAMPLE_RESULT)
    assert finetune["strippedParameters"] == ["fc.weight", "fc.bias"]
    assert finetune["missingParameters"] == finetune["unexpectedParameters"] == []
    freeze = SAMPLE_RESULT.freeze
    assert finetune["freeze"] == {
        "strategy": freeze.strategy,
        "decidedBy": freeze.decidedBy,
        "rule": freeze.rule,
        "trainableParameters": freeze.trainableParameters,
        "evidence": freeze.evidence,
    }
    assert success_message(SAMPLE_RESULT, "") == (
        "top-1 0.8125 (best epoch 3); worst classes: sweet pea 0.50, pink primrose 0.75, "
        "hard-leaved pocket orchid 0.88"
    )


def test_the_success_message_names_only_classes_with_errors():
    perfect = ClassScore("tulip", 2, 1.0, 5, 1.0)
    result = TrainerResult(top1=0.99, bestEpoch=2, worstClasses=[ClassScore("rose", 1, 0.8, 5, 1.0), perfect])
    assert success_message(result, "") == "top-1 0.9900 (best epoch 2); worst classes: rose 0.80"
    result.worstClasses = [perfect]
    assert success_message(result, "") == "top-1 0.9900 (best epoch 2)"


def test_an_empty_result_reports_nothing():
    empty = TrainerResult()
    assert metrics_from_result(empty) == {} and finetune_from_result(empty) == {}
    assert success_message(empty, "") == "the trainer finished but reported no result"
    assert success_message(empty, "bye") == "bye"
    assert progress_at_success(empty, {"epoch": 3, "epochs": 5}, NOW) is None


def test_values_the_status_schema_would_reject_are_dropped():
    result = decode_result(
        json.dumps(
            {
                "top1": 1.7,
                "top5": "high",
                "bestEpoch": -1,
                "epochsRun": 3,
                "durationSeconds": float("nan"),
                "freeze": {
                    "strategy": "none",
                    "rule": "small",
                    "decidedBy": "x",
                    "trainableParameters": 2**64,
                },
            }
        )
    )
    assert metrics_from_result(result) == {"epochsRun": 3}
    assert finetune_from_result(result) == {"freeze": {"strategy": "none", "evidence": {}}}
    progress = progress_from_record({"epoch": 2, "epochs": 5, "top1": float("nan"), "loss": 0.5}, "t")
    assert progress == {"epoch": 2, "epochs": 5, "loss": 0.5, "display": "2/5", "updateTime": "t"}
    progress = progress_from_record({"epoch": 2**64, "loss": float("inf"), "imagesPerSecond": -3}, "t")
    assert progress == {"updateTime": "t"}


STATUS = crd.node("status")


def status_errors(fields: dict[str, Any]) -> list[str]:
    return crd.schema_errors({k: v for k, v in fields.items() if v}, STATUS, "status")


@settings(max_examples=300, deadline=None)
@given(hostile, st.none() | st.dictionaries(st.sampled_from(["epoch", "epochs", "top1", "loss"]), wrong))
def test_whatever_the_pod_wrote_the_status_fits_the_schema(data: dict[str, Any], previous: Any):
    """Hostile termination messages and progress lines never produce a status the API server
    would reject (wrong type, out of range, non-finite, int64 overflow) or prune."""
    result = decode_result(encode_result(decode_result(json.dumps(data))))
    assert result is not None
    progress = progress_at_success(result, progress_from_record(previous or {}, NOW), NOW)
    fields = {
        "metrics": metrics_from_result(result),
        "finetune": finetune_from_result(result),
        "progress": progress,
        "message": success_message(result, ""),
    }
    assert status_errors(fields) == []
    json.dumps(fields, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["epoch", "epochs", "top1", "top5", "loss", "imagesPerSecond"]), wrong)
)
def test_whatever_a_progress_line_says_the_status_fits_the_schema(record: dict[str, Any]):
    progress = progress_from_record(record, NOW)
    assert status_errors({"progress": progress}) == []
    json.dumps(progress, allow_nan=False)


def test_the_schema_check_itself_catches_what_the_api_server_rejects():
    assert status_errors({"metrics": {"top1": 1.5}})
    assert status_errors({"metrics": {"bestEpoch": 2**63}})
    assert status_errors({"finetune": {"freeze": {"rule": 5}}})
    assert status_errors({"progress": {"loss": float("inf")}})
    assert status_errors({"metrics": {"accuracy": 0.5}})  # would be pruned
    worst = {"name": "rose", "label": 1, "accuracy": 0.5, "images": 4}
    assert not status_errors({"metrics": {"worstClasses": [worst]}})
    assert status_errors({"metrics": {"worstClasses": [worst] * 6}})  # maxItems
    assert status_errors({"metrics": {"worstClasses": [{**worst, "name": "x" * 65}]}})  # maxLength
    assert status_errors({"metrics": {"worstClasses": [{**worst, "accuracy": 1.5}]}})
    assert status_errors({"metrics": {"worstClasses": [{"name": "rose"}]}})  # required fields
    assert not status_errors({"finetune": {"freeze": {"evidence": {"anything": [1, {"x": None}]}}}})


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------
def test_progress_display_and_comparison():
    progress = progress_from_record({"epoch": 7, "epochs": 20, "top1": 0.81, "loss": 0.6}, NOW)
    assert progress == {
        "epoch": 7,
        "epochs": 20,
        "top1": 0.81,
        "loss": 0.6,
        "display": "7/20",
        "updateTime": NOW,
    }
    later = dict(progress, updateTime="2026-01-01T00:01:00Z")
    assert same_progress(progress, later)
    assert not same_progress(progress, dict(later, epoch=8))


def test_progress_at_success_counts_the_epochs_the_trainer_reports():
    last_poll = progress_from_record({"epoch": 3, "epochs": 4, "top1": 0.7, "loss": 0.4}, "earlier")
    progress = progress_at_success(SAMPLE_RESULT, last_poll, NOW)
    assert progress == {
        "epoch": 4,
        "epochs": 4,
        "display": "4/4",
        "top1": SAMPLE_RESULT.top1,  # the best epoch's, as in status.metrics
        "top5": SAMPLE_RESULT.top5,
        "loss": 0.4,  # the last line's training loss stays
        "updateTime": NOW,
    }


def test_progress_at_success_without_the_epoch_count():
    result = TrainerResult(epochsRun=6, top1=0.5, load=LoadSummary())
    assert progress_at_success(result, {"epoch": 5, "epochs": 6}, NOW)["display"] == "6/6"  # from the line
    assert progress_at_success(result, None, NOW) == {
        "epoch": 6,
        "display": "6",
        "top1": 0.5,
        "updateTime": NOW,
    }
