"""The kubelet's container-log endpoint for the runner node: the API server proxies
`kubectl logs` and read_namespaced_pod_log here (HTTPS, client certificates from the cluster CA)."""

from __future__ import annotations

import http.server
import logging
import re
import ssl
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("runner")


class LogSource(Protocol):
    def find_log(self, ns: str, name: str, container: str) -> tuple[Any, Path | None]:
        """(the live pod worker or None, the container's log file or None)."""
        ...


class LogHandler(http.server.BaseHTTPRequestHandler):
    runner: LogSource

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("log server: " + format, *args)

    def _reply(self, code: int, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/healthz":
            return self._reply(200, "ok")
        m = re.fullmatch(r"/containerLogs/([^/]+)/([^/]+)/([^/]+)", url.path)
        if not m:
            return self._reply(404, f"not found: {url.path}")
        ns, name, container = (urllib.parse.unquote(p) for p in m.groups())
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        if q.get("previous") == "true":
            return self._reply(400, f'previous terminated container "{container}" in pod "{name}" not found')
        worker, logfile = self.runner.find_log(ns, name, container)
        if logfile is None:
            return self._reply(404, f'container "{container}" in pod "{name}" has no log on this node')
        data = logfile.read_bytes()
        if "tailLines" in q:
            n = int(q["tailLines"])
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-n:]) if n > 0 else b""
        limit = int(q["limitBytes"]) if "limitBytes" in q else None
        follow = q.get("follow") == "true" and worker is not None
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        if not follow:
            data = data[:limit] if limit is not None else data
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.end_headers()  # follow: stream until the container ends (HTTP/1.0: close ends the body)
        sent = 0
        with open(logfile, "rb") as f:
            f.seek(len(logfile.read_bytes()))
            chunks = [data]
            while True:
                for chunk in chunks:
                    if limit is not None:
                        chunk = chunk[: max(0, limit - sent)]
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    sent += len(chunk)
                if limit is not None and sent >= limit:
                    return
                alive = worker.running(container)
                chunk = f.read()
                if not chunk and not alive:
                    return
                chunks = [chunk]
                if not chunk:
                    time.sleep(0.2)


def serve_logs(source: LogSource, port: int, cert: str, key: str, client_ca: str) -> None:
    """Serve container logs on 127.0.0.1:`port` in a background thread."""
    handler = type("Handler", (LogHandler,), {"runner": source})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(client_ca)
    ctx.verify_mode = ssl.CERT_REQUIRED  # only clients with a certificate from the cluster CA
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True, name="log-server").start()
