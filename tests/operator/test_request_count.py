"""What a job's life costs the API server, counted by the operator itself against the real local
control plane (`finetune_api_requests_total`: every request its reconciler sends; kopf's watch
streams aside, which are per operator, not per job).

The reconciler reads jobs and pods from the watch cache, so a life with a watch that keeps up
sends no GET of the job and no LIST of pods, only its writes; and the watch event of the
operator's own status write costs no pass (`finetune_watch_events_total{new="false"}`).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from finetune_contract import encode_result

from tests.contract.sample import SAMPLE_RESULT
from tests.operator.cluster_jobs import apply, job_manifest, phase_is, wait_job
from tests.operator.test_operator_lifecycle import VOLUME, metric_value

JOBS = 6


@pytest.fixture
def quiet_operator(cluster: Any, namespace: str, crd_installed: str, tmp_path: Any) -> Any:
    """The operator with progress reads rare (one per 10 minutes), so the count is the life's."""
    from localcluster import OperatorProcess

    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    proc = OperatorProcess(
        cluster, [namespace], tmp_path / "operator.log", extra=["--progress-poll-interval", "600"]
    )
    proc.start()
    yield proc
    proc.stop()


def counts(text: str, metric: str, label: str) -> dict[str, float]:
    """A counter's samples by the `label` (and verb for requests)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            labels = dict(part.split("=", 1) for part in line.split("{", 1)[1].split("}")[0].split(","))
            labels = {k: v.strip('"') for k, v in labels.items()}
            key = " ".join(labels[k] for k in sorted(labels))
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def live_to_success(cluster: Any, namespace: str, operator: Any, names: list[str]) -> None:
    """The jobs are created and run, and their pods succeed with the trainer's result."""
    for name in names:
        apply(cluster, namespace, job_manifest(name, VOLUME))
    for name in names:
        wait_job(cluster, operator, namespace, name, phase_is("Running"), "Running")
    for name in names:
        cluster.drive_pod(namespace, f"{name}-attempt-1", "Succeeded", message=encode_result(SAMPLE_RESULT))
    for name in names:
        wait_job(cluster, operator, namespace, name, phase_is("Succeeded", "Failed"), "finished")


@pytest.mark.cluster
def test_a_job_life_reads_nothing_and_its_own_status_writes_cost_no_pass(cluster, namespace, quiet_operator):
    live_to_success(cluster, namespace, quiet_operator, [f"count-{i}" for i in range(JOBS)])

    text = quiet_operator.metrics()
    requests = counts(text, "finetune_api_requests_total", "verb")
    passes = counts(text, "finetune_reconcile_passes_total", "reads")
    events = counts(text, "finetune_watch_events_total", "new")
    print(f"{JOBS} job lives: requests {requests}; passes {passes}; watch events {events}")

    # Keys: "<resource> <verb>".
    reads = {k: v for k, v in requests.items() if k.endswith((" get", " list")) and "/log" not in k}
    fresh = passes.get("fresh", 0.0)
    # Reads only from passes sent back to the API server (a cache that lagged): each costs a GET
    # and a LIST. None are expected here; a rare race may cause one.
    assert sum(reads.values()) <= 2 * fresh, (reads, passes)
    assert fresh <= JOBS // 3, passes
    # The watch streams (counted apart): one list of each collection at start, then watches.
    streams = counts(text, "finetune_watch_requests_total", "verb")
    assert streams.get("finetunejobs list") == 1 and streams.get("pods list") == 1, streams
    assert streams.get("finetunejobs watch", 0) >= 1 and streams.get("pods watch", 0) >= 1, streams
    # Per life: one pod, and the status written when it was created, ran and succeeded.
    assert requests.get("pods create") == JOBS
    patches = requests.get("finetunejobs/status patch", 0)
    assert JOBS * 2 <= patches <= JOBS * 4, requests
    # The status writes come back as watch events that call for no pass; the job events that do
    # are the jobs' creations.
    assert events.get("job false", 0.0) >= patches, events
    assert events.get("job true", 0.0) == JOBS, events
    # Passes: the job's creation, then its pod's changes (created, scheduled, running, done).
    assert sum(passes.values()) <= JOBS * 6, passes
    assert metric_value(text, "finetune_job_outcomes_total", phase="Succeeded") == JOBS


@pytest.mark.cluster
def test_a_restarted_operator_posts_each_recent_closing_event_once_and_the_api_keeps_one(
    cluster, namespace, quiet_operator
):
    """The closing Event follows the status (controller.py), so a new process posts it again for
    each job that finished within the Event TTL: one POST per job, once, and still one Event."""
    names = [f"again-{i}" for i in range(JOBS)]
    live_to_success(cluster, namespace, quiet_operator, names)
    quiet_operator.stop()
    quiet_operator.start()
    deadline = time.monotonic() + 60
    while True:  # every job gets a pass at start
        requests = counts(quiet_operator.metrics(), "finetune_api_requests_total", "verb")
        if requests.get("events create", 0) >= JOBS or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    time.sleep(3)  # and no more come
    requests = counts(quiet_operator.metrics(), "finetune_api_requests_total", "verb")
    assert requests.get("events create") == JOBS, requests
    # No status write (a pass may be sent back to the API server for a lagging cache: a GET).
    assert not {k for k in requests if k.startswith("finetunejobs/status")}, requests
    listed = json.loads(cluster.kubectl("get", "events", "-o", "json", namespace=namespace).stdout)["items"]
    completed = sorted(e["involvedObject"]["name"] for e in listed if e["reason"] == "Completed")
    assert completed == sorted(names)
