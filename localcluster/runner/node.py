"""The runner's Node: registration, Lease and status heartbeats, the watch on the pods bound to
it (each handed to a PodWorker), Events, and a pod's final removal after it was deleted."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import threading
import time
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from localcluster.kube_rest import KubeError, KubeRest
from localcluster.runner import RUNNER_LABEL
from localcluster.runner.kubelet_logs import serve_logs
from localcluster.runner.pod_worker import PodWorker, now

log = logging.getLogger("runner")


def now_micro() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.api = KubeRest(args.kubeconfig)
        self.node = args.node
        self.root = Path(args.root).resolve()
        self.port = args.port
        self.gpus = args.gpus
        self.args = args
        self.workers: dict[str, PodWorker] = {}
        self.finalized: set[str] = set()
        self.stop_event = threading.Event()
        server = urllib.parse.urlsplit(self.api.server)
        self.service_env = {  # what a kubelet injects so in-cluster clients find the API server
            "KUBERNETES_SERVICE_HOST": server.hostname or "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(server.port or 443),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(server.port or 443),
            "KUBERNETES_PORT": f"tcp://{server.hostname}:{server.port}",
        }

    # -- node registration and heartbeats
    def _node_status(self) -> dict[str, Any]:
        mem_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        capacity = {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{mem_kib}Ki",
            "pods": "110",
            "ephemeral-storage": "100Gi",
        }
        if self.gpus:
            capacity["nvidia.com/gpu"] = str(self.gpus)
        t = now()
        conditions = [
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "pfo local runner is ready",
            },
            {
                "type": "MemoryPressure",
                "status": "False",
                "reason": "KubeletHasSufficientMemory",
                "message": "",
            },
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "message": ""},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "message": ""},
        ]
        for c in conditions:
            c.update(lastHeartbeatTime=t, lastTransitionTime=t)
        return {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "pfo-local-runner",
                "containerRuntimeVersion": "pfo-local-runner://0.1",
                "kernelVersion": os.uname().release,
                "osImage": "local processes",
                "kubeProxyVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }

    def register(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    RUNNER_LABEL: "true",
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
            "spec": {"taints": [{"key": RUNNER_LABEL, "value": "true", "effect": "NoSchedule"}]},
        }
        try:
            self.api.create("/api/v1/nodes", node)
        except KubeError as exc:
            if exc.status != 409:
                raise
        self.api.patch(f"/api/v1/nodes/{self.node}/status", {"status": self._node_status()})

    def heartbeat(self) -> None:
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        beats = 0
        while not self.stop_event.wait(0 if beats == 0 else 10):
            beats += 1
            try:
                try:
                    lease = self.api.get(lease_path)
                    lease["spec"]["renewTime"] = now_micro()
                    self.api.put(lease_path, lease)
                except KubeError as exc:
                    if exc.status != 404:
                        raise
                    self.api.create(
                        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                        {
                            "apiVersion": "coordination.k8s.io/v1",
                            "kind": "Lease",
                            "metadata": {"name": self.node, "namespace": "kube-node-lease"},
                            "spec": {
                                "holderIdentity": self.node,
                                "leaseDurationSeconds": 40,
                                "renewTime": now_micro(),
                            },
                        },
                    )
                if beats % 4 == 0:
                    self.api.patch(f"/api/v1/nodes/{self.node}/status", {"status": self._node_status()})
            except Exception as exc:  # keep beating; the API server may be restarting
                log.warning("heartbeat: %s", exc)

    def find_log(self, ns: str, name: str, container: str) -> tuple[PodWorker | None, Path | None]:
        live = [w for w in self.workers.values() if (w.ns, w.name) == (ns, name)]
        if live:
            w = live[-1]
            return w, (w.log_file(container) if w.log_file(container).exists() else None)
        candidates = sorted(
            self.root.glob(f"pods/{ns}_{name}_*/{container}.log"), key=lambda p: p.stat().st_mtime
        )
        return None, (candidates[-1] if candidates else None)

    def event(self, pod: dict[str, Any], kind: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": kind,
            "reason": reason,
            "message": message,
            "source": {"component": "kubelet", "host": self.node},
            "firstTimestamp": now(),
            "lastTimestamp": now(),
            "count": 1,
        }
        with contextlib.suppress(KubeError):
            self.api.create(f"/api/v1/namespaces/{meta['namespace']}/events", body)

    def finalize_deletion(self, ns: str, name: str, uid: str) -> None:
        """Remove a pod that is being deleted once its processes are gone (kubelet's final delete)."""
        if uid in self.finalized:
            return
        self.finalized.add(uid)
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid},
        }
        try:
            self.api.delete(f"/api/v1/namespaces/{ns}/pods/{name}", body)
        except KubeError as exc:
            if exc.status not in (404, 409):
                log.warning("final delete of %s/%s: %s", ns, name, exc)

    # -- the watch loop
    def handle(self, event_type: str, pod: dict[str, Any]) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        uid = meta["uid"]
        worker = self.workers.get(uid)
        if event_type == "DELETED":
            if worker:
                worker.stop(0)
            return
        if meta.get("deletionTimestamp"):
            if worker and not worker.done.is_set():
                worker.pod = pod
                worker.stop(int(meta.get("deletionGracePeriodSeconds") or 0))
            elif worker is None or worker.done.is_set():
                self.finalize_deletion(meta["namespace"], meta["name"], uid)
            return
        if worker is not None or status.get("phase") in ("Succeeded", "Failed"):
            return
        if status.get("phase") == "Running":  # started by an earlier runner whose processes are gone
            body = {
                "metadata": {"uid": uid},
                "status": {
                    "phase": "Failed",
                    "reason": "RunnerRestarted",
                    "message": "the local runner restarted and lost this pod's processes",
                },
            }
            with contextlib.suppress(KubeError):
                self.api.patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status", body)
            return
        worker = PodWorker(self, pod)
        self.workers[uid] = worker
        worker.start()

    def run(self) -> None:
        (self.root / "volumes").mkdir(parents=True, exist_ok=True)
        (self.root / "pods").mkdir(parents=True, exist_ok=True)
        a = self.args
        serve_logs(self, self.port, a.tls_cert, a.tls_key, a.client_ca)
        self.register()
        threading.Thread(target=self.heartbeat, daemon=True, name="heartbeat").start()
        log.info("node %s registered; log server on 127.0.0.1:%d", self.node, self.port)
        while not self.stop_event.is_set():
            try:
                for ev in self.api.watch("/api/v1/pods", fieldSelector=f"spec.nodeName={self.node}"):
                    if ev["type"] == "ERROR":
                        log.warning("watch error: %s", ev["object"].get("message"))
                        break
                    if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.handle(ev["type"], ev["object"])
                    if self.stop_event.is_set():
                        break
            except Exception as exc:
                if not self.stop_event.is_set():
                    log.warning("watch ended: %s; restarting", exc)
                    time.sleep(1)

    def shutdown(self, *_: Any) -> None:
        self.stop_event.set()
        for w in self.workers.values():
            w.stop(5)
        deadline = time.monotonic() + 6
        for w in self.workers.values():
            w.done.wait(max(0.0, deadline - time.monotonic()))
        os._exit(0)
