"""What a pod's state means for its attempt (pod_state.observe_pod)."""

from finetune_contract import TrainerResult, encode_result
from finetune_operator.pod_state import observe_pod

from tests.contract.sample import SAMPLE_RESULT


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


def test_succeeded_decodes_the_termination_message():
    outcome = observe_pod(
        pod("Succeeded", terminated={"exitCode": 0, "message": encode_result(SAMPLE_RESULT)})
    )
    assert (outcome.phase, outcome.reason, outcome.exit_code) == ("Succeeded", "Completed", 0)
    assert outcome.result == SAMPLE_RESULT


def test_succeeded_without_a_result():
    outcome = observe_pod(pod("Succeeded", terminated={"exitCode": 0, "message": "done\n"}))
    assert (outcome.phase, outcome.result, outcome.message) == ("Succeeded", None, "")


def test_permanent_exit_code_with_trainer_message():
    text = encode_result(TrainerResult(message="val_list.txt line 7: image flowers/x.jpg does not exist"))
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
    text = encode_result(TrainerResult(exitCode=69, reason="DownloadFailed", message="https://x: timed out"))
    outcome = observe_pod(pod("Failed", terminated={"exitCode": 1, "message": text}))
    assert (outcome.reason, outcome.exit_code, outcome.transient) == ("DownloadFailed", 69, True)


def test_oom_killed_is_transient():
    outcome = observe_pod(pod("Failed", terminated={"exitCode": 137, "reason": "OOMKilled"}))
    assert (outcome.reason, outcome.transient) == ("OOMKilled", True)


def test_a_container_the_runtime_cannot_start_fails_permanently_with_the_kubelets_words():
    message = 'failed to create containerd task: exec: "finetune-train": executable file not found in $PATH'
    terminated = {"exitCode": 128, "reason": "StartError", "message": message}
    outcome = observe_pod(pod("Failed", terminated=terminated))
    assert (outcome.phase, outcome.reason, outcome.transient) == ("Failed", "StartError", False)
    assert outcome.message == message and outcome.exit_code == 128


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
