"""The real operator (`python -m finetune_operator`) as a local process against the local cluster:
started with free metrics and health ports, ready once /healthz answers, its output in one log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from localcluster.cluster import Cluster
from localcluster.errors import ClusterError
from localcluster.pki import PKI
from localcluster.processes import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
# Short timings so every lifecycle fits in seconds.
FAST_FLAGS = (
    "--backoff-base", "1",
    "--backoff-max", "2",
    "--progress-poll-interval", "1",
    "--start-timeout", "120",
    "--workers", "2",
)  # fmt: skip


class OperatorProcess:
    """One operator process watching `namespaces`; its output goes to `log_path`."""

    def __init__(
        self,
        cluster: Cluster,
        namespaces: Sequence[str],
        log_path: Path,
        extra: Sequence[str] = (),
        kubeconfig: str | None = None,  # default: the admin's; e.g. a ServiceAccount token's
        progress_ips: Sequence[str] = (),  # serve the progress endpoint, with a certificate for these
    ):
        self.cluster = cluster
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.namespaces = list(namespaces)
        self.log_path = log_path
        self.extra = list(extra)
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.progress_port = 0
        self.progress_ca: Path | None = None
        if progress_ips:
            self.extra += self._progress_flags(list(progress_ips))

    def _progress_flags(self, ips: list[str]) -> list[str]:
        """The progress endpoint on a free port, with a certificate from a CA of its own (in a
        folder beside the log), for pods that reach it at the first of `ips`."""
        pki = PKI(self.log_path.parent / f"{self.log_path.stem}-progress-pki")
        pair = pki.issue("progress", "finetune-operator", server_ips=tuple(ips))
        self.progress_port, self.progress_ca = free_port(), pki.ca.cert
        return [
            "--progress-port", str(self.progress_port),
            "--progress-url", f"https://{ips[0]}:{self.progress_port}",
            "--progress-tls-cert", str(pair.cert), "--progress-tls-key", str(pair.key),
            "--progress-ca", str(pki.ca.cert),
        ]  # fmt: skip

    def start(self, timeout: float = 60.0) -> None:
        argv = [
            sys.executable, "-m", "finetune_operator",
            "--namespaces", ",".join(self.namespaces),
            "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port),
            *FAST_FLAGS, *self.extra,
        ]  # fmt: skip
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            log.write(f"==== start {self.starts + 1}: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, start_new_session=True
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ClusterError(f"the operator exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as rsp:
                    if rsp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise ClusterError(f"the operator's /healthz did not answer within {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as when a node dies under the operator."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def signal(self, sig: int) -> None:
        """Send `sig` to the operator's process group (e.g. SIGSTOP/SIGCONT to freeze it)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    @property
    def returncode(self) -> int | None:
        """None while it runs (or before it started), else its exit status."""
        return self.proc.poll() if self.proc else None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as rsp:
            return rsp.read().decode()

    def leading(self) -> bool:
        """`finetune_leader` is 1: this process acts (with --leader-elect: it holds the Lease)."""
        try:
            text = self.metrics()
        except OSError:
            return False
        return any(
            line.split()[1:] == ["1.0"] for line in text.splitlines() if line.startswith("finetune_leader ")
        )

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
