"""Kueue (sigs.k8s.io/kueue, pinned in versions.env) beside a local cluster, started when asked.

    kueue = start_kueue(cluster)        # idempotent; stopped with the cluster (a companion)
    python -m localcluster.kueue up     # the same beside `make cluster-up`'s cluster
    kueue.enable_namespace(ns)          # Kueue manages pods and Jobs there (kueue-config.yaml)
    kueue.apply(queue_objects("team-a", ns, gpus=8))   # ResourceFlavor, ClusterQueue, LocalQueue

How it is wired, given that this cluster has no kube-proxy and no cluster DNS:

* The manifests are the release's own: the Helm chart of the same Go module version (copied next
  to the binary by build-binaries.sh), rendered by `helm template` with our Configuration, so the
  webhooks' failure policies and namespace selectors follow it as in a Helm install. Left out:
  the Deployment and its ConfigMap (Kueue runs as a local process), the metrics Service and the
  pending-workloads APIServices (VisibilityOnDemand is off, see kueue-config.yaml).
* Webhooks: the webhook configurations and the CRDs' conversion webhooks keep their Service
  reference (kueue-system/kueue-webhook-service). That Service is an ExternalName service for
  127.0.0.1: the API server turns an ExternalName reference into https://<externalName>:<port>
  (a ClusterIP would need kube-proxy) and checks the serving certificate against
  <service>.<namespace>.svc, the name Kueue's internal certificate management signs and whose CA
  it injects into those configurations. Only the port differs from a real install: each
  reference names the webhook port picked for this cluster.
* Kueue's certificate management writes its certificate into a Secret and expects the kubelet
  to mount that Secret at the webhook certificate folder; start_kueue does that copy once (the
  certificate is valid for 10 years, so it never rotates while a test cluster lives).
* Identity: a client certificate for system:serviceaccount:kueue-system:kueue-controller-manager
  (groups system:serviceaccounts[:kueue-system]), so the release's RBAC bindings apply unchanged.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from localcluster.binaries import BUILD_SCRIPT, HERE
from localcluster.cluster import DEFAULT_STATE_DIR, Cluster, attach
from localcluster.errors import ClusterError
from localcluster.pki import PKI
from localcluster.processes import free_port, pid_alive
from localcluster.start import write_kubeconfig

NAMESPACE = "kueue-system"
RELEASE = "kueue"  # the chart's fullname: every object is kueue-<name>
SERVICE_ACCOUNT = f"{RELEASE}-controller-manager"
WEBHOOK_SERVICE = f"{RELEASE}-webhook-service"
CONFIG_FILE = HERE / "kueue-config.yaml"
# The label a namespace carries to have its pods and Jobs managed (managedJobsNamespaceSelector).
NAMESPACE_LABEL = ("pfo.dev/kueue", "enabled")

# What a workload carries (Kueue v0.17, pkg/controller/constants and pkg/controller/jobs/pod).
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"
POD_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
POD_GROUP_COUNT_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
SCHEDULING_GATE = "kueue.x-k8s.io/admission"
# Added too by the pod webhook while TopologyAwareScheduling (beta, on) is on; removed at admission
# when the flavor has no topology.
TOPOLOGY_GATE = "kueue.x-k8s.io/topology"
MANAGED_LABEL = "kueue.x-k8s.io/managed"  # also the finalizer Kueue puts on the pods it manages

# Rendered kinds that are not applied (see the module docstring).
_LEFT_OUT_KINDS = {"Deployment", "ConfigMap", "PodDisruptionBudget", "APIService"}


def kueue_dir() -> Path:
    """Kueue's cache directory (binary `kueue`, chart `chart/`): $PFO_KUEUE_DIR, or
    build-binaries.sh (a no-op when warm)."""
    if os.environ.get("PFO_KUEUE_DIR"):
        return Path(os.environ["PFO_KUEUE_DIR"])
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "kueue"],
        stdout=subprocess.PIPE, stderr=None, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise ClusterError("localcluster/build-binaries.sh kueue failed (see its messages above)")
    return Path(proc.stdout.strip().splitlines()[-1])


def kueue_configuration(
    webhook_port: int, metrics_port: int, health_port: int, cert_dir: Path
) -> dict[str, Any]:
    """kueue-config.yaml with what differs per cluster."""
    config = yaml.safe_load(CONFIG_FILE.read_text())
    config.update(
        namespace=NAMESPACE,
        webhook={"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        metrics={"bindAddress": f"127.0.0.1:{metrics_port}"},
        health={"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        leaderElection={"leaderElect": False},
    )
    config["internalCertManagement"] = {
        **config.get("internalCertManagement", {}),
        "webhookServiceName": WEBHOOK_SERVICE,
        "webhookSecretName": f"{RELEASE}-webhook-server-cert",
    }
    return config


def render_chart(helm: Path, chart: Path, config: dict[str, Any], workdir: Path) -> list[dict[str, Any]]:
    """The chart's objects for `config` (helm template; nothing is installed)."""
    values = workdir / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {"managerConfig": {"controllerManagerConfigYaml": yaml.safe_dump(config, sort_keys=False)}}
        )
    )
    proc = subprocess.run(
        [str(helm), "template", RELEASE, str(chart), "--namespace", NAMESPACE, "--values", str(values)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise ClusterError(f"helm template {chart} failed: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def adapt_manifests(docs: list[dict[str, Any]], webhook_port: int) -> list[dict[str, Any]]:
    """The rendered objects as this cluster needs them (pure): Kueue runs as a local process, its
    webhook Service is ExternalName 127.0.0.1 and every reference to it names `webhook_port`."""
    out: list[dict[str, Any]] = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in _LEFT_OUT_KINDS or (kind == "Service" and name != WEBHOOK_SERVICE):
            continue
        if kind == "Service":
            doc["spec"] = {"type": "ExternalName", "externalName": "127.0.0.1"}
        elif kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            for hook in doc.get("webhooks", []):
                _point_at_port(hook["clientConfig"], webhook_port)
        elif kind == "CustomResourceDefinition":
            conversion = doc["spec"].get("conversion") or {}
            if conversion.get("strategy") == "Webhook":
                _point_at_port(conversion["webhook"]["clientConfig"], webhook_port)
        out.append(doc)
    return out


def _point_at_port(client_config: dict[str, Any], port: int) -> None:
    service = client_config.get("service")
    if not service or service.get("name") != WEBHOOK_SERVICE or service.get("namespace") != NAMESPACE:
        raise ClusterError(f"unexpected webhook client config in Kueue's chart: {client_config}")
    service["port"] = port


def queue_objects(
    name: str,
    namespace: str,
    gpus: int,
    *,
    cpu: str = "1000",
    memory: str = "10Ti",
    preemption: str = "LowerPriority",
    gpu_resource: str = "nvidia.com/gpu",
) -> list[dict[str, Any]]:
    """A ResourceFlavor `<name>-flavor`, a ClusterQueue `<name>` for `namespace` only with `gpus`
    GPUs of quota (cpu and memory covered generously: Kueue admits only what its ClusterQueue
    covers), preempting within the queue by priority, and a LocalQueue `<name>` in `namespace`."""
    flavor = f"{name}-flavor"
    return [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": flavor}},
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "preemption": {"withinClusterQueue": preemption},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", gpu_resource],
                        "flavors": [
                            {
                                "name": flavor,
                                "resources": [
                                    {"name": "cpu", "nominalQuota": cpu},
                                    {"name": "memory", "nominalQuota": memory},
                                    {"name": gpu_resource, "nominalQuota": gpus},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterQueue": name},
        },
    ]


def priority_class(name: str, value: int) -> dict[str, Any]:
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "WorkloadPriorityClass",
        "metadata": {"name": name},
        "value": value,
    }


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The status condition of type `kind`, or None."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c
    return None


def is_gated(pod: dict[str, Any]) -> bool:
    """Kueue still holds the pod (one of its scheduling gates is there)."""
    return any(
        g.get("name") in (SCHEDULING_GATE, TOPOLOGY_GATE) for g in pod["spec"].get("schedulingGates") or []
    )


class Kueue:
    """A Kueue process serving one local cluster; its record is <state_dir>/kueue/state.json."""

    def __init__(self, cluster: Cluster, state: dict[str, Any]) -> None:
        self.cluster = cluster
        self.state = state
        self.pid: int = state["pid"]
        self.marker: str = state["marker"]
        self.log = Path(state["log"])

    @classmethod
    def attach(cls, cluster: Cluster) -> Kueue | None:
        try:
            state = json.loads((cluster.state_dir / "kueue" / "state.json").read_text())
        except (OSError, ValueError):
            return None
        return cls(cluster, state)

    def running(self) -> bool:
        return pid_alive(self.pid, self.marker)

    def ready(self) -> bool:
        """Kueue's own readiness check (certificates ready, webhook server started)."""
        url = f"http://127.0.0.1:{self.state['health_port']}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (a fixed local URL)
                return resp.status == 200
        except OSError:
            return False

    def rss_bytes(self) -> int:
        """The Kueue process's resident memory."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ClusterError(f"no VmRSS for Kueue (pid {self.pid})")

    def stop(self) -> None:
        """Stop the process (its objects stay: pods in opted-in namespaces then cannot be created)."""
        fresh = attach(self.cluster.state_dir)  # the companion record as state.json has it now
        if fresh is not None:
            fresh.stop_companion("kueue")

    def restart(self, overrides: dict[str, Any] | None = None, timeout: float = 90.0) -> Kueue:
        """Restart the process with kueue-config.yaml plus `overrides` (top-level fields; None: the
        file as it is). Fields the webhooks depend on cannot change this way."""
        fixed = {
            "managedJobsNamespaceSelector",
            "integrations",
            "internalCertManagement",
            "namespace",
            "webhook",
        }
        if overrides and fixed & set(overrides):
            raise ValueError(
                f"restart: {sorted(fixed & set(overrides))} would need the manifests installed again"
            )
        self.stop()
        st = self.state
        cert_dir = self.cluster.state_dir / "kueue" / "webhook-certs"
        config = kueue_configuration(st["webhook_port"], st["metrics_port"], st["health_port"], cert_dir)
        config.update(overrides or {})
        Path(st["config"]).write_text(yaml.safe_dump(config, sort_keys=False))
        try:
            kueue = _run(self.cluster, st, timeout)
        except KueueExited as exc:  # once more: the same ports, which the manifests name
            print(f"localcluster: {exc}\nstarting Kueue again", file=sys.stderr)
            kueue = _run(self.cluster, st, timeout)
        self.pid = kueue.pid
        return kueue

    # -------------------------------------------------------------- objects
    def apply(self, objects: list[dict[str, Any]]) -> None:
        self.cluster.kubectl(
            "apply", "--server-side", "--field-manager=pfo-tests", "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
        )  # fmt: skip

    def wait_active(self, name: str, namespace: str, timeout: float = 30.0) -> float:
        """Wait until ClusterQueue `name` and LocalQueue `namespace/name` say Active (a queue admits
        nothing before); returns the seconds waited."""
        t0 = time.monotonic()

        def active() -> bool:
            cq = self.get("clusterqueues.kueue.x-k8s.io", name)
            lq = self.get("localqueues.kueue.x-k8s.io", name, namespace)
            return all((condition(q or {}, "Active") or {}).get("status") == "True" for q in (cq, lq))

        self.cluster.wait_for(
            f"ClusterQueue {name} and LocalQueue {namespace}/{name} Active", active, timeout
        )
        return time.monotonic() - t0

    def enable_namespace(self, namespace: str) -> None:
        key, value = NAMESPACE_LABEL
        self.cluster.kubectl("label", "namespace", namespace, f"{key}={value}", "--overwrite")

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        proc = self.cluster.kubectl("get", kind, name, "-o", "json", namespace=namespace, check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr:
                return None
            raise ClusterError(f"kubectl get {kind} {name}: {proc.stderr.strip()}")
        return json.loads(proc.stdout)

    def workloads(self, namespace: str) -> list[dict[str, Any]]:
        proc = self.cluster.kubectl("get", "workloads.kueue.x-k8s.io", "-o", "json", namespace=namespace)
        return json.loads(proc.stdout)["items"]


def _mount_certificate(cluster: Cluster, cert_dir: Path) -> bool:
    """What the kubelet's Secret volume does for Kueue's pod: copy the serving certificate that
    Kueue's certificate management stored in its Secret into the webhook certificate folder.
    False while the Secret has none yet."""
    proc = cluster.kubectl(
        "get", "secret", f"{RELEASE}-webhook-server-cert", "-o", "jsonpath={.data}", namespace=NAMESPACE,
        check=False,
    )  # fmt: skip
    data = json.loads(proc.stdout or "{}") if proc.returncode == 0 else {}
    if not data.get("tls.crt") or not data.get("tls.key"):
        return False
    cert_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in ("tls.key", "ca.crt", "tls.crt"):  # tls.crt last: Kueue waits for that file
        path = cert_dir / name
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(base64.b64decode(data[name]))
        tmp.chmod(0o600)
        tmp.replace(path)
    return True


class KueueExited(ClusterError):
    """Kueue's process ended while it was starting."""


def start_kueue(cluster: Cluster, *, timeout: float = 90.0, attempts: int = 2) -> Kueue:
    """Install Kueue's CRDs, RBAC and webhooks into `cluster` and start Kueue (or return the one
    already running there). Stopping the cluster stops it.

    A Kueue that exits while starting is started once more on fresh ports: its ports are picked
    free beforehand, and on a busy host another process can take one before Kueue binds it."""
    existing = Kueue.attach(cluster)
    if existing is not None and existing.running():
        return existing
    for attempt in range(1, attempts + 1):
        try:
            return _install_and_run(cluster, timeout)
        except KueueExited as exc:
            if attempt == attempts:
                raise
            print(f"localcluster: {exc}\nstarting Kueue again", file=sys.stderr)
    raise AssertionError("unreachable")


def _install_and_run(cluster: Cluster, timeout: float) -> Kueue:
    t0 = time.monotonic()
    home = kueue_dir()
    d = cluster.state_dir / "kueue"
    d.mkdir(exist_ok=True)
    ports = {"webhook": free_port(), "metrics": free_port(), "health": free_port()}
    config = kueue_configuration(ports["webhook"], ports["metrics"], ports["health"], d / "webhook-certs")
    config_path = d / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    pki = PKI(cluster.state_dir / "pki")
    ident = pki.issue(
        "kueue", f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}",
        ("system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}"),
    )  # fmt: skip
    write_kubeconfig(d / "kubeconfig", cluster.server, pki.ca.cert, ident.cert, ident.key, "kueue")

    if cluster.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", NAMESPACE)
    rendered = render_chart(cluster.bin_dir / "helm", home / "chart", config, d)
    objects = adapt_manifests(rendered, ports["webhook"])
    # Server-side apply: the Workload CRD is too large for kubectl's last-applied annotation.
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=pfo-harness", "-f", "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
    )  # fmt: skip
    crds = [o["metadata"]["name"] for o in objects if o["kind"] == "CustomResourceDefinition"]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{c}" for c in crds])
    state = {
        "binary": str(home / "kueue"),
        "config": str(config_path),
        "marker": str(config_path),
        "log": str(cluster.state_dir / "logs" / "kueue.log"),
        "install_seconds": round(time.monotonic() - t0, 1),
        **{f"{k}_port": v for k, v in ports.items()},
    }
    return _run(cluster, state, timeout)


def _end(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """Stop a Kueue this process started (its whole process group) and reap it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(unreadable: {exc})"


def _run(cluster: Cluster, state: dict[str, Any], timeout: float) -> Kueue:
    """Start the Kueue process `state` describes and wait until the API server reaches its webhooks."""
    t0 = time.monotonic()
    d = cluster.state_dir / "kueue"
    with Path(state["log"]).open("ab") as log:
        proc = subprocess.Popen(
            [state["binary"], "--config", state["config"], "--kubeconfig", str(d / "kubeconfig")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    cluster.add_companion("kueue", proc.pid, state["marker"])
    state["pid"] = proc.pid
    kueue = Kueue(cluster, state)
    cert_dir = Path(yaml.safe_load(Path(state["config"]).read_text())["webhook"]["certDir"])

    def webhooks_answer() -> bool:
        # Our own child: poll() cannot mistake it for another process (its pid stays ours until it
        # is reaped), and says how it ended.
        if proc.poll() is not None:
            raise KueueExited(
                f"Kueue exited with {proc.returncode}; {state['log']} ends with:\n{_tail(Path(state['log']))}"
            )
        if not (cert_dir / "tls.crt").exists() and not _mount_certificate(cluster, cert_dir):
            return False
        if not kueue.ready():
            return False
        # A server-side dry run passes through Kueue's validating webhook: the API server reaches it.
        probe = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
                 "metadata": {"name": "pfo-webhook-probe"}}  # fmt: skip
        dry_run = cluster.kubectl(
            "create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False
        )
        return dry_run.returncode == 0

    try:
        cluster.wait_for(
            "Kueue ready and its webhooks reachable from the API server", webhooks_answer, timeout
        )
    except BaseException:
        _end(proc)
        raise
    state["start_seconds"] = round(time.monotonic() - t0, 1)
    (d / "state.json").write_text(json.dumps(state, indent=2))
    return kueue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster.kueue", description="Start Kueue beside a running local cluster."
    )
    parser.add_argument("action", choices=["up", "status"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    cluster = attach(args.state_dir.resolve())
    if cluster is None or not cluster.healthy():
        print(f"no running cluster in {args.state_dir} (make cluster-up)", file=sys.stderr)
        return 1
    if args.action == "status":
        kueue = Kueue.attach(cluster)
        ok = kueue is not None and kueue.running() and kueue.ready()
        print(f"Kueue {'runs' if ok else 'does not run'} beside {args.state_dir}")
        return 0 if ok else 1
    kueue = start_kueue(cluster)
    label = "=".join(NAMESPACE_LABEL)
    print(f"Kueue ready (pid {kueue.pid}); label a namespace {label} to have its pods queued")
    return 0


if __name__ == "__main__":
    sys.exit(main())
