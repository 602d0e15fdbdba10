"""Events that a pass repeats after a crash: Kube.job_event names an Event after the job's version,
the Event's place in its pass and the Event itself, so the API server keeps one (409
AlreadyExists, taken as done). The fake API does the same (fake_kube.py); here the real API
server shows that it does."""

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
