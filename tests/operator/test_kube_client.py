"""The API client the reconciler's threads share keeps a connection for each of them.

The kubernetes client's pool holds 5 connections per CPU by default (10 on 2 cores): when more
threads' requests end together, the connections past that are closed, and the next burst opens
(and, against a real API server, TLS-handshakes) new ones. Counted on a local HTTP server with
keep-alive."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import kubernetes
import pytest
from finetune_operator.kube import load_api_client

THREADS = 16
ROUNDS = 6
_LOCK = threading.Lock()
VERSION = {
    "major": "1",
    "minor": "35",
    "gitVersion": "v1.35.4",
    "gitCommit": "0",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.26",
    "compiler": "gc",
    "platform": "linux/amd64",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0  # one handler per connection


class _Version(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a connection serves many requests

    def setup(self) -> None:
        super().setup()
        with _LOCK:
            self.server.connections += 1  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        time.sleep(0.02)  # the threads' requests overlap
        body = json.dumps(VERSION).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Version)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{httpd.server_port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    # $KUBECONFIG is read when kubernetes.config is imported: set where it was kept.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod: the kubeconfig
    default = kubernetes.client.Configuration.get_default_copy()
    try:
        yield httpd
    finally:
        kubernetes.client.Configuration.set_default(default)  # loading sets the process default
        httpd.shutdown()
        httpd.server_close()


def _connections_used(server: _Server, threads: int) -> int:
    """Rounds of THREADS requests at once, each round after the last one's all came back (as a
    burst of passes comes and goes): the connections the server accepted."""
    api = kubernetes.client.VersionApi(load_api_client(threads))
    between_rounds = threading.Barrier(THREADS)

    def worker(_: int) -> list[str]:
        versions = []
        for _ in range(ROUNDS):
            versions.append(api.get_code().git_version)
            between_rounds.wait(timeout=30)
        return versions

    with ThreadPoolExecutor(THREADS) as pool:
        versions = [v for vs in pool.map(worker, range(THREADS)) for v in vs]
    assert versions == ["v1.35.4"] * (THREADS * ROUNDS)
    return server.connections


def test_each_thread_keeps_its_connection(server: _Server) -> None:
    assert _connections_used(server, THREADS) <= THREADS


def test_the_default_pool_reconnects_with_more_threads_than_it_holds(
    server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: without `threads`, on 2 CPUs, the same requests open more."""
    monkeypatch.setattr(multiprocessing, "cpu_count", lambda: 2)
    assert _connections_used(server, 0) > THREADS
