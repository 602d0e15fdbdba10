"""The pinned helm against the local cluster: installing the chart so that its Deployment runs the
operator image on the real node (ChartOperator, a handle on that pod), and a kubeconfig that
authenticates as the chart's ServiceAccount (for a local operator process that must get exactly
the chart's RBAC)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from localcluster.binaries import cached_bin_dir
from localcluster.errors import ClusterError

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART = REPO_ROOT / "charts" / "paddle-finetune-operator"
CHART_NAME = "paddle-finetune-operator"


class HelmNotFound(ClusterError):
    """No helm binary: build-binaries.sh has not built it yet and none is on PATH."""


def helm_binary(bin_dir: Path | None = None) -> Path:
    """The helm that build-binaries.sh built (in `bin_dir`, $PFO_BIN_DIR or the cache), else one on
    PATH. Never builds: raises HelmNotFound instead."""
    candidates = [Path(d) / "helm" for d in (bin_dir, os.environ.get("PFO_BIN_DIR")) if d]
    candidates.append(cached_bin_dir() / "helm")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which("helm")
    if found:
        return Path(found)
    raise HelmNotFound("helm is not built yet: run `make binaries` (localcluster/build-binaries.sh)")


def helm(
    *args: str,
    bin_dir: Path | None = None,
    kubeconfig: str | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run helm (without the caller's HELM_* settings); raise ClusterError with its stderr when
    `check` and it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    proc = subprocess.run(
        [str(helm_binary(bin_dir)), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise ClusterError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def fullname(release: str) -> str:
    """The name the chart gives its objects (ServiceAccount, Deployment, ...) in `release`."""
    return release if CHART_NAME in release else f"{release}-{CHART_NAME}"[:63].rstrip("-")


def service_account_kubeconfig(cluster: Any, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig holding a bound token of `service_account` (`kubectl create token`, one hour),
    so a process using it gets exactly the RBAC the chart granted, nothing of the admin's."""
    token = cluster.kubectl("create", "token", service_account, "--duration=1h", namespace=namespace).stdout
    user = f"system:serviceaccount:{namespace}:{service_account}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "pfo-local",
                "cluster": {"server": cluster.server, "certificate-authority": str(cluster.ca_file)},
            }
        ],
        "users": [{"name": user, "user": {"token": token.strip()}}],
        "contexts": [{"name": "pfo-local", "context": {"cluster": "pfo-local", "user": user}}],
        "current-context": "pfo-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


# What kube-controller-manager, the scheduler and the kubelet need to start the operator's pod.
ROLLOUT_TIMEOUT = 120


def local_values(cluster: Any) -> list[str]:
    """The helm arguments that run the chart on the local cluster: the locally built operator image
    (imported into the real node; its reference is the chart's default unless images.build was
    told another prefix or tag) and the pod placed on the real node."""
    (image,) = cluster.load_images(["operator"])
    repository, tag = image.reference.rsplit(":", 1)
    extras = cluster.real_node_pod_spec_extras()
    return [
        "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
        "--set-json", f"nodeSelector={json.dumps(extras['nodeSelector'])}",
        "--set-json", f"tolerations={json.dumps(extras['tolerations'])}",
    ]  # fmt: skip


def install_chart(
    cluster: Any, namespace: str, *values: str, release: str = "pfo", timeout: float = ROLLOUT_TIMEOUT
) -> ChartOperator:
    """`helm upgrade --install` the chart into `namespace` (created if missing) with the locally
    built operator image, its pod placed on the real node (the chart's nodeSelector and
    tolerations values), and wait until the Deployment has rolled out: the pod Running with its
    ServiceAccount token, talking to the API server through the `kubernetes` Service. `values`:
    more helm arguments (`"--set", "watchNamespaces={a}"`). Idempotent; an upgrade that changes
    nothing keeps the running pod."""
    if cluster.kubectl("get", "namespace", namespace, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", namespace)
    helm(
        "upgrade", "--install", release, str(CHART), "--namespace", namespace,
        *local_values(cluster), *values, "--wait=false",
        bin_dir=cluster.bin_dir, kubeconfig=cluster.kubeconfig,
    )  # fmt: skip
    operator = ChartOperator(cluster, namespace, release)
    operator.wait_rolled_out(timeout)
    return operator


class ChartOperator:
    """The operator the chart's Deployment runs on the real node: by default two replicas with
    leader election, of which the Lease's holder acts (pod(), metrics and logs are the leader's)."""

    def __init__(self, cluster: Any, namespace: str, release: str = "pfo") -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.release = release
        self.name = fullname(release)

    def wait_rolled_out(self, timeout: float = ROLLOUT_TIMEOUT) -> None:
        proc = self.cluster.kubectl(
            "rollout", "status", f"deployment/{self.name}", f"--timeout={timeout:.0f}s",
            namespace=self.namespace, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            pods = self.cluster.kubectl("get", "pods", "-o", "wide", namespace=self.namespace, check=False)
            events = self.cluster.kubectl("get", "events", namespace=self.namespace, check=False)
            raise ClusterError(
                f"deployment {self.namespace}/{self.name} did not roll out: {proc.stderr.strip()}\n"
                f"{pods.stdout}\n{events.stdout[-3000:]}\n{self.log_tail(30)}"
            )

    def pods(self) -> list[dict[str, Any]]:
        """The Deployment's pods that are not being deleted."""
        selector = f"app.kubernetes.io/instance={self.release}"
        pods = json.loads(
            self.cluster.kubectl("get", "pods", "-l", selector, "-o", "json", namespace=self.namespace).stdout
        )["items"]
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def leader(self) -> str | None:
        """The pod name holding the chart's Lease (leader election names holders by pod name)."""
        proc = self.cluster.kubectl(
            "get", "lease", f"{self.name}-leader", "-o", "jsonpath={.spec.holderIdentity}",
            namespace=self.namespace, check=False,
        )  # fmt: skip
        return proc.stdout.strip() or None if proc.returncode == 0 else None

    def pod(self) -> dict[str, Any]:
        """The acting pod: the Lease holder if it is one of the Deployment's pods, else the newest."""
        alive = self.pods()
        if not alive:
            raise ClusterError(f"no pod of deployment {self.namespace}/{self.name}")
        holder = self.leader()
        leading = [p for p in alive if p["metadata"]["name"] == holder]
        return leading[0] if leading else max(alive, key=lambda p: p["metadata"]["creationTimestamp"])

    def metrics_url(self) -> str:
        """/metrics at the pod's IP: the host reaches pods on the node's bridge directly."""
        pod = self.pod()
        (container,) = pod["spec"]["containers"]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
        return f"http://{pod['status']['podIP']}:{port}/metrics"

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url(), timeout=5) as response:
            return response.read().decode()

    def log_tail(self, lines: int = 60) -> str:
        """The operator container's last log lines (through the API server and the kubelet)."""
        try:
            target = f"pod/{self.pod()['metadata']['name']}"
        except ClusterError:
            target = f"deployment/{self.name}"
        proc = self.cluster.kubectl("logs", target, f"--tail={lines}", namespace=self.namespace, check=False)
        return proc.stdout + proc.stderr

    def restarts(self) -> int:
        """Container restarts summed over all the Deployment's pods."""
        return sum(
            s.get("restartCount", 0) for p in self.pods() for s in p["status"].get("containerStatuses", [])
        )

    def probe_results(self, probe_type: str = "Liveness") -> dict[str, float]:
        """The kubelet's count of this pod's `probe_type` probe results, by result ("successful",
        "failed", "unknown"): its prober_probe_total metric (kubelet /metrics/probes)."""
        pod = self.pod()["metadata"]["name"]
        counts: dict[str, float] = {}
        for line in self.cluster.kubelet_get("/metrics/probes").splitlines():
            if line.startswith("prober_probe_total{") and f'pod="{pod}"' in line:
                labels, value = line.rsplit(" ", 1)
                if f'probe_type="{probe_type}"' in labels:
                    result = labels.split('result="', 1)[1].split('"', 1)[0]
                    counts[result] = counts.get(result, 0) + float(value)
        return counts

    def uninstall(self) -> None:
        helm(
            "uninstall", self.release, "--namespace", self.namespace, "--wait", "--timeout=60s",
            bin_dir=self.cluster.bin_dir, kubeconfig=self.cluster.kubeconfig, check=False,
        )  # fmt: skip
