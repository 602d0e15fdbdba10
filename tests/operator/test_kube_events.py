"""Events that a pass repeats after a crash: Kube.job_event names an Event after the job's version,
the Event's place in its pass and the Event itself, so the API server keeps one (409
AlreadyExists, taken as done); the closing Event (Succeeded or Failed) after the job's uid and
reason alone, as a restart posts it again from the status. The fake API does the same
(fake_kube.py); here the real API server shows that it does."""

from __future__ import annotations

import json
import re
from typing import Any

from finetune_operator.kube import Kube, event_name

from tests.operator import crd

DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def job(name: str = "flowers", uid: str = "u-1", version: str = "7") -> dict[str, Any]:
    return {"metadata": {"namespace": "team-a", "name": name, "uid": uid, "resourceVersion": version}}


def test_the_same_event_on_the_same_version_of_the_job_has_the_same_name():
    one = event_name(job(), "Normal", "Retrying", "attempt 2 in 10s")
    assert one == event_name(job(), "Normal", "Retrying", "attempt 2 in 10s")
    others = {
        event_name(job(version="8"), "Normal", "Retrying", "attempt 2 in 10s"),  # a later transition
        event_name(job(uid="u-2"), "Normal", "Retrying", "attempt 2 in 10s"),  # a recreated job
        event_name(job(), "Normal", "Retrying", "attempt 3 in 20s"),
        event_name(job(), "Warning", "Retrying", "attempt 2 in 10s"),
        event_name(job(), "Normal", "Suspended", "attempt 2 in 10s"),
        event_name(job(), "Normal", "Retrying", "attempt 2 in 10s", seq=1),
    }
    assert one not in others and len(others) == 6


def test_names_sort_as_the_events_were_posted():
    posted = [
        event_name(job(version="9"), "Normal", "PodCreated", "z"),
        event_name(job(version="10"), "Normal", "Running", "a"),  # a later version: after, as text too
        event_name(job(version="10"), "Normal", "PodMissing", "m", seq=1),
        event_name(job(version="10"), "Normal", "Retrying", "b", seq=2),
        event_name(job(version="123456789012"), "Normal", "Completed", "a"),
    ]
    assert sorted(posted) == posted


def test_the_closing_event_has_one_name_per_job_and_reason_whatever_version_or_message():
    first = event_name(job(version="10"), "Normal", "Completed", "top-1 0.93 after 3 epochs", closing=True)
    # The repeat after a restart reads a later version and the status's (shortened) message.
    assert first == event_name(job(version="11"), "Normal", "Completed", "top-1 0.93 after...", closing=True)
    assert first == event_name(job(version=""), "Normal", "Completed", "", closing=True)
    others = {
        event_name(job(uid="u-2"), "Normal", "Completed", "", closing=True),  # a recreated job
        event_name(job(), "Warning", "BackoffLimitExceeded", "", closing=True),
        event_name(job(), "Warning", "DeadlineExceeded", "", closing=True),
        event_name(job(version="10"), "Normal", "Completed", "top-1 0.93 after 3 epochs"),
    }
    assert first not in others and len(others) == 4


def test_the_closing_event_sorts_after_the_jobs_other_events():
    others = [
        event_name(job(version=v), "Normal", "Retrying", "b", seq=255) for v in ("1", "99999999999999999999")
    ]
    closing = event_name(job(version="1"), "Normal", "Completed", "a", closing=True)
    assert sorted([closing, *others])[-1] == closing
    assert len(closing) <= 253 and DNS_SUBDOMAIN.fullmatch(closing)


def test_an_event_read_without_a_version_is_always_posted():
    report = {"metadata": {"namespace": "team-a", "name": "flowers", "uid": "u-1"}}
    first = event_name(report, "Warning", "ReconcileError", "failed 3 times")
    assert first != event_name(report, "Warning", "ReconcileError", "failed 3 times")


def test_an_event_name_is_a_valid_object_name_whatever_the_jobs_name():
    for name in ("a", "flowers", "x" * 253, "a" * 215 + "-b" + "c" * 36, "a" * 214 + ".b" * 20):
        for version in ("1", "99999999999999999999", ""):
            made = event_name(job(name, version=version), "Normal", "Completed", "done", seq=300)
            assert len(made) <= 253 and DNS_SUBDOMAIN.fullmatch(made), made
            assert made.startswith(name[:200])


def test_the_api_server_keeps_one_event_when_a_pass_posts_it_again(
    cluster: Any, namespace: str, crd_installed: str
) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(crd.minimal_job("twice")), namespace=namespace)
    api_client = cluster.api_client()
    kube = Kube(api_client)
    current = kube.get_job(namespace, "twice")
    now = "2026-01-01T00:00:00Z"
    kube.job_event(current, "Normal", "Retrying", "attempt 2 in 10s", now)
    kube.job_event(current, "Normal", "Retrying", "attempt 2 in 10s", now)  # no error: already there
    kube.job_event(current, "Normal", "Retrying", "attempt 3 in 20s", now, seq=1)
    listed = cluster.kubectl(
        "get", "events", "-o", "json", "--field-selector=involvedObject.name=twice", namespace=namespace
    )
    events = json.loads(listed.stdout)["items"]
    # One of each, listed (by name) in the order they were posted.
    assert [e["message"] for e in events] == ["attempt 2 in 10s", "attempt 3 in 20s"]
    api_client.close()


def test_the_api_server_keeps_one_closing_event_when_a_restart_posts_it_again(
    cluster: Any, namespace: str, crd_installed: str
) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(crd.minimal_job("closing")), namespace=namespace)
    api_client = cluster.api_client()
    kube = Kube(api_client)
    current = kube.get_job(namespace, "closing")
    now = "2026-01-01T00:00:00Z"
    kube.job_event(current, "Normal", "Retrying", "attempt 2 in 10s", now)
    kube.job_event(current, "Normal", "Completed", "top-1 0.93 after 3 epochs", now, closing=True)
    kube.patch_job_status(namespace, "closing", {"phase": "Succeeded"})
    later = kube.get_job(namespace, "closing")
    assert later["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]
    # A restarted operator repeats it from the status: a later version, the shortened message.
    kube.job_event(later, "Normal", "Completed", "top-1 0.93 ...", now, closing=True)
    listed = cluster.kubectl(
        "get", "events", "-o", "json", "--field-selector=involvedObject.name=closing", namespace=namespace
    )
    events = json.loads(listed.stdout)["items"]
    assert [(e["reason"], e["message"]) for e in events] == [
        ("Retrying", "attempt 2 in 10s"),
        ("Completed", "top-1 0.93 after 3 epochs"),
    ]
    api_client.close()
