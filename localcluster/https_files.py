"""A folder served over HTTPS with a self-signed certificate.

The CRD accepts only https:// URLs for pretrained weights, so the end-to-end test and `make demo`
serve the weights they made with this, on the address pods reach the host at (the real node's
bridge: Cluster.pod_host_ip()); the trainer trusts the certificate through REQUESTS_CA_BUNDLE
(the operator's --trainer-env), a copy of it in the job's dataset volume. In-process
(`serve_https`, a thread) for tests, or as its own process for the demo, which leaves it running
with the cluster:

    python -m localcluster.https_files --dir DIR --cert CERT --key KEY [--host IP] [--port N] [--port-file F]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import ssl
import subprocess
import threading
from pathlib import Path


def make_self_signed(cert: Path, key: Path, days: int = 30, ip: str = "127.0.0.1") -> None:
    """A certificate for IP `ip` (openssl), readable by the trainer's non-root user."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days),
         "-keyout", str(key), "-out", str(cert),
         "-subj", f"/CN={ip}", "-addext", f"subjectAltName=IP:{ip}"],
        check=True, capture_output=True,
    )  # fmt: skip
    cert.chmod(0o644)
    key.chmod(0o600)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # one line per request, no noise
        print(f"{self.address_string()} {format % args}", flush=True)


def serve_https(
    folder: Path, cert: Path, key: Path, port: int = 0, host: str = "127.0.0.1"
) -> http.server.ThreadingHTTPServer:
    """Serve `folder` on https://<host>:<port> from a daemon thread; `server.server_address[1]`
    is the port (0 picks a free one). Stop it with `shutdown()` and `server_close()`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster.https_files", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--dir", type=Path, required=True, help="the folder to serve")
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--port-file", type=Path, help="write the port here once serving")
    args = parser.parse_args(argv)
    server = serve_https(args.dir, args.cert, args.key, args.port, args.host)
    port = server.server_address[1]
    print(f"serving {args.dir} on https://{args.host}:{port}/", flush=True)
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(args.port_file)
    threading.Event().wait()  # until SIGTERM (make cluster-down)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
