"""progress_push: who may push progress for which job, decided against pods of our own making and a
fake TokenReview (the real API server's reviews: test_progress_push.py). Generated requests check
the invariant that matters: a push is delivered only for the job whose rank-0 pod the review
vouches for, and never costs more than one review per token."""

from __future__ import annotations

import base64
import json
from typing import Any

from finetune_contract import PUSH_BODY_LIMIT, push_audience
from finetune_operator.cache import selector_terms
from finetune_operator.progress_pace import Pace
from finetune_operator.progress_push import BURST, REFILL_SECONDS, REVIEW_BURST, Pushed, PushGate
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.operator.reconcile_kit import NAME, NS, World, pod

JOBS = ("a", "b")


def make_pod(job: str, *, uid: str | None = None, rank: str = "0", phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{job}-attempt-1",
            "namespace": NS,
            "uid": uid or f"uid-{job}",
            "labels": {
                "finetune.paddle.dev/job-name": job,
                "finetune.paddle.dev/rank": rank,
                "app.kubernetes.io/managed-by": "paddle-finetune-operator",
            },
            "ownerReferences": [{"kind": "FineTuneJob", "name": job, "controller": True}],
        },
        "status": {"phase": phase},
    }


def jwt(claims: dict[str, Any]) -> str:
    part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")  # noqa: E731
    return f"{part({'alg': 'RS256'})}.{part(claims)}.sig"


def claims_for(pod_name: str, audience: str, uid: str = "", exp: float = 4e9) -> dict[str, Any]:
    return {
        "aud": [audience],
        "exp": exp,
        "kubernetes.io": {"namespace": NS, "pod": {"name": pod_name, "uid": uid}},
    }


class Api:
    """The API server's side: pods, and which tokens it would vouch for (token -> review status)."""

    def __init__(self) -> None:
        self.pods = {job: make_pod(job) for job in JOBS}
        self.valid: dict[str, dict[str, Any]] = {}
        self.reviews: list[tuple[str, str]] = []
        self.delivered: list[tuple[str, str, Pushed]] = []
        self.now = 1000.0

    def mint(self, pod_job: str, audience_job: str, bound: bool = True) -> str:
        """A token the API server made for `pod_job`'s pod, for `audience_job`'s audience."""
        p = self.pods[pod_job]["metadata"]
        tok = jwt(claims_for(p["name"], push_audience(NS, audience_job), p["uid"]) | {"n": len(self.valid)})
        extra = {
            "authentication.kubernetes.io/pod-name": [p["name"]],
            "authentication.kubernetes.io/pod-uid": [p["uid"]],
        }
        self.valid[tok] = {
            "authenticated": True,
            "audiences": [push_audience(NS, audience_job)],
            "user": {"username": f"system:serviceaccount:{NS}:default", "extra": extra if bound else {}},
        }
        return tok

    def review(self, token: str, audience: str) -> dict[str, Any]:
        self.reviews.append((token, audience))
        status = self.valid.get(token)
        if status is None or audience not in status["audiences"]:
            return {"authenticated": False}
        return status

    def gate(self) -> PushGate:
        return PushGate(
            pods=lambda ns, selector: [
                p
                for p in self.pods.values()
                if selector_terms(selector).items() <= p["metadata"]["labels"].items()
            ],
            review=self.review,
            deliver=lambda ns, job, pushed: self.delivered.append((ns, job, pushed)),
            clock=lambda: self.now,
            wall=lambda: self.now,
        )


def body(epoch: int = 1) -> bytes:
    return json.dumps({"epoch": epoch, "epochs": 5}).encode()


def test_the_jobs_own_pod_is_accepted_and_reviewed_once() -> None:
    api = Api()
    gate = api.gate()
    tok = api.mint("a", "a")
    for epoch in range(3):
        api.now += REFILL_SECONDS
        assert gate.push(NS, "a", f"Bearer {tok}", body(epoch)).status == 202
    assert len(api.reviews) == 1
    assert [(job, p.pod, p.record["epoch"]) for _, job, p in api.delivered] == [
        ("a", "a-attempt-1", 0),
        ("a", "a-attempt-1", 1),
        ("a", "a-attempt-1", 2),
    ]


def test_refusals_name_why_and_deliver_nothing() -> None:
    api = Api()
    gate = api.gate()
    a_for_a, a_for_b = api.mint("a", "a"), api.mint("a", "b")
    loose = api.mint("b", "b", bound=False)
    cases = [
        ("b", f"Bearer {a_for_a}", body(), 403),  # a's token at b's path: wrong audience
        ("b", f"Bearer {a_for_b}", body(), 403),  # b's audience, but bound to a's pod
        ("b", f"Bearer {loose}", body(), 403),  # not bound to any pod
        ("b", None, body(), 401),
        ("b", "Basic abc", body(), 401),
        ("b", "Bearer " + "x" * 20_000, body(), 401),
        ("a", f"Bearer {a_for_a}", b"x" * (PUSH_BODY_LIMIT + 1), 413),
        ("a", f"Bearer {a_for_a}", b"[1]", 400),
        ("a", f"Bearer {a_for_a}", b'{"epoch": -1}', 400),
        ("a", f"Bearer {a_for_a}", b'{"epoch": true}', 400),
        ("A_B", f"Bearer {a_for_a}", body(), 404),
    ]
    for job, auth, data, expected in cases:
        answer = gate.push(NS, job, auth, data)
        assert answer.status == expected, (job, auth and auth[:20], data[:20], answer)
    assert api.delivered == []


def test_a_stranger_costs_no_review_and_a_refused_token_is_not_reviewed_again() -> None:
    api = Api()
    gate = api.gate()
    stranger = jwt(claims_for("someone-else", push_audience(NS, "a")))
    other_audience = jwt(claims_for("a-attempt-1", "https://kubernetes.default.svc"))
    for tok in (stranger, other_audience, "not-a-jwt"):
        assert gate.push(NS, "a", f"Bearer {tok}", body()).status == 403
    assert api.reviews == []
    forged = jwt(claims_for("a-attempt-1", push_audience(NS, "a"), "uid-a"))
    for _ in range(3):
        assert gate.push(NS, "a", f"Bearer {forged}", body()).status == 403
    assert len(api.reviews) == 1


def test_forged_claims_cost_a_few_reviews_per_job_and_then_none() -> None:
    api = Api()
    gate = api.gate()
    for n in range(20):
        forged = jwt(claims_for("a-attempt-1", push_audience(NS, "a"), "uid-a") | {"n": n})
        assert gate.push(NS, "a", f"Bearer {forged}", body()).status == 403
    assert len(api.reviews) == REVIEW_BURST
    # ...and the job's own pod still gets through once the review budget refills.
    api.now += 100
    assert gate.push(NS, "a", f"Bearer {api.mint('a', 'a')}", body()).status == 202


def test_a_job_is_rate_limited_and_a_stranger_cannot_use_up_its_share() -> None:
    api = Api()
    gate = api.gate()
    tok = api.mint("a", "a")
    for _ in range(50):  # someone else hammering a's path
        gate.push(NS, "a", "Bearer junk.junk.junk", body())
    answers = [gate.push(NS, "a", f"Bearer {tok}", body(e)).status for e in range(BURST + 2)]
    assert answers == [202] * BURST + [429, 429]
    api.now += REFILL_SECONDS
    assert gate.push(NS, "a", f"Bearer {tok}", body(9)).status == 202
    assert len(api.delivered) == BURST + 1


def test_a_pod_that_is_gone_replaced_finished_or_not_rank_0_cannot_push() -> None:
    api = Api()
    gate = api.gate()
    tok = api.mint("a", "a")
    assert gate.push(NS, "a", f"Bearer {tok}", body()).status == 202
    api.pods["a"] = make_pod("a", phase="Succeeded")
    assert gate.push(NS, "a", f"Bearer {tok}", body()).status == 409
    api.pods["a"] = make_pod("a", uid="a-new-uid")  # same name, another pod: the review was for the old
    assert gate.push(NS, "a", f"Bearer {tok}", body()).status == 403
    api.pods["a"] = make_pod("a", rank="1")
    assert gate.push(NS, "a", f"Bearer {tok}", body()).status == 403
    del api.pods["a"]
    assert gate.push(NS, "a", f"Bearer {tok}", body()).status == 403
    assert len(api.delivered) == 1 and len(api.reviews) == 1


def test_an_expired_token_is_reviewed_again() -> None:
    api = Api()
    gate = api.gate()
    p = api.pods["a"]["metadata"]
    tok = jwt(claims_for(p["name"], push_audience(NS, "a"), p["uid"], exp=api.now + 100))
    api.valid[tok] = api.review(api.mint("a", "a"), push_audience(NS, "a"))
    api.reviews.clear()
    assert gate.push(NS, "a", f"Bearer {tok}", body()).status == 202
    api.now += 50
    assert gate.push(NS, "a", f"Bearer {tok}", body()).status == 202
    assert len(api.reviews) == 1
    api.now += 60  # past the token's exp: the cached review no longer counts
    gate.push(NS, "a", f"Bearer {tok}", body())
    assert len(api.reviews) == 2


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(JOBS),  # the pod the token was minted for
            st.sampled_from(JOBS),  # the audience it was minted for
            st.booleans(),  # bound to the pod
            st.sampled_from(JOBS),  # the path it is posted to
        ),
        min_size=1,
        max_size=12,
    )
)
def test_a_push_is_delivered_only_for_the_job_that_owns_the_reviewed_pod(requests) -> None:
    api = Api()
    gate = api.gate()
    minted: dict[tuple[str, str, bool], str] = {}
    for pod_job, audience_job, bound, path_job in requests:
        tok = minted.setdefault((pod_job, audience_job, bound), api.mint(pod_job, audience_job, bound))
        before = len(api.delivered)
        answer = gate.push(NS, path_job, f"Bearer {tok}", body())
        allowed = pod_job == audience_job == path_job and bound
        if answer.status == 202:
            assert allowed
            assert (
                api.delivered[before][1] == path_job
                and api.delivered[before][2].pod == f"{path_job}-attempt-1"
            )
        else:
            assert len(api.delivered) == before
            assert not allowed or answer.status == 429
    assert len(api.reviews) <= len(minted)


def test_a_pace_fed_by_pushes_reads_the_log_only_when_they_stop() -> None:
    from datetime import datetime, timedelta, timezone

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    at = lambda s: t0 + timedelta(seconds=s)  # noqa: E731
    pace = Pace(30.0, last_read=t0)
    for k in range(5):
        pace.pushed(at(100 * k), k)
        # Between pushes no read is due.
        assert not pace.due(at(100 * k + 99)), k
    assert pace.epoch_seconds() == 100
    # The push for epoch 5 is lost: the log is read a whole epoch after it was due, not sooner.
    assert not pace.due(at(400 + 190))
    assert pace.due(at(400 + 206))


def test_a_pushed_record_reaches_the_status_without_a_log_read() -> None:
    w = World()
    reads: list[Any] = []
    tail = w.kube.pod_log_tail
    w.kube.pod_log_tail = lambda *args: reads.append(args) or tail(*args)
    w.reconcile()
    w.run(1)
    w.reconcile()
    now = w.clock().timestamp()
    w.reconciler.pushed(NS, NAME, Pushed(pod(1), {"epoch": 2, "epochs": 20, "top1": 0.4}, now))
    w.reconcile()
    assert w.status["progress"]["display"] == "2/20" and w.status["progress"]["top1"] == 0.4
    # An older record (a late retry) does not move the status back; another attempt's is ignored.
    w.reconciler.pushed(NS, NAME, Pushed(pod(1), {"epoch": 1, "epochs": 20}, now))
    w.reconciler.pushed(NS, NAME, Pushed(pod(2), {"epoch": 9, "epochs": 20}, now))
    w.reconcile()
    assert w.status["progress"]["display"] == "2/20"
    assert reads == []
