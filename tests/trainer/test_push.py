"""The trainer's progress push (finetune_trainer.push) against a real HTTPS server on 127.0.0.1.

The server's certificate comes from the repository's PKI (openssl), as the operator's would from
its CA; a second PKI plays a CA the trainer was not told about.
"""

from __future__ import annotations

import http.server
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from finetune_contract import (
    PROGRESS_PREFIX,
    PUSH_BODY_LIMIT,
    PUSH_CA_ENV,
    PUSH_URL_ENV,
    progress_record,
)
from finetune_trainer import push, report
from finetune_trainer.push import ProgressPush

from localcluster.pki import PKI

PATH = "/v1/progress/team-a/flowers"
TOKEN = "eyJhbGciOiJFUzI1NiJ9.secret-token-one"
RECORD = progress_record(3, 20, phase="Training", top1=0.5, bestEpoch=2)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    url: str
    statuses: list[int]  # answered in turn; 202 once they run out
    received: list[Received] = field(default_factory=list)


def _handler(server: Server) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            server.received.append(Received(self.path, dict(self.headers), body))
            status = server.statuses.pop(0) if server.statuses else 202
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # quiet: stderr is asserted on
            pass

    return Handler


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("other-pki"))


def _serve(ca: PKI, name: str = "server", ips: tuple[str, ...] = ("127.0.0.1",)) -> Iterator[Server]:
    pair = ca.issue(name, "localhost", server_names=("localhost",), server_ips=ips)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pair.cert, pair.key)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    server = Server(f"https://127.0.0.1:{httpd.server_address[1]}{PATH}", statuses=[])
    httpd.RequestHandlerClass = _handler(server)
    httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def server(pki: PKI) -> Iterator[Server]:
    yield from _serve(pki)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")  # the kubelet's file has no newline; a trailing one is stripped
    return path


def _env(url: str, pki: PKI) -> dict[str, str]:
    return {PUSH_URL_ENV: url, PUSH_CA_ENV: pki.ca.cert.read_text()}


def _pusher(url: str, pki: PKI, token_file: Path) -> ProgressPush:
    pusher = ProgressPush.from_env(_env(url, pki), token_path=token_file)
    assert pusher is not None
    return pusher


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_record_and_the_token_arrive(server: Server, pki: PKI, token_file: Path) -> None:
    assert _pusher(server.url, pki, token_file).send(RECORD) is True
    (got,) = server.received
    assert got.path == PATH
    assert json.loads(got.body) == RECORD
    assert got.body == json.dumps(RECORD, separators=(",", ":"), sort_keys=True).encode()
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["Authorization"] == f"Bearer {TOKEN}"


def test_a_rotated_token_is_read_afresh(server: Server, pki: PKI, token_file: Path) -> None:
    pusher = _pusher(server.url, pki, token_file)
    assert pusher.send(RECORD)
    token_file.write_text("rotated-token-two")
    assert pusher.send(progress_record(4, 20))
    assert [r.headers["Authorization"] for r in server.received] == [
        f"Bearer {TOKEN}",
        "Bearer rotated-token-two",
    ]
    assert [json.loads(r.body)["epoch"] for r in server.received] == [3, 4]


def test_a_missing_token_sends_nothing(server: Server, pki: PKI, tmp_path: Path) -> None:
    pusher = _pusher(server.url, pki, tmp_path / "absent")
    assert pusher.send(RECORD) is False
    assert server.received == []


def test_a_certificate_from_another_ca_is_refused(
    pki: PKI, other_pki: PKI, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for impostor in _serve(other_pki):
        pusher = _pusher(impostor.url, pki, token_file)  # trusts `pki` only
        started = time.monotonic()
        assert pusher.send(RECORD) is False
        assert time.monotonic() - started < 2  # not retried: another attempt would not cure it
        assert impostor.received == []
    err = capsys.readouterr().err
    assert "certificate refused" in err
    assert TOKEN not in err


def test_a_certificate_for_another_host_is_refused(pki: PKI, token_file: Path) -> None:
    for elsewhere in _serve(pki, "elsewhere", ips=("10.0.0.1",)):  # the right CA, not 127.0.0.1's
        assert _pusher(elsewhere.url, pki, token_file).send(RECORD) is False
        assert elsewhere.received == []


def test_the_urls_and_cas_refused(pki: PKI, capsys: pytest.CaptureFixture[str]) -> None:
    ca = pki.ca.cert.read_text()
    assert ProgressPush.from_env({}) is None
    assert ProgressPush.from_env({PUSH_URL_ENV: "", PUSH_CA_ENV: ca}) is None
    assert capsys.readouterr().err == ""  # no push asked for: nothing to say
    assert ProgressPush.from_env({PUSH_URL_ENV: "http://127.0.0.1:1" + PATH, PUSH_CA_ENV: ca}) is None
    assert "not an https:// URL" in capsys.readouterr().err
    # An empty CA would make ssl trust the system's CAs instead.
    assert ProgressPush.from_env({PUSH_URL_ENV: "https://127.0.0.1:1" + PATH}) is None
    assert ProgressPush.from_env({PUSH_URL_ENV: "https://127.0.0.1:1" + PATH, PUSH_CA_ENV: " "}) is None
    assert ProgressPush.from_env({PUSH_URL_ENV: "https://x" + PATH, PUSH_CA_ENV: "not a PEM"}) is None
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(line.startswith("[finetune] progress push disabled") for line in lines)


def test_a_503_is_retried(
    server: Server, pki: PKI, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(push.time, "sleep", pauses.append)
    server.statuses[:] = [503, 500]
    assert _pusher(server.url, pki, token_file).send(RECORD) is True
    assert len(server.received) == 3
    assert all(json.loads(r.body) == RECORD for r in server.received)
    assert pauses == list(push.PAUSES)


def test_three_5xx_fail(
    server: Server, pki: PKI, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.statuses[:] = [503, 503, 503, 503]
    assert _pusher(server.url, pki, token_file).send(RECORD) is False
    assert len(server.received) == 3
    assert "HTTP 503, 3 attempt(s)" in capsys.readouterr().err


@pytest.mark.parametrize("status", [400, 401, 403, 413, 429])
def test_a_4xx_is_final(status: int, server: Server, pki: PKI, token_file: Path) -> None:
    server.statuses[:] = [status]
    assert _pusher(server.url, pki, token_file).send(RECORD) is False
    assert len(server.received) == 1


def test_a_closed_port_fails_quickly(pki: PKI, token_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pusher = _pusher(f"https://127.0.0.1:{_closed_port()}{PATH}", pki, token_file)
    started = time.monotonic()
    assert pusher.send(RECORD) is False
    assert time.monotonic() - started < 3  # three refused connections and the two pauses
    err = capsys.readouterr().err
    assert "[finetune] progress push failed (cannot connect" in err
    assert "3 attempt(s)" in err


def test_an_operator_never_reached_is_given_up_after_three_sends(
    pki: PKI, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each unreachable send costs the training up to the deadline: after three in a row, none."""
    pusher = _pusher(f"https://127.0.0.1:{_closed_port()}{PATH}", pki, token_file)
    assert [pusher.send(RECORD) for _ in range(3)] == [False] * 3
    assert "the log alone carries progress from now on" in capsys.readouterr().err
    started = time.monotonic()
    assert pusher.send(RECORD) is False
    assert time.monotonic() - started < 0.05  # no connection tried
    assert pusher.failures == 3


def test_a_name_that_does_not_resolve_is_given_up_at_once(
    pki: PKI, token_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No cluster DNS (the local real node) or no such Service: one lookup, then no more pushes."""
    import socket

    lookups = []

    def no_name(*args: object, **kwargs: object) -> None:
        lookups.append(args[0])
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_name)
    pusher = _pusher(f"https://pfo-progress.ops.svc:8443{PATH}", pki, token_file)
    assert pusher.send(RECORD) is False
    assert pusher.send(RECORD) is False
    assert lookups == ["pfo-progress.ops.svc"]
    assert "the operator's name does not resolve" in capsys.readouterr().err


def test_an_answer_resets_the_count_of_unreachable_sends(server: Server, pki: PKI, token_file: Path) -> None:
    pusher = _pusher(server.url, pki, token_file)
    pusher.unreachable = 2
    assert pusher.send(RECORD) is True
    assert pusher.unreachable == 0


def test_an_oversize_record_is_not_sent(server: Server, pki: PKI, token_file: Path) -> None:
    record = progress_record(1, 2, note="x" * PUSH_BODY_LIMIT)
    assert _pusher(server.url, pki, token_file).send(record) is False
    assert server.received == []
    # One just at the limit goes.
    fill = PUSH_BODY_LIMIT - len(json.dumps(progress_record(1, 2, note=""), separators=(",", ":")))
    assert _pusher(server.url, pki, token_file).send(progress_record(1, 2, note="x" * fill)) is True
    assert len(server.received) == 1 and len(server.received[0].body) == PUSH_BODY_LIMIT


def test_failures_are_logged_first_then_every_tenth_without_the_token(
    server: Server, pki: PKI, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pusher = _pusher(server.url, pki, token_file)
    server.statuses[:] = [401] * 20
    assert [pusher.send(RECORD) for _ in range(20)] == [False] * 20
    assert len(server.received) == 20
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"[finetune] progress push failed (HTTP 401); {n} failure(s) so far, progress is still in the log"
        for n in (1, 10, 20)
    ]
    # A token no HTTP header may carry: the error names the header value, the log must not.
    token_file.write_text("bad\ntoken-" + TOKEN)
    pusher.failures = 0
    assert pusher.send(RECORD) is False
    err = capsys.readouterr().err
    assert err.startswith("[finetune] progress push failed (")
    assert TOKEN not in err
    assert len(server.received) == 20


def test_print_progress_prints_and_pushes(
    server: Server,
    pki: PKI,
    token_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in _env(server.url, pki).items():
        monkeypatch.setenv(name, value)
    # The pod's token path, here the test's file; the URL and the CA still come from os.environ.
    monkeypatch.setattr(
        report, "ProgressPush", SimpleNamespace(from_env=lambda env: ProgressPush.from_env(env, token_file))
    )
    report.progress_pusher.cache_clear()
    try:
        report.print_progress(False, 1, 5, top1=0.25)  # not rank 0: neither
        report.print_progress(True, 2, 5, top1=0.5, valLoss=None)
    finally:
        report.progress_pusher.cache_clear()
    out = capsys.readouterr().out.splitlines()
    assert out == [PROGRESS_PREFIX + '{"epoch":2,"epochs":5,"top1":0.5}']
    (got,) = server.received
    assert json.loads(got.body) == {"epoch": 2, "epochs": 5, "top1": 0.5}
    assert got.headers["Authorization"] == f"Bearer {TOKEN}"


def test_print_progress_without_a_url_only_prints(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(PUSH_URL_ENV, raising=False)
    report.progress_pusher.cache_clear()
    try:
        report.print_progress(True, 0, 5)
        assert report.progress_pusher() is None
    finally:
        report.progress_pusher.cache_clear()
    captured = capsys.readouterr()
    assert captured.out == PROGRESS_PREFIX + '{"epoch":0,"epochs":5}\n'
    assert captured.err == ""
