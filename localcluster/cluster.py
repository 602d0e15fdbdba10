"""A handle on a running local cluster: kubectl and API clients with its identities, waiting for
pods, finishing fake pods on kwok nodes, the real node's images, volumes and kubelet, installing
CRDs, and the processes recorded beside it (companions). start.py starts one, stop.py stops one; the state
(certificates, etcd data, logs, pids) lives in one directory, described by its state.json."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from images.build import Built
from images.build import build as build_images
from localcluster import realnode
from localcluster.errors import ClusterError
from localcluster.kwok import append_log_lines, drive_annotations
from localcluster.processes import pid_alive
from localcluster.stop import stop

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STATE_DIR = REPO_ROOT / ".cluster"


def wait_until(what: str, check: Callable[[], bool], timeout: float, log_hint: str = "") -> None:
    """Poll `check` every 0.2 s until it is true; raise ClusterError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise ClusterError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f" ({log_hint})" if log_hint else "")
    )


def attach(state_dir: Path = DEFAULT_STATE_DIR) -> Cluster | None:
    """The cluster whose state is in `state_dir`, or None if none was started (or finished
    starting) there. It may have stopped since: see Cluster.healthy()."""
    try:
        state = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return Cluster(state_dir, state) if state.get("ready") else None


class Cluster:
    """A running local cluster, described by <state_dir>/state.json."""

    def __init__(self, state_dir: Path, state: dict[str, Any]) -> None:
        self.state_dir = state_dir
        self.state = state
        self.bin_dir = Path(state["bin_dir"])
        self.kubeconfig = str(state_dir / "kubeconfig")
        self.server: str = state["server"]
        self.gpu_nodes: tuple[str, ...] = tuple(state["gpu_nodes"])
        self.cpu_nodes: tuple[str, ...] = tuple(state["cpu_nodes"])
        self.ca_file = state_dir / "pki" / "ca.crt"
        # The real node (realnode/): a kubelet with containerd; None when started without it.
        self.real_node: str | None = state.get("real_node")

    # ----------------------------------------------------------------- lifecycle
    def healthy(self) -> bool:
        """Every recorded process runs and the API server answers /readyz."""
        if not all(pid_alive(p["pid"], p["marker"]) for p in self.state["processes"]):
            return False
        proc = self.kubectl("get", "--raw", "/readyz", check=False)
        return proc.returncode == 0 and proc.stdout.strip() == "ok"

    def stop(self) -> None:
        """Stop every process of the cluster and its companions, and remove its state directory."""
        stop(self.state_dir)

    def add_companion(self, name: str, pid: int, marker: str) -> None:
        """Record a process started beside the cluster (the demo's operator, its HTTPS server) so
        that stopping the cluster stops it first. `marker` must appear in its command line. Not
        part of healthy(): a companion that died does not make the cluster unusable."""
        state = json.loads((self.state_dir / "state.json").read_text())
        others = [c for c in state.get("companions", []) if c["name"] != name]  # a restarted one
        state["companions"] = [*others, {"name": name, "pid": pid, "marker": marker}]
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_dir / "state.json")
        self.state = state

    def companion(self, name: str) -> dict[str, Any] | None:
        """The record of companion `name` ({"name", "pid", "marker"}) if it still runs, else None."""
        for c in self.state.get("companions", []):
            if c["name"] == name and pid_alive(c["pid"], c["marker"]):
                return c
        return None

    def stop_companion(self, name: str, grace: float = 15.0) -> None:
        """SIGTERM companion `name`'s process group and wait for it to end (SIGKILL after `grace`
        seconds); nothing happens if it does not run."""
        c = self.companion(name)
        if c is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c["pid"], sig)
            deadline = time.monotonic() + grace
            while pid_alive(c["pid"], c["marker"]) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not pid_alive(c["pid"], c["marker"]):
                return

    def install_crds(self, path: Path, timeout: float = 60.0) -> list[str]:
        """Apply the CustomResourceDefinitions in `path` (a file or a folder) server-side, so the API
        server checks their schemas, and wait until each is Established and served (discovery
        lists it: `kubectl get <plural>` works). Returns their names."""
        files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
        crds = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        for crd in crds:
            name, spec = crd["metadata"]["name"], crd["spec"]
            resource = f"{spec['names']['plural']}.{spec['group']}"
            # Poll: right after the apply a CRD may have no conditions yet (`kubectl wait` errors
            # then), and once Established, discovery must list it before `kubectl get` resolves.
            deadline = time.monotonic() + timeout
            while self.kubectl("get", resource, "--all-namespaces", check=False).returncode != 0:
                if time.monotonic() > deadline:
                    status = self.kubectl("get", f"crd/{name}", "-o", "jsonpath={.status}", check=False)
                    raise ClusterError(
                        f"{name} is not served {timeout:.0f}s after applying it: {status.stdout}"
                    )
                time.sleep(0.5)
        return [c["metadata"]["name"] for c in crds]

    # ----------------------------------------------------------------- clients
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, namespace: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / "kubectl"), "--kubeconfig", self.kubeconfig]
        if namespace:
            cmd += ["--namespace", namespace]
        cmd += list(args)
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, check=False, timeout=120)
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient with the admin identity."""
        from kubernetes import config

        return config.new_client_from_config(config_file=self.kubeconfig)

    def token_client(self, token: str) -> Any:
        """A kubernetes.client.ApiClient that authenticates with a bearer token (e.g. a ServiceAccount's)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.server
        cfg.ssl_ca_cert = str(self.ca_file)
        cfg.api_key = {"authorization": token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(cfg)

    # ----------------------------------------------------------------- waiting
    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
        """Poll `check` until it is true; raise ClusterError naming `what` after `timeout` seconds."""
        wait_until(what, check, timeout)

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The pod as a dict (API field names), or None if it does not exist."""
        proc = self.kubectl("get", "pod", name, "-o", "json", namespace=namespace, check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr:
                return None
            raise ClusterError(f"kubectl get pod {namespace}/{name}: {proc.stderr.strip()}")
        return json.loads(proc.stdout)

    def wait_pod(
        self,
        namespace: str,
        name: str,
        check: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Wait until the pod exists and check(pod) holds; returns the pod. The error shows its status."""
        last: dict[str, Any] | None = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.get_pod(namespace, name)
            if last is not None and check(last):
                return last
            time.sleep(0.2)
        status = json.dumps((last or {}).get("status"), indent=1)[:3000]
        raise ClusterError(
            f"timed out after {timeout:.0f}s waiting for pod {namespace}/{name} to be {what}; "
            f"status: {status}"
        )

    def wait_pod_phase(
        self, namespace: str, name: str, *phases: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Wait until the pod's status.phase is one of `phases`; returns the pod."""

        def reached(p: dict[str, Any]) -> bool:
            phase = p.get("status", {}).get("phase")
            if phase in ("Succeeded", "Failed") and phase not in phases:  # terminal: it never will
                status = json.dumps(p["status"], indent=1)[:3000]
                raise ClusterError(f"pod {namespace}/{name} ended {phase}, not {phases}; status: {status}")
            return phase in phases

        return self.wait_pod(namespace, name, reached, f"in phase {phases}", timeout)

    # ----------------------------------------------------------------- fake pods
    def drive_pod(
        self,
        namespace: str,
        name: str,
        phase: str = "Succeeded",
        exit_code: int = 0,
        message: str = "",
        reason: str = "",
        *,
        pod_reason: str = "",
        pod_message: str = "",
        wait: float = 30.0,
    ) -> None:
        """Finish a pod running on a kwok node: its container terminates with `exit_code`, `reason`
        (default Completed/Error) and `message` (state.terminated.message), the pod reaches `phase`;
        `pod_reason`/`pod_message` set status.reason/message (e.g. "Evicted"). Waits up to `wait`
        seconds for the phase (0: do not wait; a pod deleted meanwhile ends the wait)."""
        annotations = drive_annotations(phase, exit_code, message, reason, pod_reason, pod_message)
        patch = json.dumps({"metadata": {"annotations": annotations}})
        self.kubectl("patch", "pod", name, "--type=merge", "-p", patch, namespace=namespace)
        if wait <= 0:
            return

        def reached() -> bool:
            proc = self.kubectl(
                "get", "pod", name, "-o", "jsonpath={.status.phase}", namespace=namespace, check=False
            )
            return proc.returncode != 0 or proc.stdout == phase

        wait_until(f"pod {namespace}/{name} to reach {phase}", reached, wait, "is it bound to a kwok node?")

    def fake_pod_log(self, namespace: str, name: str, text: str, container: str | None = None) -> Path:
        """Append `text` to the log of a pod on a kwok node, so `kubectl logs` and
        read_namespaced_pod_log return it through the API server (as for a real pod)."""
        path = self.fake_log_dir() / f"{namespace}_{name}_{container or 'all'}.log"
        append_log_lines(path, text.splitlines())
        logs = {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Logs",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"logs": [{"containers": [container] if container else [], "logsFile": str(path)}]},
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(logs))
        return path

    def fake_log_dir(self) -> Path:
        """Where fake pods' log files live (kwok reads them; removed with the cluster)."""
        folder = self.state_dir / "fake-logs"
        folder.mkdir(exist_ok=True)
        return folder

    def serve_fake_logs(
        self, name: str, log_file: Path, namespaces: Sequence[str] = (), pods: Sequence[str] = ()
    ) -> None:
        """kwok serves `log_file` (written with localcluster.kwok.append_log_lines) as the log
        of every fake pod in `namespaces` whose name is in `pods` (either empty: any), existing
        or created later: one ClusterLogs object `name` for many pods, where fake_pod_log makes
        one per pod. A pod's own Logs object wins over it."""
        logs = {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "ClusterLogs",
            "metadata": {"name": name},
            "spec": {
                "selector": {"matchNamespaces": list(namespaces), "matchNames": list(pods)},
                "logs": [{"containers": [], "logsFile": str(log_file)}],
            },
        }
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(logs))

    def stop_fake_logs(self, name: str) -> None:
        """Delete ClusterLogs `name` (serve_fake_logs); its pods' logs are gone with it."""
        self.kubectl("delete", "clusterlogs.kwok.x-k8s.io", name, "--ignore-not-found")

    # ----------------------------------------------------------------- the real node
    def _node(self) -> realnode.RealNode:
        node = realnode.RealNode.load(self.state_dir)
        if node is None or self.real_node is None:
            raise ClusterError("this cluster runs no real node (start(real_node=True))")
        return node

    def real_node_pod_spec_extras(self) -> dict[str, Any]:
        """The nodeSelector and toleration a pod needs to land on the real node."""
        return realnode.pod_spec_extras()

    def import_image(self, archive: Path) -> None:
        """Load an OCI/docker image archive into the real node's containerd (the kubelet's namespace)."""
        self._node().import_image(archive)

    def load_images(self, names: Sequence[str]) -> list[Built]:
        """Build (or find cached) the project's images `names` (images.build: "operator",
        "trainer", "pause") and import each into the real node unless it holds that very image
        already (same reference and manifest digest); returns what images.build returned."""
        node = self._node()
        built = build_images(list(names))
        for image in built:
            if node.containerd.image_digest(image.reference) != image.digest:
                node.import_image(image.archive)
        return built

    def pod_host_ip(self) -> str:
        """The host's address as pods on the real node see it (the node's bridge): a server the
        pods should reach listens there (nothing else reaches it: pods and this host only)."""
        return str(next(ipaddress.ip_network(self._node().info["subnet"]).hosts()))

    def kubelet_get(self, path: str) -> str:
        """GET `path` (e.g. /metrics/probes) from the real node's kubelet, as the admin (the
        kubelet authenticates client certificates of the cluster CA and asks the API server
        whether the caller may). The API server's node proxy would refuse the loopback address."""
        import requests

        url = f"https://{self._node().name}:{self.state['ports']['kubelet']}{path}"
        pki = self.state_dir / "pki"
        session = requests.Session()
        session.trust_env = False  # no proxy from the environment for a loopback address
        response = session.get(
            url, cert=(str(pki / "admin.crt"), str(pki / "admin.key")), verify=str(self.ca_file), timeout=10
        )
        response.raise_for_status()
        return response.text

    def node_volume_dir(self, namespace: str, claim_name: str) -> Path:
        """The real node's folder that backs PersistentVolumeClaim `namespace/claim_name`."""
        path = self.state_dir / "volumes" / namespace / claim_name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def create_node_pvc(self, namespace: str, claim_name: str, size: str = "1Gi") -> Path:
        """A Bound PersistentVolumeClaim backed by a `local` PersistentVolume on the real node
        (node_volume_dir; the kubelet bind-mounts it and applies the pod's fsGroup), so a pod
        using it is scheduled there; returns the folder."""
        folder = self.node_volume_dir(namespace, claim_name)
        pv_name = f"local-{namespace}-{claim_name}"[:253]
        on_node = {"key": "kubernetes.io/hostname", "operator": "In", "values": [self._node().name]}
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "local": {"path": str(folder)},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [on_node]}]}},
                "claimRef": {"namespace": namespace, "name": claim_name},
            },
        }
        pvc = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim_name, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": pv["metadata"]["name"],
                "resources": {"requests": {"storage": size}},
            },
        }
        self.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [pv, pvc]})
        )

        def bound() -> bool:
            out = self.kubectl(
                "get", "pvc", claim_name, "-o", "jsonpath={.status.phase}", namespace=namespace
            )
            return out.stdout == "Bound"

        wait_until(f"PersistentVolumeClaim {namespace}/{claim_name} to be Bound", bound, 60)
        return folder
