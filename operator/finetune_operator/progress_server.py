"""The progress endpoint: `POST /v1/progress/<namespace>/<job>` over TLS, on kopf's event loop.

Trainers push each progress record here (finetune_contract: `push_path`); progress_push.py decides
who may, and an accepted record goes to the reconciler, whose next pass of the job writes it: one
status write per epoch instead of a log read and a status write. Started with the work queue, so
only the acting replica listens (a standby's port is closed and the trainer tries again, maybe
reaching the leader; its log stays the fallback). The answers carry no detail a stranger could use
beyond the reason.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from aiohttp import web
from finetune_contract import PUSH_BODY_LIMIT

from .metrics import Metrics
from .progress_push import Pushed, PushGate

log = logging.getLogger("finetune_operator")


def server_tls(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


class ProgressServer:
    def __init__(
        self, gate: PushGate, metrics: Metrics, port: int, tls: ssl.SSLContext, host: str | None = None
    ) -> None:
        self.gate, self.metrics, self.port, self.tls, self.host = gate, metrics, port, tls, host
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        # A body over the limit is refused (413) before it is read in full.
        app = web.Application(client_max_size=PUSH_BODY_LIMIT)
        app.router.add_post("/v1/progress/{namespace}/{job}", self._post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.tls)
        await site.start()
        log.info("progress endpoint listening on port %d", self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _post(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.metrics.pushes.labels(result="too_large").inc()
            raise
        namespace, job = request.match_info["namespace"], request.match_info["job"]
        try:
            # A TokenReview may be sent: off the event loop.
            answer = await asyncio.to_thread(
                self.gate.push, namespace, job, request.headers.get("Authorization"), body
            )
        except Exception as exc:  # the API server unreachable: the trainer's next push may do
            log.warning("%s/%s: cannot check a progress push: %s", namespace, job, exc)
            self.metrics.pushes.labels(result="unavailable").inc()
            return web.Response(status=503, text="cannot check the token now\n")
        self.metrics.pushes.labels(result=answer.result).inc()
        headers = {}
        if answer.status == 429:
            headers["Retry-After"] = str(max(1, round(answer.retry_after)))
        elif answer.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return web.Response(status=answer.status, text=answer.message + "\n", headers=headers)


def deliver_on(
    loop: asyncio.AbstractEventLoop,
    store: Callable[[str, str, Pushed], None],
    enqueue: Callable[[str, str], None],
) -> Callable[[str, str, Pushed], None]:
    """The gate's `deliver`: store the record (thread-safe) and queue the job's pass on the loop."""

    def deliver(namespace: str, job: str, pushed: Pushed) -> None:
        store(namespace, job, pushed)
        loop.call_soon_threadsafe(enqueue, namespace, job)

    return deliver
