"""Prometheus metrics of the operator (prometheus-client, served on /metrics).

Per-job series are limited to one gauge (the latest top-1) whose series goes when the job is
deleted, so cardinality follows the number of live jobs. Everything else is labelled by bounded
sets (phase, reason). The top-1 gauge is read at scrape time from the per-job record the phase
counts keep anyway (`_Job`): a labelled child of a client Gauge per job cost about 360 bytes more
each (tests/operator/test_metrics.py measures it).

What a job contributes (its phase, its top-1) is kept per job *uid*, and a deleted uid is
remembered: a pass that read the job before it was deleted and reports it afterwards cannot bring
it back (the DELETED event, or the operator's own TTL deletion, may come first). Jobs deleted
while no event could say so are found by `Reconciler.sweep`, which compares the jobs seen before
a list with the list (`mark`, `seen_before`).
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .api import PHASES

_DURATION_BUCKETS = (60, 300, 600, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 24 * 3600, 72 * 3600)
_STARTUP_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
_GONE_REMEMBERED = 10_000  # deleted uids remembered (a uid never comes back; this bounds memory)


@dataclass(slots=True)
class _Job:
    uid: str
    phase: str
    seen: int  # the observation's sequence number (see mark())
    top1: float | None = None  # the latest reported


_TOP1 = ("finetune_job_top1", "Latest top-1 accuracy of a job (final, or the latest epoch while running)")


class _Top1(Collector):
    """The per-job top-1 gauge, from the jobs' records at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(*_TOP1, labels=["namespace", "name"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(*_TOP1, labels=["namespace", "name"])
        for namespace, name, top1 in self._metrics.top1_values():
            family.add_metric([namespace, name], top1)
        yield family


class Metrics:
    """The operator's metrics in their own registry (tests can make as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Gauge("finetune_jobs", "FineTuneJobs by phase", ["phase"], registry=r)
        self.outcomes = Counter(
            "finetune_job_outcomes",
            "Finished FineTuneJobs by final phase and reason",
            ["phase", "reason"],
            registry=r,
        )
        self.attempts = Counter("finetune_attempts", "Trainer pods created (attempts started)", registry=r)
        self.retries = Counter(
            "finetune_retries", "Retries scheduled after a transient failure", ["reason"], registry=r
        )
        self.duration = Histogram(
            "finetune_job_duration_seconds",
            "From job creation to Succeeded/Failed",
            ["phase"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.pod_creation = Histogram(
            "finetune_job_pod_creation_seconds",
            "From job creation to the first attempt's pod being created",
            buckets=_STARTUP_BUCKETS,
            registry=r,
        )
        self.reconcile_errors = Counter(
            "finetune_reconcile_errors", "Reconciles that raised (retried later)", ["kind"], registry=r
        )
        self.api_requests = Counter(
            "finetune_api_requests",
            "Requests the reconciler sent to the API server (the watch streams aside)",
            ["verb", "resource"],
            registry=r,
        )
        self.watch_requests = Counter(
            "finetune_watch_requests",
            "Lists and watch requests of the watch streams (a list at start and after a 410 Gone; a "
            "watch every 5 minutes, and after each failure)",
            ["verb", "resource"],
            registry=r,
        )
        self.passes = Counter(
            "finetune_reconcile_passes",
            "Reconcile passes: 'cache' read from the watch cache, 'fresh' redone on the API server's reads",
            ["reads"],
            registry=r,
        )
        self.watch_events = Counter(
            "finetune_watch_events",
            "Watch events by kind and whether they brought anything new (new='false': the operator's "
            "own write or a repeat, no pass)",
            ["kind", "new"],
            registry=r,
        )
        self.pushes = Counter(
            "finetune_progress_pushes",
            "Progress the trainers POSTed to the progress endpoint, by answer (accepted, or why not)",
            ["result"],
            registry=r,
        )
        self.failing = Gauge(
            "finetune_reconcile_failing_jobs",
            "Jobs whose latest reconcile raised (retried with exponential back-off until one succeeds)",
            registry=r,
        )
        r.register(_Top1(self))
        self.leader = Gauge(
            "finetune_leader",
            "1 while this replica acts (holds the leader Lease, or runs without leader election); "
            "0 while it stands by",
            registry=r,
        )
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._gone: OrderedDict[str, None] = OrderedDict()
        self._seq = itertools.count(1)
        # Jobs by phase, kept as jobs move: a pass must not count every job (10,000 jobs: a
        # scan per pass was a twentieth of the operator's CPU in a burst).
        self._counts: dict[str, int] = dict.fromkeys(PHASES, 0)
        for phase in PHASES:
            self.jobs.labels(phase=phase).set(0)

    def observe_job(
        self, namespace: str, name: str, uid: str, phase: str | None, top1: float | None = None
    ) -> None:
        """Record a job's current phase (None: not yet known, counted as Pending) and its latest
        top-1; nothing for a job already deleted."""
        with self._lock:
            if uid in self._gone:
                return
            old = self._jobs.get((namespace, name))
            if top1 is None and old is not None and old.uid == uid:
                top1 = old.top1  # not reported in this pass: the latest stands
            job = _Job(uid, phase or "Pending", next(self._seq), top1)
            self._count(old, job)
            self._jobs[(namespace, name)] = job

    def forget_job(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Job `uid` (None: whichever has that name) is gone: drop it from the phase gauge and
        remove its top-1 series; a later observation of that uid is ignored."""
        with self._lock:
            if uid:
                self._gone[uid] = None
                while len(self._gone) > _GONE_REMEMBERED:
                    self._gone.popitem(last=False)
            known = self._jobs.get((namespace, name))
            if known is None or uid is None or known.uid == uid:
                self._count(self._jobs.pop((namespace, name), None), None)

    def top1_values(self) -> list[tuple[str, str, float]]:
        """(namespace, name, top-1) of every job that reported one."""
        with self._lock:
            return [(ns, name, j.top1) for (ns, name), j in self._jobs.items() if j.top1 is not None]

    def uid_of(self, namespace: str, name: str) -> str | None:
        with self._lock:
            known = self._jobs.get((namespace, name))
            return known.uid if known else None

    def mark(self) -> int:
        """A point in the sequence of observations: jobs observed after it may be newer than a
        list made after it."""
        with self._lock:
            return next(self._seq)

    def seen_before(self, mark: int) -> list[tuple[str, str, str]]:
        """(namespace, name, uid) of the jobs last observed before `mark`."""
        with self._lock:
            return [(ns, name, j.uid) for (ns, name), j in self._jobs.items() if j.seen < mark]

    def _count(self, old: _Job | None, new: _Job | None) -> None:
        """A job left phase `old` (None: it was not counted) for `new` (None: it is gone)."""
        if old is not None and new is not None and old.phase == new.phase:
            return
        for job, step in ((old, -1), (new, 1)):
            if job is not None:
                count = self._counts.get(job.phase, 0) + step
                self._counts[job.phase] = count
                self.jobs.labels(phase=job.phase).set(count)

    def serve(self, port: int) -> None:
        """Serve /metrics on ``port`` in a background thread."""
        start_http_server(port, registry=self.registry)
