"""The closing Event (Completed, or the reason a job failed) follows the status that records the
end, so the status waits for no other request; a job ends once, so the Event is named after its
uid and reason, and the first pass over a finished job in a new process posts it again from the
status (the API server keeps one). Crashes between the two writes: test_crash_points.py."""

from __future__ import annotations

from typing import Any

import pytest
from finetune_operator.controller import CLOSING_RETRY_SECONDS, EVENT_TTL_SECONDS
from finetune_operator.kube import event_name

from tests.operator.fake_kube import api_error
from tests.operator.reconcile_kit import NAME, NS, World, new_job, pod


def succeeded(**spec: Any) -> World:
    w = World(**spec)
    w.settle()
    w.run(1)
    w.settle()
    w.succeed(1)
    w.settle()
    assert w.status["phase"] == "Succeeded"
    return w


def closing_events(w: World) -> list[dict[str, Any]]:
    return [e for e in w.kube.events if e["reason"] in ("Completed", "TrainerError")]


def test_the_status_is_written_first_and_the_closing_event_right_after():
    w = succeeded()
    verbs = [(x.verb, x.target) for x in w.kube.writes]
    ended = max(i for i, x in enumerate(w.kube.writes) if x.verb == "patch_status" and x.body.get("phase"))
    assert verbs[ended + 1] == ("event", "Completed"), verbs
    (event,) = closing_events(w)
    job = w.kube.job(NS, NAME)
    assert event["name"] == event_name(job, "Normal", "Completed", "", closing=True)
    assert event["message"] == w.status["message"]


def test_a_failed_job_closes_with_a_warning_after_its_status():
    w = World(runPolicy={"backoffLimit": 0})
    w.settle()
    w.run(1)
    w.settle()
    w.fail(1, 1, "out of memory")
    w.settle()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", "TrainerError")
    verbs = [(x.verb, x.target) for x in w.kube.writes]
    failed = max(i for i, x in enumerate(w.kube.writes) if x.verb == "patch_status" and x.body.get("phase"))
    assert verbs[failed + 1] == ("event", "TrainerError"), verbs
    assert [e["type"] for e in closing_events(w)] == ["Warning"]


def test_a_new_process_posts_it_once_more_and_the_api_keeps_one():
    w = succeeded()
    w.restart()
    before = len(w.kube.writes)
    assert w.reconcile() is None
    assert [(x.verb, x.target) for x in w.kube.writes[before:]] == [("event", "Completed")]
    assert len(closing_events(w)) == 1  # the API server's 409: the same name
    before = len(w.kube.writes)
    w.reconcile()
    assert w.kube.writes[before:] == [], "one repeat per process, not per pass"


def test_a_closing_event_lost_with_the_last_process_comes_back_from_the_status():
    w = succeeded()
    (lost,) = closing_events(w)
    w.kube.events.remove(lost)
    w.restart()
    w.reconcile()
    (back,) = closing_events(w)
    assert (back["name"], back["type"], back["reason"]) == (lost["name"], lost["type"], lost["reason"])
    assert back["message"] == w.status["message"]


def test_a_job_that_ended_longer_ago_than_the_event_ttl_gets_no_repeat():
    w = succeeded()
    w.clock.advance(EVENT_TTL_SECONDS + 1)
    w.restart()
    before = len(w.kube.writes)
    w.reconcile()
    w.reconcile()
    assert w.kube.writes[before:] == []


def test_a_closing_event_the_api_refused_is_tried_again_soon():
    w = World()
    w.settle()
    w.run(1)
    w.settle()
    w.succeed(1)
    post = w.kube.job_event
    refusals = []

    def refuse_once(job: dict[str, Any], *args: Any, closing: bool = False, **kwargs: Any) -> None:
        if closing and not refusals:
            refusals.append(args)
            raise api_error(500, "InternalError", "etcd timeout")
        post(job, *args, closing=closing, **kwargs)

    w.kube.job_event = refuse_once  # type: ignore[method-assign]
    assert w.reconcile() == pytest.approx(CLOSING_RETRY_SECONDS)
    assert w.status["phase"] == "Succeeded" and closing_events(w) == []
    assert w.reconcile() is None
    assert len(closing_events(w)) == 1
    before = len(w.kube.writes)
    w.reconcile()
    assert w.kube.writes[before:] == []


@pytest.mark.parametrize("finished", [1, 7, 40])
def test_a_restart_costs_one_post_per_recently_finished_job_at_most(finished: int):
    w = World()
    names = [f"job-{i}" for i in range(finished)]
    for name in names:
        w.kube.add_job(new_job(name))
        w.settle(name)
        w.kube.run(NS, pod(1, name))
        w.settle(name)
        w.kube.finish(NS, pod(1, name), 0, "")
        w.settle(name)
        assert w.kube.status(NS, name)["phase"] == "Succeeded"
    assert len(closing_events(w)) == finished
    for _ in range(2):  # two restarts, each pass over every job three times
        w.restart()
        before = len(w.kube.writes)
        for _ in range(3):
            for name in names:
                w.reconcile(name)
        assert [x.verb for x in w.kube.writes[before:]] == ["event"] * finished
    assert len(closing_events(w)) == finished
