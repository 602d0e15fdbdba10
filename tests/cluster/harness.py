"""A real local Kubernetes control plane started as plain processes (no Docker, no kind).

etcd, kube-apiserver (RBAC + Node authorization, ServiceAccount tokens, client-certificate
identities), kube-controller-manager, kube-scheduler, kwok (fake nodes and scripted pod lifecycles),
the local process runner (tests/cluster/runner.py, one node that really runs pods) and a real node
(tests/cluster/realnode.py: kubelet, containerd, runc) are started from the binaries built by
build-binaries.sh and Debian's packages (make node-runtime). Every port is picked free at start,
so clusters coexist; all state (certificates, etcd data, logs, pids) lives in one directory.

    python -m tests.cluster.harness up   [--state-dir .cluster] [--no-real-node]  # prints the kubeconfig
    python -m tests.cluster.harness down [--state-dir .cluster]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import realnode
from tests.cluster.pki import PKI

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
DEFAULT_STATE_DIR = REPO_ROOT / ".cluster"

RUNNER_NODE = "local-runner"
RUNNER_LABEL = "pfo.dev/local-runner"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODES = tuple(f"kwok-gpu-{i}" for i in range(4))
CPU_NODES = ("kwok-cpu-0",)
GPUS_PER_NODE = 8
# Annotations the kwok pod-drive Stage (kwok-stages.yaml) reads.
DRIVE_PREFIX = "pfo.dev/drive-"

# What kube-controller-manager runs: the garbage collector and namespace controller the issue asks
# for, the token/ServiceAccount controllers, the workload controllers a Helm chart and the Job
# benchmark need, the PV binder so pre-bound claims become Bound, and node-lifecycle, which lifts
# the not-ready taint the API server puts on every new Node once it reports Ready.
CONTROLLERS = ",".join(
    f"{name}-controller"
    for name in (
        "garbage-collector", "namespace", "serviceaccount", "serviceaccount-token",
        "root-ca-certificate-publisher", "clusterrole-aggregation", "job", "ttl-after-finished",
        "deployment", "replicaset", "disruption", "endpointslice", "pod-garbage-collector",
        "resourcequota", "persistentvolume-binder", "persistentvolume-protection",
        "persistentvolumeclaim-protection", "node-lifecycle",
    )
)  # fmt: skip


class ClusterError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bin_dir() -> Path:
    """The directory holding the pinned binaries: $PFO_BIN_DIR, or build-binaries.sh (a no-op when warm)."""
    if os.environ.get("PFO_BIN_DIR"):
        return Path(os.environ["PFO_BIN_DIR"])
    proc = subprocess.run(
        ["bash", str(HERE / "build-binaries.sh")], stdout=subprocess.PIPE, stderr=None, text=True, check=False
    )
    if proc.returncode != 0:
        raise ClusterError("tests/cluster/build-binaries.sh failed (see its messages above)")
    return Path(proc.stdout.strip().splitlines()[-1])


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "pfo-local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "pfo-local", "context": {"cluster": "pfo-local", "user": user}}],
        "current-context": "pfo-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def _pid_alive(pid: int, marker: str) -> bool:
    """True if `pid` runs and its command line mentions `marker` (so a recycled pid is never killed)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


def _wait_until(what: str, check: Callable[[], bool], timeout: float, log_hint: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise ClusterError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f" ({log_hint})" if log_hint else "")
    )


class Cluster:
    """A running local cluster, described by <state_dir>/state.json."""

    def __init__(self, state_dir: Path, state: dict[str, Any]) -> None:
        self.state_dir = state_dir
        self.state = state
        self.bin_dir = Path(state["bin_dir"])
        self.kubeconfig = str(state_dir / "kubeconfig")
        self.server: str = state["server"]
        self.runner_node: str = state["runner_node"]
        self.runner_root = Path(state["runner_root"])
        self.gpu_nodes: tuple[str, ...] = tuple(state["gpu_nodes"])
        self.cpu_nodes: tuple[str, ...] = tuple(state["cpu_nodes"])
        self.ca_file = state_dir / "pki" / "ca.crt"
        # The real node (realnode.py): a kubelet with containerd; None when started without it.
        self.real_node: str | None = state.get("real_node")

    # ----------------------------------------------------------------- lifecycle
    @classmethod
    def start(
        cls,
        state_dir: Path = DEFAULT_STATE_DIR,
        *,
        runner_gpus: int = 2,
        owner_pid: int | None = None,
        gpu_nodes: int = len(GPU_NODES),
        real_node: bool = True,
    ) -> Cluster:
        """Start every process; on any failure stop what was started and raise. With `owner_pid`,
        a watchdog stops the cluster when that process ends, even if it is killed (SIGKILL).
        `gpu_nodes`: how many fake 8-GPU nodes (kwok-gpu-0, ...); the benchmark asks for many.
        `real_node`: also run a real kubelet with containerd (realnode.py; needs root)."""
        state_dir = state_dir.resolve()
        if (state_dir / "state.json").exists():
            existing = cls.attach(state_dir)
            if existing is not None and existing.healthy():
                raise ClusterError(
                    f"a cluster already runs from {state_dir}; stop it first (make cluster-down)"
                )
            stop_state_dir(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        if owner_pid is not None:
            _start_watchdog(state_dir, owner_pid)
        starter = _Starter(state_dir, bin_dir(), runner_gpus, gpu_nodes, real_node)
        try:
            return starter.run()
        except BaseException:
            stop_state_dir(state_dir, remove=False)  # keep the logs for the error's reader
            raise

    @classmethod
    def attach(cls, state_dir: Path = DEFAULT_STATE_DIR) -> Cluster | None:
        """The cluster described by `state_dir`, or None if there is no state there."""
        try:
            state = json.loads((state_dir / "state.json").read_text())
        except (OSError, ValueError):
            return None
        return cls(state_dir, state) if state.get("ready") else None

    def healthy(self) -> bool:
        """Every recorded process runs and the API server answers /readyz."""
        if not all(_pid_alive(p["pid"], p["marker"]) for p in self.state["processes"]):
            return False
        proc = self.kubectl("get", "--raw", "/readyz", check=False)
        return proc.returncode == 0 and proc.stdout.strip() == "ok"

    def stop(self) -> None:
        stop_state_dir(self.state_dir)

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
        _wait_until(what, check, timeout)

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

    # ----------------------------------------------------------------- fake pods and the runner
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

        _wait_until(f"pod {namespace}/{name} to reach {phase}", reached, wait, "is it bound to a kwok node?")

    def fake_pod_log(self, namespace: str, name: str, text: str, container: str | None = None) -> Path:
        """Append `text` to the log of a pod on a kwok node, so `kubectl logs` and
        read_namespaced_pod_log return it through the API server (as for a real pod)."""
        folder = self.state_dir / "fake-logs"
        folder.mkdir(exist_ok=True)
        path = folder / f"{namespace}_{name}_{container or 'all'}.log"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
        with path.open("a") as f:  # the CRI log format kwok reads: time, stream, tag, content
            f.writelines(f"{stamp} stdout F {line}\n" for line in text.splitlines())
        logs = {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Logs",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"logs": [{"containers": [container] if container else [], "logsFile": str(path)}]},
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(logs))
        return path

    def runner_volume_dir(self, claim_name: str) -> Path:
        """The local folder that stands for PersistentVolumeClaim `claim_name` on the runner node."""
        path = self.runner_root / "volumes" / claim_name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def create_runner_pvc(self, namespace: str, claim_name: str, size: str = "1Gi") -> Path:
        """A Bound PersistentVolumeClaim backed by runner_volume_dir(claim_name), so a pod using it
        can be scheduled; returns the folder."""
        folder = self.runner_volume_dir(claim_name)
        pv_name = f"runner-{namespace}-{claim_name}"[:253]
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "labels": {RUNNER_LABEL: "true"}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(folder), "type": "Directory"},
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
                "volumeName": pv_name,
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

        _wait_until(f"PersistentVolumeClaim {namespace}/{claim_name} to be Bound", bound, 60)
        return folder

    def real_node_pod_spec_extras(self) -> dict[str, Any]:
        """The nodeSelector and toleration a pod needs to land on the real node."""
        return realnode.pod_spec_extras()

    def import_image(self, archive: Path) -> None:
        """Load an OCI/docker image archive into the real node's containerd (the kubelet's namespace)."""
        node = realnode.RealNode.load(self.state_dir)
        if node is None:
            raise ClusterError("this cluster runs no real node (Cluster.start(real_node=True))")
        node.import_image(archive)

    def runner_pod_spec_extras(self) -> dict[str, Any]:
        """The nodeSelector and toleration a pod needs to land on the runner node."""
        return {
            "nodeSelector": {RUNNER_LABEL: "true"},
            "tolerations": [
                {"key": RUNNER_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
            ],
        }


def drive_annotations(
    phase: str = "Succeeded",
    exit_code: int = 0,
    message: str = "",
    reason: str = "",
    pod_reason: str = "",
    pod_message: str = "",
) -> dict[str, str]:
    """The pod annotations drive_pod sets (for callers that patch many pods at once)."""
    if phase not in ("Succeeded", "Failed"):
        raise ValueError(f"drive_pod: phase must be Succeeded or Failed, not {phase!r}")
    if phase == "Succeeded" and exit_code != 0:
        raise ValueError("drive_pod: a Succeeded pod's exit code is 0")
    annotations = {
        DRIVE_PREFIX + "phase": phase,
        DRIVE_PREFIX + "exit-code": str(int(exit_code)),
        DRIVE_PREFIX + "reason": reason or ("Completed" if phase == "Succeeded" else "Error"),
        DRIVE_PREFIX + "message": message,
    }
    if pod_reason:
        annotations[DRIVE_PREFIX + "pod-reason"] = pod_reason
    if pod_message:
        annotations[DRIVE_PREFIX + "pod-message"] = pod_message
    return annotations


# --------------------------------------------------------------------- starting
class _Starter:
    def __init__(
        self,
        state_dir: Path,
        bins: Path,
        runner_gpus: int,
        gpu_nodes: int = len(GPU_NODES),
        real_node: bool = True,
    ) -> None:
        self.dir = state_dir
        self.real_node = real_node
        self.bins = bins
        self.runner_gpus = runner_gpus
        self.logs = state_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state: dict[str, Any] = {
            "bin_dir": str(bins),
            "processes": [],
            "runner_node": RUNNER_NODE,
            "runner_root": str(state_dir / "runner"),
            "gpu_nodes": [f"kwok-gpu-{i}" for i in range(gpu_nodes)],
            "cpu_nodes": list(CPU_NODES),
            "real_node": realnode.NODE_NAME if real_node else None,
            "ready": False,
        }

    def save(self) -> None:
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(self.dir / "state.json")

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it open
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        log.close()
        # The state directory appears in every command line: it identifies our processes later.
        self.state["processes"].append({"name": name, "pid": proc.pid, "marker": f"{self.dir}/"})
        self.save()
        return proc

    def check_alive(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            tail = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-25:]
            raise ClusterError(
                f"{name} exited with {proc.returncode}; last lines of {self.logs}/{name}.log:\n"
                + "\n".join(tail)
            )

    def run(self) -> Cluster:
        t0 = time.monotonic()
        d, b = self.dir, self.bins
        pki = PKI(d / "pki")
        ca = pki.ca.cert
        apiserver_tls = pki.issue(
            "apiserver", "kube-apiserver",
            server_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                          "kubernetes.default.svc.cluster.local"),
            server_ips=("127.0.0.1", "10.0.0.1"),
        )  # fmt: skip
        admin = pki.issue("admin", "pfo-admin", ("system:masters",))
        kcm = pki.issue("kube-controller-manager", "system:kube-controller-manager")
        sched = pki.issue("kube-scheduler", "system:kube-scheduler")
        kubelet_client = pki.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)
        )
        kwok_tls = pki.issue("kwok", "kwok", server_names=("localhost",), server_ips=("127.0.0.1",))
        runner_id = pki.issue("runner", f"system:node:{RUNNER_NODE}", ("system:nodes",))
        runner_tls = pki.issue(
            "runner-serving", RUNNER_NODE, server_names=("localhost",), server_ips=("127.0.0.1",)
        )
        sa = pki.service_account_keys()

        ports = {k: free_port() for k in ("etcd", "etcd_peer", "apiserver", "kwok", "runner", "kubelet")}
        self.state["ports"] = ports
        server = f"https://127.0.0.1:{ports['apiserver']}"
        self.state["server"] = server
        kubeconfigs = {}
        for name, pair in (("kubeconfig", admin), ("kcm.kubeconfig", kcm), ("scheduler.kubeconfig", sched),
                           ("runner.kubeconfig", runner_id)):  # fmt: skip
            kubeconfigs[name] = d / name
            write_kubeconfig(d / name, server, ca, pair.cert, pair.key, name.split(".")[0])

        # The real node's containerd starts first; it is ready long before the API server.
        real = realnode.RealNode.prepare(d, pki) if self.real_node else None
        if real is not None:
            pause_archive, pause_ref = real.pause_image()
            containerd = self.spawn("containerd", real.containerd_argv(pause_ref))

        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
        etcd = self.spawn("etcd", [
            str(b / "etcd"), "--name", "pfo", "--data-dir", str(d / "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"pfo={peer_url}", "--unsafe-no-fsync", "--log-level", "warn",
        ])  # fmt: skip

        apiserver = self.spawn("kube-apiserver", [
            str(b / "kube-apiserver"),
            "--etcd-servers", etcd_url, "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(ports["apiserver"]),
            "--tls-cert-file", str(apiserver_tls.cert), "--tls-private-key-file", str(apiserver_tls.key),
            "--client-ca-file", str(ca),
            "--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction",
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(sa.cert), "--service-account-signing-key-file", str(sa.key),
            "--api-audiences", "https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range", "10.0.0.0/24", "--endpoint-reconciler-type", "none",
            "--kubelet-client-certificate", str(kubelet_client.cert),
            "--kubelet-client-key", str(kubelet_client.key),
            "--kubelet-certificate-authority", str(ca),
            "--kubelet-preferred-address-types", "InternalIP",
            "--allow-privileged=true", "--cert-dir", str(d / "pki" / "apiserver-generated"),
            "--profiling=false", "--v=1",
        ])  # fmt: skip
        self.check_alive("etcd", etcd)
        if real is not None:
            real.wait_containerd(lambda: self.check_alive("containerd", containerd))
            real.import_image(pause_archive)

        def api_ready() -> bool:
            self.check_alive("kube-apiserver", apiserver)
            cmd = [
                str(b / "kubectl"),
                "--kubeconfig",
                str(kubeconfigs["kubeconfig"]),
                "get",
                "--raw",
                "/readyz",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            return proc.returncode == 0

        _wait_until("kube-apiserver /readyz", api_ready, 60, f"see {self.logs}/kube-apiserver.log")
        if real is not None:
            self.spawn("kubelet", real.kubelet_argv(b / "kubelet", server, ports["kubelet"]))

        self.spawn("kube-controller-manager", [
            str(b / "kube-controller-manager"), "--kubeconfig", str(kubeconfigs["kcm.kubeconfig"]),
            "--authentication-kubeconfig", str(kubeconfigs["kcm.kubeconfig"]),
            "--authorization-kubeconfig", str(kubeconfigs["kcm.kubeconfig"]),
            "--bind-address", "127.0.0.1", "--secure-port", "0", "--leader-elect=false",
            "--controllers", CONTROLLERS, "--use-service-account-credentials=true",
            "--service-account-private-key-file", str(sa.key), "--root-ca-file", str(ca),
            "--cluster-signing-cert-file", str(ca), "--cluster-signing-key-file", str(pki.ca.key),
            "--concurrent-gc-syncs", "5", "--v=1",
            # Claims whose bind races the binder's cache otherwise wait for its 15 s pass.
            "--pvclaimbinder-sync-period", "1s",
        ])  # fmt: skip
        self.spawn("kube-scheduler", [
            str(b / "kube-scheduler"), "--kubeconfig", str(kubeconfigs["scheduler.kubeconfig"]),
            "--authentication-kubeconfig", str(kubeconfigs["scheduler.kubeconfig"]),
            "--authorization-kubeconfig", str(kubeconfigs["scheduler.kubeconfig"]),
            "--bind-address", "127.0.0.1", "--secure-port", "0", "--leader-elect=false", "--v=1",
        ])  # fmt: skip
        # kwok serves `kubectl logs` for fake pods from files named by Logs objects (fake_pod_log).
        cluster = Cluster(d, self.state)
        cluster.kubectl("apply", "-f", str(HERE / "kwok-logs-crd.yaml"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/logs.kwok.x-k8s.io", "--timeout=30s")
        self.spawn("kwok", [
            str(b / "kwok"), "--kubeconfig", str(kubeconfigs["kubeconfig"]),
            "--config", str(HERE / "kwok-stages.yaml"),
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector", "kwok.x-k8s.io/node=fake",
            "--node-ip", "127.0.0.1", "--node-port", str(ports["kwok"]),
            "--server-address", f"127.0.0.1:{ports['kwok']}",
            "--tls-cert-file", str(kwok_tls.cert), "--tls-private-key-file", str(kwok_tls.key),
            "--node-lease-duration-seconds", "40", "--cidr", "10.244.0.0/16", "--enable-crds", "Logs",
        ])  # fmt: skip
        self.spawn("runner", [
            sys.executable, "-m", "tests.cluster.runner",
            "--kubeconfig", str(kubeconfigs["runner.kubeconfig"]), "--node", RUNNER_NODE,
            "--root", self.state["runner_root"], "--port", str(ports["runner"]),
            "--tls-cert", str(runner_tls.cert), "--tls-key", str(runner_tls.key), "--client-ca", str(ca),
            "--gpus", str(self.runner_gpus),
        ], env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip

        cluster.kubectl("apply", "-f", "-", input=json.dumps(_fake_nodes_manifest(self.state["gpu_nodes"])))

        def nodes_ready() -> bool:
            for p in self.state["processes"]:
                if not _pid_alive(p["pid"], p["marker"]):
                    raise ClusterError(f"{p['name']} exited; see {self.logs}/{p['name']}.log")
            proc = cluster.kubectl("get", "nodes", "-o", "json", check=False)
            if proc.returncode != 0:
                return False
            ready = set()
            for node in json.loads(proc.stdout)["items"]:
                conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
                taints = {t["key"] for t in node["spec"].get("taints", [])}
                # node-lifecycle lifts the not-ready taint; until then nothing schedules there
                if conditions.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints:
                    ready.add(node["metadata"]["name"])
            real_node = [real.name] if real else []
            return ready >= {*self.state["gpu_nodes"], *CPU_NODES, RUNNER_NODE, *real_node}

        _wait_until("all nodes Ready", nodes_ready, 60, f"see {self.logs}/kwok.log, runner.log, kubelet.log")

        def default_sa() -> bool:  # the controllers run once the default ServiceAccount exists
            return (
                cluster.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode
                == 0
            )

        _wait_until("the default ServiceAccount (kube-controller-manager)", default_sa, 60)
        self.state["ready"] = True
        self.state["start_seconds"] = round(time.monotonic() - t0, 1)
        self.save()
        return Cluster(d, self.state)


def _fake_nodes_manifest(gpu_nodes: list[str]) -> dict[str, Any]:
    def node(name: str, gpus: int) -> dict[str, Any]:
        capacity = {"cpu": "32" if gpus else "16", "memory": "256Gi" if gpus else "64Gi", "pods": "110"}
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "type": "kwok"}  # fmt: skip
        if gpus:
            capacity[GPU_RESOURCE] = str(gpus)
            labels["nvidia.com/gpu.present"] = "true"
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
            "status": {"capacity": capacity, "allocatable": capacity},
        }

    items = [node(n, GPUS_PER_NODE) for n in gpu_nodes] + [node(n, 0) for n in CPU_NODES]
    return {"apiVersion": "v1", "kind": "List", "items": items}


# --------------------------------------------------------------------- stopping
def stop_state_dir(state_dir: Path, *, remove: bool = True, grace: float = 10.0) -> None:
    """Stop every process recorded in state_dir/state.json (newest first), then remove the directory."""
    try:
        state = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        state = {"processes": []}
    # The real node's pods go first, while the API server and kubelet still run (stopping the
    # kubelet would leave them running).
    admin = state_dir / "kubeconfig"
    kubectl = [str(Path(state.get("bin_dir", "")) / "kubectl"), "--kubeconfig", str(admin)]
    realnode.drain(state_dir, state, kubectl if admin.exists() and "bin_dir" in state else None)
    # Companions (Cluster.add_companion) go first: they talk to the API server.
    recorded = state.get("processes", []) + state.get("companions", [])
    procs = [p for p in reversed(recorded) if _pid_alive(p["pid"], p["marker"])]
    for p in procs:  # SIGTERM the process group (each was started in its own session)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p["pid"], signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_pid_alive(p["pid"], p["marker"]) for p in procs):
        time.sleep(0.1)
    for p in procs:
        if _pid_alive(p["pid"], p["marker"]):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p["pid"], signal.SIGKILL)
    _reap(procs)
    # Pod processes the runner started run in sessions of their own: stop any it left behind.
    from tests.cluster.runner import kill_leftover_pods

    kill_leftover_pods(Path(state.get("runner_root", state_dir / "runner")))
    realnode.cleanup_host(state_dir)  # mounts, bridge, cgroups, links, sysctls
    if remove and state_dir.exists():
        shutil.rmtree(state_dir, ignore_errors=True)


def _start_watchdog(state_dir: Path, owner_pid: int) -> None:
    from tests.cluster.runner import _proc_start_time

    argv = [sys.executable, "-m", "tests.cluster.harness", "watch", "--state-dir", str(state_dir),
            "--owner-pid", str(owner_pid), "--owner-start", str(_proc_start_time(owner_pid))]  # fmt: skip
    subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip


def _watch(state_dir: Path, owner_pid: int, owner_start: str) -> None:
    """Stop the cluster in `state_dir` once its owner process is gone; end when the state is gone."""
    from tests.cluster.runner import _proc_start_time

    while state_dir.exists():
        if _proc_start_time(owner_pid) != owner_start:
            stop_state_dir(state_dir)
            return
        time.sleep(1)


def _reap(procs: list[dict[str, Any]]) -> None:
    """Collect the exit status of those that are our own children, so none lingers as a zombie."""
    deadline = time.monotonic() + 5
    pending = {p["pid"] for p in procs}
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child (another process started it) or reaped
                done = pid
            if done == pid:
                pending.discard(pid)
        if pending:
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster.harness", description=__doc__.split("\n")[0]
    )
    parser.add_argument("action", choices=["up", "down", "status", "watch"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--owner-pid", type=int, help="watch: stop the cluster when this process ends")
    parser.add_argument("--owner-start", help="watch: that process's start time (/proc/PID/stat field 22)")
    parser.add_argument("--no-real-node", action="store_true", help="up: without the real kubelet node")
    args = parser.parse_args(argv)
    state_dir = args.state_dir.resolve()
    if args.action == "watch":
        _watch(state_dir, args.owner_pid, args.owner_start)
        return 0
    if args.action == "down":
        stop_state_dir(state_dir)
        print(f"stopped the cluster in {state_dir} and removed its state")
        return 0
    if args.action == "status":
        cluster = Cluster.attach(state_dir)
        ok = cluster is not None and cluster.healthy()
        print(f"{state_dir}: {'running' if ok else 'not running'}")
        return 0 if ok else 1
    running = Cluster.attach(state_dir)
    if running is not None and running.healthy():
        print(f"a cluster already runs from {state_dir}", file=sys.stderr)
        print(running.kubeconfig)
        return 0
    cluster = Cluster.start(state_dir, real_node=not args.no_real_node)
    print(f"cluster ready in {cluster.state['start_seconds']}s; API server {cluster.server}", file=sys.stderr)
    print(f"  export KUBECONFIG={cluster.kubeconfig}", file=sys.stderr)
    print(cluster.kubeconfig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
