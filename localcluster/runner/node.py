"""The local process runner: a test-side kubelet for one Node whose pods run as local processes.

It registers its Node (tainted pfo.dev/local-runner=true:NoSchedule, labelled pfo.dev/local-runner:
"true"), keeps it Ready with a Lease and status heartbeats, watches the pods bound to it and runs
each container's command and args as a local process with the pod's environment:

* volumes: a PersistentVolumeClaim X is the folder <root>/volumes/X; an emptyDir a fresh per-pod
  folder; configMap, secret, downwardAPI and projected (ServiceAccount token) volumes are written to
  per-pod folders; hostPath is the path itself. Each container runs in a private mount namespace
  where these folders are bind-mounted at the pod's mountPaths (readOnly honoured), and a per-pod
  file is bind-mounted over its terminationMessagePath.
* command[0] is resolved on a PATH starting with the repository's .venv/bin.
* status: Running once started, then Succeeded/Failed with the real exit code, reason
  (Completed/Error/StartError/DeadlineExceeded) and the termination file's contents
  (FallbackToLogsOnError: the log's last 80 lines, at most 2 KiB, when the file is empty and the
  container failed).
* logs: stdout and stderr go to <root>/pods/<ns>_<pod>_<uid>/<container>.log, served on the kubelet
  port (HTTPS, /containerLogs/...) so `kubectl logs` and read_namespaced_pod_log work through the
  API server.
* deletion: SIGTERM to the container's process group, SIGKILL after the grace period, then the
  pod object is removed (as a kubelet does).

Environment and volumes come from pod_inputs.py, the log endpoint from kubelet_logs.py, and each
container is started by podexec.py inside its mount namespace.

Run by the harness; by hand: python -m localcluster.runner.node --kubeconfig K --node N --root DIR ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from localcluster.kube_rest import KubeError, KubeRest
from localcluster.runner.kubelet_logs import serve_logs
from localcluster.runner.pod_inputs import (
    DEFAULT_PATH,
    REPO_ROOT,
    PodContext,
    SetupError,
    expand,
    volume_sources,
)

RUNNER_LABEL = "pfo.dev/local-runner"
MESSAGE_LIMIT = 4096  # kubelet's limit for one container's termination message
FALLBACK_LINES, FALLBACK_BYTES = 80, 2048  # what kubelet takes from the log for FallbackToLogsOnError

log = logging.getLogger("runner")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _proc_start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def kill_leftover_pods(root: Path) -> None:
    """SIGKILL the process groups of containers a (killed) runner left behind under `root`."""
    for pidfile in root.glob("pods/*/*.pid"):
        with contextlib.suppress(ValueError, OSError):
            pid, started = pidfile.read_text().split()
            if _proc_start_time(int(pid)) == started:
                os.killpg(int(pid), signal.SIGKILL)


# --------------------------------------------------------------------- one pod
class PodWorker(threading.Thread):
    """Runs one pod's containers (init containers one after another, then the rest together)."""

    def __init__(self, runner: Runner, pod: dict[str, Any]) -> None:
        super().__init__(daemon=True, name=f"pod-{pod['metadata']['name']}")
        self.runner = runner
        self.pod = pod
        meta = pod["metadata"]
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.dir = runner.root / "pods" / f"{self.ns}_{self.name}_{self.uid}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = threading.Event()
        self.stop_reason: tuple[str, str] | None = None  # pod-level (reason, message) when killed
        self.lock = threading.Lock()
        self.done = threading.Event()

    # -- paths
    def log_file(self, container: str) -> Path:
        return self.dir / f"{container}.log"

    def running(self, container: str) -> bool:
        proc = self.procs.get(container)
        return proc is not None and proc.poll() is None

    # -- lifecycle
    def run(self) -> None:
        try:
            self._run()
        except Exception:  # a runner bug must not leave the pod silently hanging
            log.exception("pod %s/%s", self.ns, self.name)
            with contextlib.suppress(Exception):
                self._patch_status(
                    {
                        "phase": "Failed",
                        "reason": "RunnerError",
                        "message": "the local runner failed; see its log",
                    }
                )
        finally:
            self.done.set()
            if self.pod["metadata"].get("deletionTimestamp"):  # not a deadline: the pod stays
                self.runner.finalize_deletion(self.ns, self.name, self.uid)

    def _run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        spec = self.pod["spec"]
        start_time = now()
        ctx = PodContext(self.runner.api, self.pod)
        reported = ""
        while True:  # like a kubelet, retry until what the pod references exists (or it is deleted)
            try:
                volumes = volume_sources(ctx, self.dir, self.runner.root / "volumes")
                prepared = {
                    c["name"]: self._prepare(ctx, c, volumes)
                    for c in (spec.get("initContainers") or []) + spec["containers"]
                }
                break
            except SetupError as exc:
                if str(exc) != reported:
                    reported = str(exc)
                    log.warning("pod %s/%s cannot start yet: %s", self.ns, self.name, exc)
                    waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": reported}}
                    self._patch_status(
                        {
                            "containerStatuses": [
                                self._status(c, waiting, ready=False) for c in spec["containers"]
                            ]
                        }
                    )
                    self.runner.event(self.pod, "Warning", "Failed", f"Error: {exc}")
                if self.stopping.wait(1.0):
                    return
        deadline = spec.get("activeDeadlineSeconds")
        if deadline:
            timer = threading.Timer(
                deadline,
                self.stop,
                args=(
                    int(spec.get("terminationGracePeriodSeconds", 30)),
                    ("DeadlineExceeded", "Pod was active on the node longer than the specified deadline"),
                ),
            )
            timer.daemon = True
            timer.start()
        base = {
            "startTime": start_time,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
        }
        init_statuses: list[dict[str, Any]] = []
        for c in spec.get("initContainers") or []:
            if self.stopping.is_set():
                break
            started = self._start(c, prepared[c["name"]])
            self._patch_status(
                {
                    **base,
                    "phase": "Pending",
                    "initContainerStatuses": init_statuses
                    + [self._status(c, {"running": {"startedAt": started}}, ready=False)],
                }
            )
            state = self._wait(c, started)
            init_statuses.append(self._status(c, state, ready=False))
            if state["terminated"]["exitCode"] != 0:
                return self._finish(base, init_statuses, [], failed=True)
        if self.stopping.is_set():
            return self._finish(base, init_statuses, [], failed=True)
        started_at = {c["name"]: self._start(c, prepared[c["name"]]) for c in spec["containers"]}
        running = [
            self._status(c, {"running": {"startedAt": started_at[c["name"]]}}, ready=True, started=True)
            for c in spec["containers"]
        ]
        self._patch_status(
            {
                **base,
                "phase": "Running",
                "conditions": self._conditions(True, ""),
                "initContainerStatuses": init_statuses or None,
                "containerStatuses": running,
            }
        )
        self.runner.event(
            self.pod, "Normal", "Started", "Started container(s) as local processes (pfo local runner)"
        )
        finals = [
            self._status(c, self._wait(c, started_at[c["name"]]), ready=False) for c in spec["containers"]
        ]
        failed = any(s["state"]["terminated"]["exitCode"] != 0 for s in finals)
        self._finish(base, init_statuses, finals, failed=failed)

    def _finish(
        self, base: dict[str, Any], init: list[dict[str, Any]], finals: list[dict[str, Any]], failed: bool
    ) -> None:
        status: dict[str, Any] = {
            **base,
            "phase": "Failed" if failed or self.stop_reason else "Succeeded",
            "conditions": self._conditions(False, "PodFailed" if failed else "PodCompleted"),
        }
        if init:
            status["initContainerStatuses"] = init
        if finals:
            status["containerStatuses"] = finals
        if self.stop_reason:
            status["reason"], status["message"] = self.stop_reason
        self._patch_status(status)
        log.info("pod %s/%s finished: %s", self.ns, self.name, status["phase"])

    # -- containers
    def _prepare(
        self, ctx: PodContext, c: dict[str, Any], volumes: dict[str, tuple[Path, bool]]
    ) -> dict[str, Any]:
        if not c.get("command"):
            raise SetupError(
                f"container {c['name']!r} has no command: the local runner cannot use an image's entrypoint"
            )
        env = ctx.env(c, self.runner.service_env)
        sc = {**(self.pod["spec"].get("securityContext") or {}), **(c.get("securityContext") or {})}
        uid, gid = sc.get("runAsUser"), sc.get("runAsGroup")
        if uid is None and sc.get("runAsNonRoot"):
            raise SetupError(
                f"container {c['name']!r}: runAsNonRoot without runAsUser (the runner has no image user)"
            )
        groups = list(self.pod["spec"].get("securityContext", {}).get("supplementalGroups") or [])
        fs_group = self.pod["spec"].get("securityContext", {}).get("fsGroup")
        if fs_group is not None:
            groups.append(fs_group)
        if uid is not None and gid is None:
            gid = 0 if uid == 0 else uid
        env.setdefault("HOME", "/root" if not uid else "/")
        term_file = self.dir / f"{c['name']}.termination-log"
        term_file.touch()
        term_file.chmod(0o666)
        start_error = self.dir / f"{c['name']}.start-error"
        start_error.write_text("")
        start_error.chmod(0o666)
        mounts = [
            {
                "source": str(term_file),
                "target": c.get("terminationMessagePath") or "/dev/termination-log",
                "readOnly": False,
            }
        ]
        for vm in c.get("volumeMounts") or []:
            if vm["name"] not in volumes:
                raise SetupError(f"container {c['name']!r} mounts unknown volume {vm['name']!r}")
            source, ro = volumes[vm["name"]]
            if vm.get("subPath"):
                source = source / vm["subPath"]
                if not source.exists():
                    source.mkdir(parents=True)
            mounts.append(
                {"source": str(source), "target": vm["mountPath"], "readOnly": ro or bool(vm.get("readOnly"))}
            )
        argv = [expand(a, env) for a in (c.get("command") or []) + (c.get("args") or [])]
        workdir = c.get("workingDir") or "/"
        return {
            "argv": argv,
            "env": env,
            "workdir": workdir,
            "mounts": mounts,
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "start_error_file": str(start_error),
            # What a non-root container user must reach: the venv's real interpreter, the venv
            # (console scripts) and the sources its editable install points at.
            "expose": [
                os.path.realpath(REPO_ROOT / ".venv" / "bin" / "python"),
                str(REPO_ROOT / ".venv"),
                str(REPO_ROOT / "trainer"),
                str(REPO_ROOT / "operator"),
            ],
            "term_file": str(term_file),
        }

    def _start(self, c: dict[str, Any], spec: dict[str, Any]) -> str:
        spec_file = self.dir / f"{c['name']}.spec.json"
        spec_file.write_text(json.dumps(spec))
        spec_file.chmod(0o600)
        with open(self.log_file(c["name"]), "ab") as logf:
            proc = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    sys.executable,
                    "-m",
                    "localcluster.runner.podexec",
                    str(spec_file),
                ],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={"PATH": DEFAULT_PATH, "PYTHONPATH": str(REPO_ROOT)},
                cwd="/",
            )
        (self.dir / f"{c['name']}.pid").write_text(f"{proc.pid} {_proc_start_time(proc.pid)}")
        with self.lock:
            self.procs[c["name"]] = proc
        if self.stopping.is_set():  # deleted while starting
            self._signal(signal.SIGTERM)
        log.info("pod %s/%s container %s: pid %d %s", self.ns, self.name, c["name"], proc.pid, spec["argv"])
        return now()

    def _wait(self, c: dict[str, Any], started: str) -> dict[str, Any]:
        proc = self.procs[c["name"]]
        code = proc.wait()
        code = 128 - code if code < 0 else code  # killed by signal N: 128 + N, as container runtimes report
        (self.dir / f"{c['name']}.pid").unlink(missing_ok=True)
        start_error = Path(self.dir / f"{c['name']}.start-error").read_text()
        message = (
            Path(self.dir / f"{c['name']}.termination-log")
            .read_bytes()[:MESSAGE_LIMIT]
            .decode(errors="replace")
        )
        if start_error:
            reason, message = "StartError", start_error
        elif self.stop_reason and self.stop_reason[0] == "DeadlineExceeded":
            reason = "DeadlineExceeded" if code else "Completed"
        else:
            reason = "Completed" if code == 0 else "Error"
        if not message and code != 0 and c.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            lines = self.log_file(c["name"]).read_bytes().splitlines()[-FALLBACK_LINES:]
            message = b"\n".join(lines)[-FALLBACK_BYTES:].decode(errors="replace")
        return {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "message": message or None,
                "startedAt": started,
                "finishedAt": now(),
                "containerID": f"runner://{proc.pid}",
            }
        }

    def _signal(self, sig: int) -> None:
        with self.lock:
            procs = list(self.procs.values())
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)

    def stop(self, grace: int, reason: tuple[str, str] | None = None) -> None:
        """SIGTERM every container's process group, SIGKILL after `grace` seconds (deletion, deadline)."""
        if self.stopping.is_set():
            return
        self.stop_reason = reason
        self.stopping.set()
        self._signal(signal.SIGTERM)

        def kill_later() -> None:
            if not self.done.wait(grace):
                self._signal(signal.SIGKILL)

        threading.Thread(target=kill_later, daemon=True).start()

    # -- status
    def _status(
        self, c: dict[str, Any], state: dict[str, Any], ready: bool, started: bool = False
    ) -> dict[str, Any]:
        return {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": "",
            "ready": ready,
            "started": started,
            "restartCount": 0,
            "state": state,
            "containerID": f"runner://{self.procs[c['name']].pid}" if c["name"] in self.procs else None,
        }

    def _conditions(self, ready: bool, reason: str) -> list[dict[str, Any]]:
        t = now()
        out = [
            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": t},
            {"type": "Initialized", "status": "True", "lastTransitionTime": t},
        ]
        for kind in ("Ready", "ContainersReady"):
            cond = {"type": kind, "status": "True" if ready else "False", "lastTransitionTime": t}
            if reason:
                cond["reason"] = reason
            out.append(cond)
        return out

    def _patch_status(self, status: dict[str, Any]) -> None:
        path = f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status"
        body = {"metadata": {"uid": self.uid}, "status": {k: v for k, v in status.items() if v is not None}}
        for attempt in range(5):
            try:
                self.runner.api.patch(path, body)
                return
            except KubeError as exc:
                if exc.status == 404:
                    return
                if attempt == 4:
                    log.error("pod %s/%s: status update failed: %s", self.ns, self.name, exc)
                time.sleep(0.5)


# --------------------------------------------------------------------- the node
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m localcluster.runner.node", description=__doc__.split("\n")[0])
    p.add_argument("--kubeconfig", required=True, help="a kubeconfig with the node identity system:node:NODE")
    p.add_argument("--node", required=True)
    p.add_argument("--root", required=True, help="folder for volumes/ and pods/ (logs, termination files)")
    p.add_argument("--port", type=int, required=True, help="kubelet port (HTTPS logs endpoint)")
    p.add_argument("--tls-cert", required=True)
    p.add_argument("--tls-key", required=True)
    p.add_argument("--client-ca", required=True)
    p.add_argument(
        "--gpus", type=int, default=0, help="nvidia.com/gpu capacity to advertise (processes use the CPU)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    runner = Runner(args)
    signal.signal(signal.SIGTERM, runner.shutdown)
    signal.signal(signal.SIGINT, runner.shutdown)
    runner.run()


if __name__ == "__main__":
    main()
