"""Starting a local cluster: etcd, kube-apiserver (RBAC + Node authorization, ServiceAccount
tokens, client-certificate identities), kube-controller-manager, kube-scheduler, kwok (fake nodes
and scripted pod lifecycles) and a real node (realnode/: kubelet, containerd, runc), from the
binaries build-binaries.sh built and Debian's packages (make node-runtime). Every port is picked
free, so clusters coexist."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from images.build import build as build_images
from localcluster import realnode
from localcluster.binaries import bin_dir
from localcluster.cluster import DEFAULT_STATE_DIR, Cluster, attach, wait_until
from localcluster.errors import ClusterError
from localcluster.kwok import (
    CPU_NODES,
    DEFAULT_GPU_NODES,
    LOGS_CRD_FILE,
    STAGES_FILE,
    fake_nodes_manifest,
    gpu_node_names,
)
from localcluster.pki import PKI
from localcluster.processes import free_port, pid_alive
from localcluster.realnode import RealNode
from localcluster.stop import start_watchdog, stop

# The real node's extended resource: pods that ask for GPUs can be placed there and run on CPU.
REAL_NODE_GPUS = 2

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


def start(
    state_dir: Path = DEFAULT_STATE_DIR,
    *,
    owner_pid: int | None = None,
    gpu_nodes: int = DEFAULT_GPU_NODES,
    real_node: bool = True,
    real_node_gpus: int = REAL_NODE_GPUS,
) -> Cluster:
    """Start every process; on any failure stop what was started and raise. With `owner_pid`,
    a watchdog stops the cluster when that process ends, even if it is killed (SIGKILL).
    `gpu_nodes`: how many fake 8-GPU nodes (kwok-gpu-0, ...); the benchmark asks for many.
    `real_node`: also run a real kubelet with containerd (realnode/; needs root and
    `make node-runtime`), advertising `real_node_gpus` nvidia.com/gpu that its pods run on CPU."""
    state_dir = state_dir.resolve()
    if (state_dir / "state.json").exists():
        existing = attach(state_dir)
        if existing is not None and existing.healthy():
            raise ClusterError(f"a cluster already runs from {state_dir}; stop it first (make cluster-down)")
        stop(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if owner_pid is not None:
        start_watchdog(state_dir, owner_pid)
    starter = _Starter(state_dir, bin_dir(), gpu_nodes, real_node, real_node_gpus)
    try:
        return starter.run()
    except BaseException:
        stop(state_dir, remove=False)  # keep the logs for the error's reader
        raise


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


class _Starter:
    """One start: the processes it spawned are recorded in state.json as it goes, so a failure
    half-way stops exactly those."""

    def __init__(
        self,
        state_dir: Path,
        bins: Path,
        gpu_nodes: int = DEFAULT_GPU_NODES,
        real_node: bool = True,
        real_node_gpus: int = REAL_NODE_GPUS,
    ) -> None:
        self.dir = state_dir
        self.real_node = real_node
        self.real_node_gpus = real_node_gpus
        self.bins = bins
        self.logs = state_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state: dict[str, Any] = {
            "bin_dir": str(bins),
            "processes": [],
            "gpu_nodes": gpu_node_names(gpu_nodes),
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
        sa = pki.service_account_keys()

        ports = {k: free_port() for k in ("etcd", "etcd_peer", "apiserver", "kwok", "kubelet")}
        self.state["ports"] = ports
        server = f"https://127.0.0.1:{ports['apiserver']}"
        self.state["server"] = server
        kubeconfigs = {}
        for name, pair in (("kubeconfig", admin), ("kcm.kubeconfig", kcm), ("scheduler.kubeconfig", sched)):
            kubeconfigs[name] = d / name
            write_kubeconfig(d / name, server, ca, pair.cert, pair.key, name.split(".")[0])

        # The real node's containerd starts first; it is ready long before the API server.
        real = RealNode.prepare(d, pki, ports["apiserver"]) if self.real_node else None
        if real is not None:
            (pause,) = build_images(["pause"])
            containerd = self.spawn("containerd", real.containerd_argv(pause.reference))

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
            real.import_image(pause.archive)

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

        wait_until("kube-apiserver /readyz", api_ready, 60, f"see {self.logs}/kube-apiserver.log")
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
        # kwok serves `kubectl logs` for fake pods from files named by Logs and ClusterLogs
        # objects (Cluster.fake_pod_log, Cluster.serve_fake_logs).
        cluster = Cluster(d, self.state)
        cluster.kubectl("apply", "-f", str(LOGS_CRD_FILE))
        cluster.kubectl(
            "wait", "--for=condition=Established", "crd/logs.kwok.x-k8s.io",
            "crd/clusterlogs.kwok.x-k8s.io", "--timeout=30s",
        )  # fmt: skip
        self.spawn("kwok", [
            str(b / "kwok"), "--kubeconfig", str(kubeconfigs["kubeconfig"]),
            "--config", str(STAGES_FILE),
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector", "kwok.x-k8s.io/node=fake",
            "--node-ip", "127.0.0.1", "--node-port", str(ports["kwok"]),
            "--server-address", f"127.0.0.1:{ports['kwok']}",
            "--tls-cert-file", str(kwok_tls.cert), "--tls-private-key-file", str(kwok_tls.key),
            "--node-lease-duration-seconds", "40", "--cidr", "10.244.0.0/16",
            "--enable-crds", "Logs,ClusterLogs",
        ])  # fmt: skip

        cluster.kubectl("apply", "-f", "-", input=json.dumps(fake_nodes_manifest(self.state["gpu_nodes"])))

        def nodes_ready() -> bool:
            for p in self.state["processes"]:
                if not pid_alive(p["pid"], p["marker"]):
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
            return ready >= {*self.state["gpu_nodes"], *CPU_NODES, *real_node}

        wait_until("all nodes Ready", nodes_ready, 60, f"see {self.logs}/kwok.log and kubelet.log")
        if real is not None and self.real_node_gpus:
            real.advertise_gpus(cluster, self.real_node_gpus)

        def default_sa() -> bool:  # the controllers run once the default ServiceAccount exists
            return (
                cluster.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode
                == 0
            )

        wait_until("the default ServiceAccount (kube-controller-manager)", default_sa, 60)
        self.state["ready"] = True
        self.state["start_seconds"] = round(time.monotonic() - t0, 1)
        self.save()
        return Cluster(d, self.state)
