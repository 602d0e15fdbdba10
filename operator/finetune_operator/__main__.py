"""`finetune-operator`: parse the configuration, serve /metrics, run kopf (while leading, with
--leader-elect)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import sys
from collections.abc import Callable, Sequence

import kopf
from kubernetes.client import ApiClient

from . import heap
from .cache import CachedKube
from .config import ConfigError, OperatorConfig, parse_config
from .controller import Reconciler
from .handlers import ReconcileQueue, build_registry
from .kube import Kube, load_api_client
from .leadership import run_elected
from .metrics import Metrics
from .watches import Intake


async def operate(config: OperatorConfig, metrics: Metrics, api_client: Callable[[], ApiClient]) -> None:
    """The watch streams, the work queue and the reconciler, in kopf's lifecycle, until kopf
    stops (SIGTERM, SIGINT)."""

    def reconciler() -> Reconciler:
        # Reads from the watch cache the handlers feed; `live` for what the cache must not decide.
        live = Kube(api_client(), on_request=lambda verb, resource: count(verb, resource))
        return Reconciler(CachedKube(live), config, metrics, live=live)

    def count(verb: str, resource: str) -> None:
        metrics.api_requests.labels(verb=verb, resource=resource).inc()

    def streams(verb: str, resource: str) -> None:
        metrics.watch_requests.labels(verb=verb, resource=resource).inc()

    def intake(queue: ReconcileQueue) -> Intake:
        # A client of its own: each stream holds a connection for minutes, outside the pool the
        # workers share.
        kube = Kube(api_client(), on_request=streams)
        return Intake(kube, config.namespaces, queue.observe, queue.route)

    def reviewer() -> Kube:
        # TokenReviews of the progress endpoint: a client of their own, so that they neither wait
        # for nor crowd out the workers' connections.
        return Kube(api_client(), on_request=count)

    queue = ReconcileQueue(config, metrics, reconciler, intake, reviewer)
    await kopf.operator(
        registry=build_registry(queue),
        standalone=True,  # no kopf peering: one replica acts, chosen by the Lease (leadership.py)
        clusterwide=config.clusterwide,
        namespaces=list(config.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None,
        # kopf's default identity asks getpass.getuser(), which fails for a uid without a passwd
        # entry (the image runs as 1000 and has none); standalone, kopf only logs it.
        identity=f"finetune-operator@{socket.gethostname()}",
    )


def run(config: OperatorConfig) -> None:
    kopf.configure(
        debug=config.log_level == "debug",
        quiet=config.log_level in ("warning", "error"),
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL,
    )
    if config.log_level != "debug":
        # kopf logs every watch-event handler call at INFO; the reconciler logs what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    metrics = Metrics()
    if config.metrics_port:
        metrics.serve(config.metrics_port)
    if config.leader_elect:
        main = run_elected(config, metrics, functools.partial(operate, config, metrics))
    else:
        metrics.leader.set(1)
        main = operate(config, metrics, functools.partial(load_api_client, config.client_threads))
    with contextlib.suppress(asyncio.CancelledError):  # as kopf.run: cancelled means stopped
        asyncio.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"finetune-operator: {exc}", file=sys.stderr)
        return 2
    heap.limit_arenas()  # before any thread starts
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
