"""One of several replicas: only the holder of the Lease (lease.py) watches and reconciles.

* The election runs on a thread of its own, so a busy event loop or a full thread pool never
  delays a renewal: it tries every retry period until it leads, then renews every retry period.
* A standby serves /metrics (`finetune_leader 0`) and a /healthz of its own, and does not start
  kopf at all: no watches, no reconciles, no API load beyond one Lease read per retry period.
* Once leading, kopf starts (its own /healthz takes over the port) and the reconciler's API
  client is fenced: every request first checks, by the monotonic clock, that the renew deadline
  has not passed since the last successful renewal.
* A leader that cannot renew within the renew deadline, or sees another holder, exits at once
  (`os._exit`: nothing left that could still write), and the Deployment restarts it as a standby.
* On SIGTERM the leader stops kopf, waits until no reconcile is running, then releases the Lease,
  so a standby takes over within one retry period instead of a lease duration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubernetes.client import ApiClient, Configuration

from .config import OperatorConfig
from .kube import load_api_client
from .lease import ApiLeaseStore, LeaderElector, Timings
from .metrics import Metrics

log = logging.getLogger("finetune_operator.leader")

EXIT_LEADERSHIP_LOST = 1  # as controller-runtime's "leader election lost"


class LeadershipLost(RuntimeError):
    """A request refused because this replica may no longer act as the leader."""


class FencedApiClient(ApiClient):
    """An ApiClient that sends nothing once `fence()` says this process may no longer act."""

    def __init__(self, configuration: Configuration, fence: Callable[[], bool]) -> None:
        super().__init__(configuration)
        self._fence = fence

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        if not self._fence():
            raise LeadershipLost("this replica no longer holds the leader Lease; request not sent")
        return super().call_api(*args, **kwargs)


def exit_now(reason: str) -> None:
    """Stop acting at once: no cleanup, no graceful shutdown that could still write."""
    log.critical("leader election lost: %s; exiting", reason)
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_LEADERSHIP_LOST)


class Election:
    """Runs a LeaderElector on its own thread: `on_started` once it leads, `on_lost` (default:
    exit the process) once it may no longer lead."""

    def __init__(
        self,
        elector: LeaderElector,
        on_started: Callable[[], None],
        on_lost: Callable[[str], None] = exit_now,
    ) -> None:
        self.elector = elector
        self.on_started = on_started
        self.on_lost = on_lost
        self.last_round = elector.clock()
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        """The thread still runs rounds (a round lasts at most a renew deadline plus a retry period)."""
        t = self.elector.timings
        recent = self.elector.clock() - self.last_round < t.renew_deadline + 2 * t.retry_period
        return self._thread.is_alive() and recent

    def stop(self, release: bool) -> bool:
        """End the rounds; hand the Lease back if asked and held. True if it was released."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.elector.timings.renew_deadline + self.elector.timings.retry_period)
        return release and self.elector.release()

    def _run(self) -> None:
        try:
            self._rounds()
        except BaseException as exc:  # a bug here must not leave a leader that no longer renews
            log.exception("the leader-election thread failed")
            self.on_lost(f"the leader-election thread failed: {exc!r}")

    def _rounds(self) -> None:
        e, t = self.elector, self.elector.timings
        started = False
        while not self._stop.is_set():
            try:
                ok = e.try_acquire_or_renew()
                self.error = ""
            except Exception as exc:  # the API server is away, a timeout, a 403: this round failed
                ok = False
                if str(exc) != self.error:
                    log.warning("Lease %s/%s: %s: %s", e.namespace, e.name, type(exc).__name__, exc)
                self.error = str(exc)
            self.last_round = e.clock()
            if self._stop.is_set():
                return
            if e.lost_to:
                self.on_lost(f"the Lease {e.namespace}/{e.name} is now held by {e.lost_to}")
                return
            if started and not e.fence_open():
                self.on_lost(f"could not renew the Lease {e.namespace}/{e.name} within {t.renew_deadline}s")
                return
            if ok and not started and e.fence_open():
                started = True
                log.info("%s: became the leader (Lease %s/%s)", e.identity, e.namespace, e.name)
                self.on_started()
            wait = t.retry_period
            deadline = e.deadline()
            if started and deadline is not None:  # wake up in time to give up at the deadline
                wait = min(wait, max(0.0, deadline - e.clock()))
            self._stop.wait(wait)


class StandbyHealth:
    """/healthz while standing by: 200 as long as the election thread runs its rounds."""

    def __init__(self, port: int, election: Election) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] != "/healthz":
                    self.send_error(404)
                    return
                ok = election.alive()
                body = json.dumps(
                    {"role": "standby", "holder": election.elector.holder, "electionError": election.error}
                ).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:  # probes every few seconds: not worth a line
                pass

        self._server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="healthz", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Free the port for kopf's liveness endpoint."""
        self._server.shutdown()
        self._server.server_close()


Operate = Callable[[Callable[[], ApiClient]], Awaitable[None]]


async def run_elected(config: OperatorConfig, metrics: Metrics, operate: Operate) -> None:
    """Stand by until this replica holds the Lease, then `operate(api_client_factory)` (kopf and
    the reconciler, until a signal stops kopf) while it holds it."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # While standing by; kopf installs its own handlers when it starts. (Passing this event to
    # kopf as its stop flag as well would leave a waiter task that delays every shutdown by 5 s.)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    api = load_api_client(config.client_threads)  # the reconciler shares its configuration
    timings = Timings(
        config.lease_duration_seconds, config.renew_deadline_seconds, config.retry_period_seconds
    )
    elector = LeaderElector(
        ApiLeaseStore(api),
        config.leader_election_namespace,
        config.leader_election_id,
        config.leader_election_identity,
        timings,
    )
    leading = asyncio.Event()
    election = Election(elector, on_started=lambda: loop.call_soon_threadsafe(leading.set))
    metrics.leader.set(0)
    health = StandbyHealth(config.health_port, election) if config.health_port else None
    election.start()
    log.info(
        "%s: standing by for the Lease %s/%s (lease %ss, renew deadline %ss, retry %ss)",
        elector.identity,
        elector.namespace,
        elector.name,
        timings.lease_duration,
        timings.renew_deadline,
        timings.retry_period,
    )
    waits = [asyncio.ensure_future(leading.wait()), asyncio.ensure_future(stop.wait())]
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    if health is not None:
        health.close()
    if stop.is_set():
        election.stop(release=True)
        return
    metrics.leader.set(1)
    try:
        await operate(lambda: FencedApiClient(api.configuration, elector.fence_open))
    finally:
        metrics.leader.set(0)
        # Nothing may act once the Lease is handed back: wait for reconciles still in threads.
        await loop.shutdown_default_executor()
        released = election.stop(release=True)
        outcome = "released" if released else "left to expire"
        log.info("%s: stopped leading; Lease %s", elector.identity, outcome)
