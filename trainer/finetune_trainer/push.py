"""Progress pushed to the operator: each progress record POSTed over HTTPS, besides the log line.

The operator sets the URL and its CA in the pod's environment and mounts a ServiceAccount token
for this job's audience. A push is best effort: it never raises and is bounded in time (about
10 s at worst), and a record that does not arrive is still in the log, which the operator reads
when it hears nothing. Stdlib only (urllib), no new dependency.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from finetune_contract import PUSH_BODY_LIMIT, PUSH_CA_ENV, PUSH_TOKEN_DIR, PUSH_TOKEN_FILE, PUSH_URL_ENV

TIMEOUT = 3.0  # seconds, per socket operation of one attempt
PAUSES = (0.2, 0.5)  # between attempts: 3 attempts in all
DEADLINE = 10.0  # seconds: no attempt is started that could end after this
LOG_EVERY = 10  # failures: the first is logged, then every 10th
GIVE_UP_AFTER = 3  # sends in a row that reach no operator: push no more in this run


def _say(message: str) -> None:
    print(f"[finetune] {message}", file=sys.stderr, flush=True)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failure: following it would carry the bearer token to another place."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Final(Exception):
    """A failure another attempt would not cure (a 4xx, a certificate refused, a bad header)."""


class ProgressPush:
    """POSTs progress records to one URL, with a token read from `token_path` for every request."""

    def __init__(self, url: str, context: ssl.SSLContext, token_path: Path) -> None:
        self.url = url
        self.token_path = token_path
        self.failures = 0
        self.unreachable = 0  # sends in a row that reached no operator
        # No proxy: the operator is in the cluster, and the token should not take a detour.
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context), _NoRedirect()
        )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], token_path: Path = Path(PUSH_TOKEN_DIR) / PUSH_TOKEN_FILE
    ) -> ProgressPush | None:
        """The pusher the pod's environment asks for; None when it asks for none or cannot have one
        (then the reason is said once on stderr and the log alone carries progress)."""
        url = environ.get(PUSH_URL_ENV, "").strip()
        if not url:
            return None
        if not url.lower().startswith("https://"):
            _say(f"progress push disabled: {PUSH_URL_ENV} is not an https:// URL (the token is a credential)")
            return None
        pem = environ.get(PUSH_CA_ENV, "").strip()
        if not pem:  # an empty cadata would make ssl fall back to the system's CAs
            _say(f"progress push disabled: {PUSH_CA_ENV} is not set")
            return None
        try:
            context = ssl.create_default_context(cadata=pem)  # CERT_REQUIRED, hostname checked
        except (ssl.SSLError, ValueError) as exc:
            _say(f"progress push disabled: {PUSH_CA_ENV} holds no usable CA certificate ({exc})")
            return None
        return cls(url, context, token_path)

    def send(self, record: dict[str, Any]) -> bool:
        """POST one record; True when the operator accepted it (2xx). Never raises. After
        `GIVE_UP_AFTER` sends in a row that reached no operator (no route, no name, timeouts), it
        sends nothing more: each would cost the training up to `DEADLINE` seconds, and the log
        carries the progress anyway."""
        if self.unreachable >= GIVE_UP_AFTER:
            return False
        token = ""
        try:
            body = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
            if len(body) > PUSH_BODY_LIMIT:
                return self._failed(f"record of {len(body)} bytes is over {PUSH_BODY_LIMIT}", token)
            try:
                token = self.token_path.read_text().strip()
            except OSError as exc:
                return self._failed(f"cannot read the token: {exc.strerror or exc}", token)
            if not token:
                return self._failed(f"the token file {self.token_path} is empty", token)
            return self._post(body, token)
        except Exception as exc:  # never let a push end the training
            # Once the token is read, an unforeseen error's text may quote it (http.client quotes
            # a header value it refuses, escaped so no replace finds it): name the error only.
            return self._failed(type(exc).__name__ if token else f"{type(exc).__name__}: {exc}", token)

    def _post(self, body: bytes, token: str) -> bool:
        start = time.monotonic()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        reason, attempts = "", 0
        for pause in (*PAUSES, None):
            attempts += 1
            try:
                # A fresh connection each attempt: behind a Service it may reach the other replica.
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with self._opener.open(request, timeout=TIMEOUT) as response:
                    response.read(PUSH_BODY_LIMIT)
                self.unreachable = 0
                return True
            except urllib.error.HTTPError as exc:
                exc.close()
                reason = f"HTTP {exc.code}"
                if exc.code < 500:  # 4xx (429: the operator's rate limit) is final for this record
                    self.unreachable = 0
                    return self._failed(reason, token)
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, ssl.SSLCertVerificationError):
                    return self._failed(f"certificate refused: {exc.reason.verify_message}", token)
                if isinstance(exc.reason, socket.gaierror):
                    # No such name here (no cluster DNS, a Service that is not there): no retry
                    # will find it in this run, and each lookup may take seconds.
                    self.unreachable = GIVE_UP_AFTER
                    _say(
                        "progress push: the operator's name does not resolve; the log alone carries progress"
                    )
                    return self._failed(f"cannot resolve: {exc.reason}", token)
                reason = f"cannot connect: {exc.reason}"
            except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, bad answers
                reason = f"{type(exc).__name__}: {exc}"
            if pause is None or time.monotonic() - start + pause + TIMEOUT > DEADLINE:
                break
            time.sleep(pause)
        self.unreachable += 1
        if self.unreachable == GIVE_UP_AFTER:
            _say(
                f"progress push: no operator reached {GIVE_UP_AFTER} times in a row; "
                "the log alone carries progress from now on"
            )
        return self._failed(f"{reason}, {attempts} attempt(s)", token)

    def _failed(self, reason: str, token: str) -> bool:
        self.failures += 1
        if self.failures == 1 or self.failures % LOG_EVERY == 0:
            if token:
                reason = reason.replace(token, "<token>")
            _say(
                f"progress push failed ({reason}); {self.failures} failure(s) so far, "
                "progress is still in the log"
            )
        return False
