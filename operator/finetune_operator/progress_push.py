"""Who may push progress for which job: the decisions of the progress endpoint, without HTTP.

A trainer POSTs its progress record with its pod's ServiceAccount token, projected for one audience
per job (`push_audience`). A push is accepted only when:
* the body is a small JSON progress record;
* the API server says the token is valid for this job's audience (a TokenReview), and that it is
  bound to a pod: the review's pod name and uid, not the token's own unverified claims, decide;
* that pod is, in the watch cache, rank 0 of this job (a pod of one job can never write another's);
* the job has had at most a few pushes lately (a token bucket per job, after the checks so that a
  stranger cannot use up a job's share: a broken or hostile trainer cannot flood the operator,
  nor make it write the status more than every `REFILL_SECONDS`).
A token's review is cached until the token expires (at most an hour), so a job costs one review
per token the kubelet hands out, not one per push; a pod deleted meanwhile is refused at once (the
cache no longer holds it). Before any review, the token's unverified claims must name this job's
audience and one of its pods, so a stranger's token costs no request; forged claims cost at most
`REVIEW_BURST` reviews per job and then one every `REVIEW_REFILL_SECONDS`, a few at a time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from finetune_contract import PUSH_BODY_LIMIT, check_progress_record, push_audience

from .api import KIND, LABEL_JOB, LABEL_RANK
from .pod import job_label_value, pod_selector

BURST = 5  # pushes a job may send at once ...
REFILL_SECONDS = 2.0  # ... and then one every this many seconds
REVIEW_BURST = 3  # TokenReviews for one job's tokens at once, then one every ...
REVIEW_REFILL_SECONDS = 10.0
TOKEN_LIMIT = 16 * 1024  # bytes of a bearer token
REVIEW_TTL_SECONDS = 3600.0  # a review is trusted at most this long (and never past the token's exp)
REFUSED_TTL_SECONDS = 60.0  # a refused token is not reviewed again for this long
CACHED_TOKENS = 50_000  # reviews kept (oldest dropped first)
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_POD_NAME = "authentication.kubernetes.io/pod-name"
_POD_UID = "authentication.kubernetes.io/pod-uid"


@dataclass(frozen=True)
class Answer:
    status: int  # the HTTP status
    result: str  # the metrics' label: accepted, or why not
    message: str
    retry_after: float = 0.0


@dataclass(frozen=True)
class Identity:
    """What a TokenReview said about a token: the pod it is bound to."""

    namespace: str
    pod: str
    uid: str
    audience: str
    until: float  # monotonic time the review stops counting


@dataclass(frozen=True)
class Pushed:
    """An accepted record, for the reconciler's next pass of the job."""

    pod: str
    record: dict[str, Any]
    at: float  # wall-clock time it arrived (time.time())


class _Buckets:
    """A token bucket per job, dropped once full again (so idle jobs cost no memory)."""

    def __init__(self, burst: int, refill: float) -> None:
        self.burst, self.refill = burst, refill
        self._level: dict[tuple[str, str], tuple[float, float]] = {}

    def take(self, key: tuple[str, str], now: float) -> float:
        """0 if a push may go now (and counts it), else the seconds until one may."""
        level, since = self._level.get(key, (float(self.burst), now))
        level = min(float(self.burst), level + (now - since) / self.refill)
        if level < 1.0:
            self._level[key] = (level, now)
            return (1.0 - level) * self.refill
        self._level[key] = (level - 1.0, now)
        if len(self._level) > 4 * CACHED_TOKENS:  # many jobs at once: forget the full buckets
            full = [k for k, (lv, t) in self._level.items() if lv + (now - t) / self.refill >= self.burst]
            for k in full:
                del self._level[k]
        return 0.0


def unverified_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, not verified (only to refuse strangers before a review)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError, RecursionError):
        return None
    return claims if isinstance(claims, dict) else None


def _claimed_pod(claims: dict[str, Any], audience: str, namespace: str) -> str | None:
    aud = claims.get("aud")
    if audience not in (aud if isinstance(aud, list) else [aud]):
        return None
    kube = claims.get("kubernetes.io")
    if not isinstance(kube, dict) or kube.get("namespace") != namespace:
        return None
    pod = kube.get("pod")
    name = pod.get("name") if isinstance(pod, dict) else None
    return name if isinstance(name, str) else None


def _job_rank0(pod: dict[str, Any], job: str) -> bool:
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    owned = any(
        o.get("kind") == KIND and o.get("name") == job and o.get("controller")
        for o in meta.get("ownerReferences") or []
    )
    return owned and labels.get(LABEL_JOB) == job_label_value(job) and labels.get(LABEL_RANK, "0") == "0"


class PushGate:
    """Decides each push. `pods(namespace, selector)` lists pods from the watch cache;
    `review(token, audience)` sends a TokenReview (blocking: called from a thread);
    `deliver(namespace, job, pushed)` hands an accepted record to the reconciler."""

    def __init__(
        self,
        pods: Callable[[str, str], list[dict[str, Any]]],
        review: Callable[[str, str], dict[str, Any]],
        deliver: Callable[[str, str, Pushed], None],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        reviews_at_once: int = 4,
    ) -> None:
        self._pods, self._review, self._deliver = pods, review, deliver
        self._clock, self._wall = clock, wall
        self._buckets = _Buckets(BURST, REFILL_SECONDS)
        self._review_buckets = _Buckets(REVIEW_BURST, REVIEW_REFILL_SECONDS)
        self._known: OrderedDict[bytes, Identity | None] = OrderedDict()  # token digest -> review
        self._refused_until: dict[bytes, float] = {}
        self._lock = threading.Lock()
        self._reviews = threading.BoundedSemaphore(reviews_at_once)
        self.reviews = 0  # TokenReviews sent (tests and the benchmark read it)

    def push(self, namespace: str, job: str, authorization: str | None, body: bytes) -> Answer:
        """Blocking (a review may be sent): run it off the event loop."""
        if not (_NAME.fullmatch(namespace) and _NAME.fullmatch(job)):
            return Answer(404, "not_found", "no such job path")
        if len(body) > PUSH_BODY_LIMIT:
            return Answer(413, "too_large", f"a progress record is at most {PUSH_BODY_LIMIT} bytes")
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > TOKEN_LIMIT:
            return Answer(401, "unauthorized", "a bearer token is required")
        now = self._clock()
        try:
            record = check_progress_record(json.loads(body))
        except (ValueError, RecursionError):
            record = None
        if record is None:
            return Answer(400, "bad_request", 'the body must be a JSON object with an integer "epoch" >= 0')
        pods = {p["metadata"]["name"]: p for p in self._pods(namespace, pod_selector(job))}
        identity = self._identify(token, namespace, job, pods, now)
        if identity is None:
            return Answer(403, "forbidden", "the token is not valid for this job's pods")
        pod = pods.get(identity.pod)
        if pod is None or pod["metadata"].get("uid") != identity.uid or not _job_rank0(pod, job):
            return Answer(403, "forbidden", "the token's pod is not this job's running trainer")
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return Answer(409, "finished", "the pod has finished")
        with self._lock:
            wait = self._buckets.take((namespace, job), now)
        if wait:
            return Answer(429, "rate_limited", "too many pushes for this job", retry_after=wait)
        self._deliver(namespace, job, Pushed(identity.pod, record, self._wall()))
        return Answer(202, "accepted", "accepted")

    def _identify(
        self, token: str, namespace: str, job: str, pods: dict[str, dict[str, Any]], now: float
    ) -> Identity | None:
        audience = push_audience(namespace, job)
        digest = hashlib.sha256(token.encode()).digest()
        with self._lock:
            known = self._known.get(digest)
            if known is not None and known.until > now:
                return known if known.audience == audience and known.namespace == namespace else None
            if self._refused_until.get(digest, 0.0) > now:
                return None
        claims = unverified_claims(token)
        claimed = _claimed_pod(claims, audience, namespace) if claims is not None else None
        if claimed is None or claimed not in pods:
            return None  # not even claiming to be one of this job's pods: no review
        with self._lock:
            if self._review_buckets.take((namespace, job), now):
                return None
        with self._reviews:
            self.reviews += 1
            status = self._review(token, audience)
        identity = _reviewed(status, namespace, audience, now, self._wall(), claims or {})
        with self._lock:
            if identity is None:
                self._refused_until[digest] = now + REFUSED_TTL_SECONDS
                if len(self._refused_until) > CACHED_TOKENS:
                    self._refused_until = {d: t for d, t in self._refused_until.items() if t > now}
                return None
            self._known[digest] = identity
            self._known.move_to_end(digest)
            while len(self._known) > CACHED_TOKENS:
                self._known.popitem(last=False)
        return identity


def _reviewed(
    status: dict[str, Any], namespace: str, audience: str, now: float, wall: float, claims: dict[str, Any]
) -> Identity | None:
    """The pod a TokenReview's status vouches for, or None."""
    if not status.get("authenticated") or audience not in (status.get("audiences") or []):
        return None
    user = status.get("user") or {}
    if not str(user.get("username", "")).startswith(f"system:serviceaccount:{namespace}:"):
        return None
    extra = user.get("extra") or {}
    pod, uid = (extra.get(_POD_NAME) or [None])[0], (extra.get(_POD_UID) or [None])[0]
    if not pod or not uid:
        return None  # not bound to a pod (a token made for the ServiceAccount alone)
    exp = claims.get("exp")
    left = REVIEW_TTL_SECONDS
    if isinstance(exp, (int, float)):
        left = min(left, float(exp) - wall)
    if left <= 0:
        return None
    return Identity(namespace, pod, uid, audience, now + left)
