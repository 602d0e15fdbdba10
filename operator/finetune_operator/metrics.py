"""Prometheus metrics of the operator (prometheus-client, served on /metrics).

Per-job series are limited to one gauge (the latest top-1) whose series is removed when the job
is deleted, so cardinality follows the number of live jobs. Everything else is labelled by
bounded sets (phase, reason).
"""

from __future__ import annotations

import contextlib
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .api import PHASES

_DURATION_BUCKETS = (60, 300, 600, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 24 * 3600, 72 * 3600)
_STARTUP_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)


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
        self.top1 = Gauge(
            "finetune_job_top1",
            "Latest top-1 accuracy of a job (final, or the latest epoch while running)",
            ["namespace", "name"],
            registry=r,
        )
        self.leader = Gauge(
            "finetune_leader",
            "1 while this replica acts (holds the leader Lease, or runs without leader election); "
            "0 while it stands by",
            registry=r,
        )
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}
        for phase in PHASES:
            self.jobs.labels(phase=phase).set(0)

    def observe_job(self, namespace: str, name: str, phase: str | None) -> None:
        """Record a job's current phase (None: not yet known, counted as Pending)."""
        with self._lock:
            self._phases[(namespace, name)] = phase or "Pending"
            self._refresh()

    def forget_job(self, namespace: str, name: str) -> None:
        """The job is gone: drop it from the phase gauge and remove its top-1 series."""
        with self._lock:
            self._phases.pop((namespace, name), None)
            self._refresh()
        with contextlib.suppress(KeyError):
            self.top1.remove(namespace, name)

    def _refresh(self) -> None:
        counts = dict.fromkeys(PHASES, 0)
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            self.jobs.labels(phase=phase).set(count)

    def serve(self, port: int) -> None:
        """Serve /metrics on ``port`` in a background thread."""
        start_http_server(port, registry=self.registry)
