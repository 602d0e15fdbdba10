"""One pod on the runner node: its containers run as local processes (init containers one after
another, then the rest together), and its status follows them as a kubelet would report it."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localcluster.kube_rest import KubeError
from localcluster.processes import proc_start_time
from localcluster.runner.pod_inputs import (
    DEFAULT_PATH,
    REPO_ROOT,
    PodContext,
    SetupError,
    expand,
    volume_sources,
)

if TYPE_CHECKING:
    from localcluster.runner.node import Runner

MESSAGE_LIMIT = 4096  # kubelet's limit for one container's termination message
FALLBACK_LINES, FALLBACK_BYTES = 80, 2048  # what kubelet takes from the log for FallbackToLogsOnError
DISTRIBUTION = "paddle-finetune-operator"

log = logging.getLogger("runner")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def kill_leftover_pods(root: Path) -> None:
    """SIGKILL the process groups of containers a (killed) runner left behind under `root`."""
    for pidfile in root.glob("pods/*/*.pid"):
        with contextlib.suppress(ValueError, OSError):
            pid, started = pidfile.read_text().split()
            if proc_start_time(int(pid)) == started:
                os.killpg(int(pid), signal.SIGKILL)


def package_source_dirs() -> list[str]:
    """The folders the editable install imports this project's packages from (trainer/,
    operator/, ...): what a non-root container user must reach besides the venv."""
    try:
        names = (importlib.metadata.distribution(DISTRIBUTION).read_text("top_level.txt") or "").split()
    except importlib.metadata.PackageNotFoundError:
        names = []
    folders = set()
    for name in names:
        spec = importlib.util.find_spec(name)
        for location in (spec.submodule_search_locations or []) if spec else []:
            folders.add(str(Path(location).parent))
    return sorted(folders)


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
                *package_source_dirs(),
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
        (self.dir / f"{c['name']}.pid").write_text(f"{proc.pid} {proc_start_time(proc.pid)}")
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
