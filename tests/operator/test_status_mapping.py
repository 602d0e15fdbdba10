"""Pod state -> attempt outcome, and the job's status fields and conditions."""

from finetune_contract import encode_result
from finetune_operator.status import (
    StatusUpdate,
    finetune_from_result,
    metrics_from_result,
    observe_pod,
    phase_conditions,
    progress_from_record,
    same_progress,
    set_condition,
)


def pod(phase, terminated=None, waiting=None, running=False, reason=None, message=None, conditions=None):
    state = {}
    if terminated is not None:
        state["terminated"] = terminated
    if waiting is not None:
        state["waiting"] = waiting
    if running:
        state["running"] = {"startedAt": "2026-01-01T00:00:05Z"}
    status = {"phase": phase, "conditions": conditions or []}
    if state:
        status["containerStatuses"] = [{"name": "trainer", "state": state}]
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return {
        "metadata": {"name": "j-attempt-1", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": status,
    }


RESULT = {
    "top1": 0.9402,
    "top5": 0.9912,
    "bestEpoch": 18,
    "epochsRun": 20,
    "durationSeconds": 181.5,
    "imagesPerSecond": 412.0,
    "strippedParameters": ["fc.weight", "fc.bias"],
    "missingParameters": [],
    "unexpectedParameters": [],
    "freeze": {
        "strategy": "fc-only",
        "decidedBy": "auto",
        "rule": 1,
        "trainableParameters": 208998,
    },
}


def test_unschedulable_pending_carries_the_scheduler_message():
    message = "0/5 nodes are available: 5 Insufficient nvidia.com/gpu."
    outcome = observe_pod(
        pod(
            "Pending",
            conditions=[
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
            ],
        )
    )
    assert (outcome.phase, outcome.reason, outcome.message) == ("Pending", "Unschedulable", message)
    assert outcome.since == "2026-01-01T00:00:00Z"


def test_image_pull_backoff_is_pending_with_the_kubelet_reason():
    outcome = observe_pod(
        pod("Pending", waiting={"reason": "ImagePullBackOff", "message": "Back-off pulling image x"})
    )
    assert (outcome.phase, outcome.reason, outcome.message) == (
        "Pending",
        "ImagePullBackOff",
        "Back-off pulling image x",
    )


def test_running():
    assert observe_pod(pod("Running", running=True)).phase == "Running"


def test_succeeded_parses_the_termination_message():
    outcome = observe_pod(pod("Succeeded", terminated={"exitCode": 0, "message": encode_result(RESULT)}))
    assert outcome.phase == "Succeeded"
    assert outcome.result["top1"] == 0.9402
    assert metrics_from_result(outcome.result) == {
        "top1": 0.9402,
        "top5": 0.9912,
        "bestEpoch": 18,
        "epochsRun": 20,
        "durationSeconds": 181.5,
        "imagesPerSecond": 412.0,
    }
    finetune = finetune_from_result(outcome.result)
    assert finetune["strippedParameters"] == ["fc.weight", "fc.bias"]
    assert finetune["freeze"] == RESULT["freeze"]


def test_permanent_exit_code_with_trainer_message():
    text = encode_result({"message": "val_list.txt line 7: image flowers/x.jpg does not exist"})
    outcome = observe_pod(pod("Failed", terminated={"exitCode": 3, "reason": "Error", "message": text}))
    assert (outcome.reason, outcome.exit_code, outcome.transient) == ("DataError", 3, False)
    assert outcome.message == "val_list.txt line 7: image flowers/x.jpg does not exist"


def test_log_fallback_message_and_unknown_code():
    outcome = observe_pod(
        pod("Failed", terminated={"exitCode": 1, "message": "Traceback ...\nKeyError: 'x'"})
    )
    assert (outcome.reason, outcome.transient) == ("TrainerError", False)
    assert outcome.message.endswith("KeyError: 'x'")
    bare = observe_pod(pod("Failed", terminated={"exitCode": 2}))
    assert (bare.reason, bare.message) == ("InvalidSettings", "the trainer exited with code 2")


def test_transient_exit_codes():
    assert observe_pod(pod("Failed", terminated={"exitCode": 75})).transient
    interrupted = observe_pod(pod("Failed", terminated={"exitCode": 143}))
    assert (interrupted.reason, interrupted.transient) == ("Interrupted", True)
    download = observe_pod(pod("Failed", terminated={"exitCode": 69}))
    assert (download.reason, download.transient) == ("DownloadFailed", True)


def test_trainer_reported_exit_code_wins_over_the_launchers():
    # paddle.distributed.launch exits 1 when a rank fails; the result JSON keeps the trainer's code.
    text = encode_result({"exitCode": 69, "reason": "DownloadFailed", "message": "https://x: timed out"})
    outcome = observe_pod(pod("Failed", terminated={"exitCode": 1, "message": text}))
    assert (outcome.reason, outcome.exit_code, outcome.transient) == ("DownloadFailed", 69, True)


def test_oom_killed_is_transient():
    outcome = observe_pod(pod("Failed", terminated={"exitCode": 137, "reason": "OOMKilled"}))
    assert (outcome.reason, outcome.transient) == ("OOMKilled", True)


def test_evicted_and_preempted_pods_are_transient():
    evicted = observe_pod(
        pod(
            "Failed",
            reason="Evicted",
            message="The node was low on resource: memory.",
            terminated={"exitCode": 137},
        )
    )
    assert (evicted.reason, evicted.transient, evicted.message) == (
        "Evicted",
        True,
        "The node was low on resource: memory.",
    )
    preempted = observe_pod(
        pod(
            "Failed",
            terminated={"exitCode": 143},
            conditions=[
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "PreemptionByScheduler",
                    "message": "Preempted in order to admit critical pod",
                }
            ],
        )
    )
    assert (preempted.reason, preempted.transient) == ("Preempted", True)


def test_pod_deadline_exceeded_is_permanent():
    outcome = observe_pod(pod("Failed", reason="DeadlineExceeded", message="Pod was active too long"))
    assert (outcome.reason, outcome.transient) == ("DeadlineExceeded", False)


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
    old = {}
    update = StatusUpdate().transition(old, "Running", "Running", "training", "2026-01-01T00:00:00Z", 1)
    first = update.changes(old)
    assert first["phase"] == "Running" and first["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    same = StatusUpdate().transition(first, "Running", "Running", "training", "2026-01-01T00:01:00Z", 1)
    assert same.changes(first) == {}  # nothing to patch: no API call
    cleared = StatusUpdate(fields={"nextAttemptTime": None})
    assert cleared.changes({"nextAttemptTime": "2026-01-01T00:00:00Z"}) == {"nextAttemptTime": None}


def test_values_the_status_schema_would_reject_are_dropped():
    result = {
        "top1": 1.7,
        "top5": "high",
        "bestEpoch": -1,
        "epochsRun": 3,
        "freeze": {"rule": "small", "decidedBy": "x"},
    }
    assert metrics_from_result(result) == {"epochsRun": 3}
    assert finetune_from_result(result) == {"freeze": {}}
    progress = progress_from_record({"epoch": 2, "epochs": 5, "top1": float("nan"), "loss": 0.5}, "t")
    assert progress == {"epoch": 2, "epochs": 5, "loss": 0.5, "display": "2/5", "updateTime": "t"}


def test_progress_display_and_comparison():
    progress = progress_from_record(
        {"epoch": 7, "epochs": 20, "top1": 0.81, "loss": 0.6}, "2026-01-01T00:00:00Z"
    )
    assert progress == {
        "epoch": 7,
        "epochs": 20,
        "top1": 0.81,
        "loss": 0.6,
        "display": "7/20",
        "updateTime": "2026-01-01T00:00:00Z",
    }
    later = dict(progress, updateTime="2026-01-01T00:01:00Z")
    assert same_progress(progress, later)
    assert not same_progress(progress, dict(later, epoch=8))
