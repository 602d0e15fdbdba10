"""`finetune-operator` as a local child process, for tests against the local control plane.

The operator's Deployment cannot run here (kwok's fake nodes run no containers), so tests start
the real program as a process with a kubeconfig of their choosing: the admin's, or one built
from a ServiceAccount token (`token_kubeconfig`) to prove what that account's RBAC allows.
Ports are picked free, settings go in as PFO_* variables (like the chart's Deployment), and the
log goes to a file the test can read and show on failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.harness import free_port


def token_kubeconfig(
    path: Path, server: str, ca_file: Path | str, token: str, user: str = "operator"
) -> Path:
    """Write a kubeconfig that authenticates with a bearer token (e.g. `kubectl create token`)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "pfo-local", "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "pfo-local", "context": {"cluster": "pfo-local", "user": user}}],
        "current-context": "pfo-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


class OperatorProcess:
    """One `finetune-operator` process; use as a context manager (stops it on exit)."""

    def __init__(
        self,
        kubeconfig: str | Path,
        log_path: Path,
        *,
        namespaces: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.kubeconfig = str(kubeconfig)
        self.log_path = log_path
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.env = {
            "PFO_NAMESPACES": ",".join(namespaces),
            "PFO_METRICS_PORT": str(self.metrics_port),
            "PFO_HEALTH_PORT": str(self.health_port),
            "PFO_LOG_FORMAT": "text",
            "PFO_LOG_LEVEL": "info",
            # Fast feedback in tests: progress reads and retries in seconds, not minutes.
            "PFO_PROGRESS_POLL_INTERVAL": "1",
            "PFO_BACKOFF_BASE": "1",
            "PFO_BACKOFF_MAX": "2",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    # --------------------------------------------------------------- lifecycle
    def start(self, ready_timeout: float = 60.0) -> OperatorProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PFO_", "KUBERNETES_"))}
        env.update(self.env, KUBECONFIG=self.kubeconfig, PYTHONUNBUFFERED="1")
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "finetune_operator"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: stop() signals only it
            )
        finally:
            log.close()
        self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until kopf's liveness endpoint answers 200 (the operator finished its startup)."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"finetune-operator not healthy after {timeout:.0f}s; log:\n{self.log()}"
                )
            time.sleep(0.3)

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"finetune-operator exited with {self.proc.returncode}; log:\n{self.log()}")

    def stop(self, grace: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)

    def __enter__(self) -> OperatorProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --------------------------------------------------------------- observation
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url(), timeout=5) as r:
            return r.read().decode()
