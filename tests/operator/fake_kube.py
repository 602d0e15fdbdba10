"""An in-memory implementation of the operator's own `KubeApi` interface (finetune_operator.kube),
a fake clock, and the world around a job (scheduler, kubelet, garbage collector) for the fast
reconciler tests.

It keeps what the reconciler relies on from the API server: resourceVersions that move on every
write, uids, 404 for what is gone, 409 AlreadyExists for a name in use, the uid precondition of
a delete, an optional resourceVersion precondition on status patches (409 Conflict), JSON merge
patches, the status schema of the CRD (a 422 for what it would refuse), graceful deletion of
pods that run on a node, and the garbage collector deleting a job's pods. Errors are the
kubernetes client's ApiException with a Status body, as `Kube` raises them.

Every write is logged (`writes`), and `crash_at(n, when)` makes the n-th write from then on
raise `Crash` right before or right after it takes effect: the process "dies" there.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from finetune_operator.api import (
    GROUP,
    KUEUE_ADMISSION_GATE,
    KUEUE_MANAGED,
    KUEUE_QUEUE_NAME,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_RANK,
)
from finetune_operator.job_status import now_iso
from finetune_operator.kube import Keep, event_name
from kubernetes.client.exceptions import ApiException

from tests.operator import crd

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
STATUS_SCHEMA = crd.node("status")


class Crash(BaseException):
    """The operator process dies here (BaseException: no `except Exception` catches it)."""


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def api_error(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> ApiException:
    """An ApiException as the kubernetes client raises it: the Status object is its body."""
    exc = ApiException(status=code, reason=reason)
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message}
    body.update({"reason": reason, "code": code, "details": details or {}})
    exc.body = json.dumps(body)
    return exc


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@dataclass
class Write:
    verb: str  # create_pod, delete_pod, patch_status, delete_job, event
    target: str  # the object's name (the event's reason for events)
    body: Any = None


@dataclass
class FakeKube:
    clock: FakeClock = field(default_factory=FakeClock)
    jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    logs: dict[tuple[str, str], str] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    # What pod creation runs into: None, or a function of the pod returning an ApiException.
    admission: Callable[[dict[str, Any]], ApiException | None] | None = None
    allowed: Callable[[str, str, str], bool] = lambda verb, resource, namespace: True
    fail_reads: ApiException | None = None  # every read raises this (an API server outage)
    check_status_schema: bool = True  # False: store any status (the real API server judges it)
    created: list[str] = field(default_factory=list)  # every pod name ever created, in order
    # A fake Kueue's webhook: pods with a queue label in these namespaces are gated and labelled.
    kueue_namespaces: set[str] = field(default_factory=set)
    workloads: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    config_maps: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pod_groups: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # Pod IPs the fake network hands out (a scheduled pod gets the next one).
    _ip: int = 10
    _rv: int = 100
    _uid: int = 0
    _crash: tuple[int, str] | None = None

    # ---------------------------------------------------------------------------- bookkeeping
    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _next_uid(self, prefix: str) -> str:
        self._uid += 1
        return f"{prefix}-uid-{self._uid:04d}"

    def crash_at(self, index: int, when: str) -> None:
        """Die right `when` ("before" or "after") the `index`-th write (0-based) from now on."""
        assert when in ("before", "after")
        self._crash = (len(self.writes) + index, when)

    def _write(self, verb: str, target: str, body: Any, apply: Callable[[], Any]) -> Any:
        n = len(self.writes)
        if self._crash == (n, "before"):
            self._crash = None
            raise Crash(f"before write {n}: {verb} {target}")
        result = apply()
        self.writes.append(Write(verb, target, copy.deepcopy(body)))
        if self._crash == (n, "after"):
            self._crash = None
            raise Crash(f"after write {n}: {verb} {target}")
        return result

    def _read(self) -> None:
        if self.fail_reads is not None:
            raise self.fail_reads

    # ---------------------------------------------------------------------------- reads
    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        self._read()
        job = self.jobs.get((namespace, name))
        if job is None:
            raise api_error(404, "NotFound", f'finetunejobs.{GROUP} "{name}" not found', {"name": name})
        return copy.deepcopy(job)

    def list_jobs(self, namespace: str | None, each: Keep | None = None) -> list[dict[str, Any]]:
        self._read()
        jobs = [copy.deepcopy(j) for (ns, _), j in sorted(self.jobs.items()) if namespace in (None, ns)]
        return jobs if each is None else [each(j) for j in jobs]

    def list_pods(
        self, namespace: str | None, selector: str, each: Keep | None = None
    ) -> list[dict[str, Any]]:
        self._read()
        wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
        pods = [
            copy.deepcopy(p)
            for (ns, _), p in sorted(self.pods.items())
            if namespace in (None, ns) and wanted.items() <= (p["metadata"].get("labels") or {}).items()
        ]
        return pods if each is None else [each(p) for p in pods]

    def list_snapshot(
        self, kind: str, namespace: str | None, selector: str = "", each: Keep | None = None
    ) -> tuple[list[Any], str]:
        version = str(self._rv)
        if kind == "job":
            return self.list_jobs(namespace, each), version
        return self.list_pods(namespace, selector, each), version

    def pod_log_tail(
        self, namespace: str, name: str, container: str, lines: int, limit_bytes: int, since_seconds: int
    ) -> str:
        self._read()
        if (namespace, name) not in self.pods:
            raise api_error(404, "NotFound", f'pods "{name}" not found')
        text = self.logs.get((namespace, name), "")
        return "\n".join(text.splitlines()[-lines:])[-limit_bytes:]

    def get_workload(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._read()
        found = self.workloads.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._read()
        found = self.config_maps.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def can_i(self, verb: str, resource: str, namespace: str, group: str = "") -> bool:
        self._read()
        return self.allowed(verb, resource, namespace)

    # ---------------------------------------------------------------------------- writes
    def patch_job_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any]:
        def apply() -> dict[str, Any]:
            job = self.jobs.get((namespace, name))
            if job is None:
                raise api_error(404, "NotFound", f'finetunejobs.{GROUP} "{name}" not found')
            if resource_version is not None and resource_version != job["metadata"]["resourceVersion"]:
                raise api_error(409, "Conflict", "the object has been modified; please apply your changes")
            merged = merge_patch(job.get("status") or {}, status)
            errors = crd.schema_errors(merged, STATUS_SCHEMA, "status") if self.check_status_schema else []
            if errors:
                causes = [{"reason": "FieldValueInvalid", "message": e} for e in errors]
                raise api_error(
                    422, "Invalid", f"FineTuneJob.{GROUP} is invalid: {errors}", {"causes": causes}
                )
            job["status"] = merged
            job["metadata"]["resourceVersion"] = self._next_rv()
            return copy.deepcopy(job)

        return self._write("patch_status", name, status, apply)

    def create_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])

        def apply() -> dict[str, Any]:
            refusal = self.admission(pod) if self.admission else None
            if refusal is not None:
                raise refusal
            if key in self.pods:
                raise api_error(409, "AlreadyExists", f'pods "{key[1]}" already exists', {"name": key[1]})
            stored = copy.deepcopy(pod)
            stored["metadata"].update(
                uid=self._next_uid("pod"),
                resourceVersion=self._next_rv(),
                creationTimestamp=now_iso(self.clock()),
            )
            stored["status"] = {"phase": "Pending"}
            if meta["namespace"] in self.kueue_namespaces and KUEUE_QUEUE_NAME in meta.get("labels", {}):
                stored["metadata"]["labels"][KUEUE_MANAGED] = "true"
                stored.setdefault("spec", {})["schedulingGates"] = [
                    {"name": KUEUE_ADMISSION_GATE},
                    {"name": "kueue.x-k8s.io/topology"},
                ]
            self.pods[key] = stored
            self.created.append(key[1])
            return copy.deepcopy(stored)

        return self._write("create_pod", key[1], pod, apply)

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        def apply() -> None:
            pod = self.pods.get((namespace, name))
            if pod is None or pod["metadata"]["uid"] != uid:
                return  # Kube.delete_pod: gone, or replaced by another pod (404/409 ignored)
            if (pod.get("spec") or {}).get("nodeName") and not _terminal(pod):
                # On a node: graceful deletion; the kubelet stops it and removes it (terminate()).
                pod["metadata"].setdefault("deletionTimestamp", now_iso(self.clock()))
                pod["metadata"]["resourceVersion"] = self._next_rv()
            else:
                del self.pods[(namespace, name)]
                self.collect_garbage()

        self._write("delete_pod", name, uid, apply)

    def create_config_map(self, config_map: dict[str, Any]) -> dict[str, Any]:
        meta = config_map["metadata"]
        key = (meta["namespace"], meta["name"])

        def apply() -> dict[str, Any]:
            if key in self.config_maps:
                raise api_error(409, "AlreadyExists", f'configmaps "{key[1]}" already exists')
            stored = copy.deepcopy(config_map)
            stored["metadata"].update(uid=self._next_uid("cm"), resourceVersion=self._next_rv())
            self.config_maps[key] = stored
            return copy.deepcopy(stored)

        return self._write("create_configmap", key[1], config_map, apply)

    def create_pod_group(self, group: dict[str, Any]) -> dict[str, Any]:
        meta = group["metadata"]
        key = (meta["namespace"], meta["name"])

        def apply() -> dict[str, Any]:
            if key in self.pod_groups:
                raise api_error(409, "AlreadyExists", f'podgroups "{key[1]}" already exists')
            stored = copy.deepcopy(group)
            stored["metadata"].update(uid=self._next_uid("pg"), resourceVersion=self._next_rv())
            self.pod_groups[key] = stored
            return copy.deepcopy(stored)

        return self._write("create_podgroup", key[1], group, apply)

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        def apply() -> None:
            job = self.jobs.get((namespace, name))
            if job is None:
                raise api_error(404, "NotFound", f'finetunejobs.{GROUP} "{name}" not found')
            if job["metadata"]["uid"] != uid:
                raise api_error(409, "Conflict", "Precondition failed: UID in precondition")
            del self.jobs[(namespace, name)]
            self.collect_garbage()

        self._write("delete_job", name, uid, apply)

    def job_event(
        self,
        job: dict[str, Any],
        event_type: str,
        reason: str,
        message: str,
        now: str,
        seq: int = 0,
        closing: bool = False,
    ) -> None:
        name = event_name(job, event_type, reason, message, seq, closing)
        event = {"type": event_type, "reason": reason, "message": message, "uid": job["metadata"]["uid"]}
        event["name"] = name

        def apply() -> None:
            # Kube.job_event takes the API server's 409 AlreadyExists for a repeat as done.
            if all(e["name"] != name for e in self.events):
                self.events.append(event)

        self._write("event", reason, event, apply)

    # ---------------------------------------------------------------------------- the world
    def add_job(self, job: dict[str, Any]) -> dict[str, Any]:
        job = copy.deepcopy(job)
        meta = job["metadata"]
        meta.setdefault("uid", self._next_uid("job"))
        meta.setdefault("creationTimestamp", now_iso(self.clock()))
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = self._next_rv()
        self.jobs[(meta["namespace"], meta["name"])] = job
        return job

    def job(self, namespace: str, name: str) -> dict[str, Any]:
        return self.jobs[(namespace, name)]

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return self.jobs[(namespace, name)].get("status") or {}

    def update_spec(self, namespace: str, name: str, **sections: Any) -> None:
        """A user edits the spec (merge patch of spec sections): the generation moves."""
        job = self.jobs[(namespace, name)]
        job["spec"] = merge_patch(job["spec"], sections)
        job["metadata"]["generation"] += 1
        job["metadata"]["resourceVersion"] = self._next_rv()

    def delete_job_now(self, namespace: str, name: str) -> None:
        """A user deletes the job (the garbage collector then deletes its pods)."""
        del self.jobs[(namespace, name)]
        self.collect_garbage()

    def collect_garbage(self) -> None:
        """Objects whose owners are all gone: pods and PodGroups of deleted jobs, ConfigMaps of
        deleted pods."""
        uids = {j["metadata"]["uid"] for j in self.jobs.values()}
        for store in (self.pods, self.pod_groups):
            for key, obj in list(store.items()):
                owners = [o["uid"] for o in obj["metadata"].get("ownerReferences") or []]
                if owners and not set(owners) & uids:
                    del store[key]
        pod_uids = {p["metadata"]["uid"] for p in self.pods.values()}
        for key, obj in list(self.config_maps.items()):
            owners = [o["uid"] for o in obj["metadata"].get("ownerReferences") or []]
            if owners and not set(owners) & pod_uids:
                del self.config_maps[key]

    def job_pods(self, namespace: str, name: str) -> dict[tuple[int, int], dict[str, Any]]:
        """(attempt, rank) -> pod."""
        return {
            (int(p["metadata"]["labels"][LABEL_ATTEMPT]), int(p["metadata"]["labels"].get(LABEL_RANK, 0))): p
            for (ns, _), p in self.pods.items()
            if ns == namespace and p["metadata"]["labels"].get(LABEL_JOB) == name
        }

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self.pods[(namespace, name)]

    def _set(self, namespace: str, name: str, status: dict[str, Any], node: str | None = None) -> None:
        pod = self.pods[(namespace, name)]
        if node is not None:
            pod.setdefault("spec", {})["nodeName"] = node
        ip = (pod.get("status") or {}).get("podIP")
        if not ip and (pod.get("spec") or {}).get("nodeName") and status.get("phase") == "Running":
            self._ip += 1
            ip = f"10.244.0.{self._ip}"  # the network gives a started pod its IP
        if ip and status.get("phase") in ("Pending", "Running"):
            status = {**status, "podIP": ip}
        pod["status"] = status
        pod["metadata"]["resourceVersion"] = self._next_rv()

    def unschedulable(self, namespace: str, name: str, message: str, reason: str = "Unschedulable") -> None:
        cond = {"type": "PodScheduled", "status": "False", "reason": reason, "message": message}
        cond["lastTransitionTime"] = now_iso(self.clock())
        self._set(namespace, name, {"phase": "Pending", "conditions": [cond]})

    def schedule(self, namespace: str, name: str, node: str = "gpu-0") -> None:
        cond = {"type": "PodScheduled", "status": "True", "lastTransitionTime": now_iso(self.clock())}
        waiting = {"waiting": {"reason": "ContainerCreating"}}
        self._set(
            namespace,
            name,
            {"phase": "Pending", "conditions": [cond], "containerStatuses": [_container(waiting)]},
            node,
        )

    def waiting(self, namespace: str, name: str, reason: str, message: str = "") -> None:
        """Scheduled, and the kubelet cannot start the container (ErrImagePull, ...)."""
        if not (self.pods[(namespace, name)].get("spec") or {}).get("nodeName"):
            self.schedule(namespace, name)
        status = self.pods[(namespace, name)]["status"]
        status["containerStatuses"] = [_container({"waiting": {"reason": reason, "message": message}})]
        self._set(namespace, name, status)

    def run(self, namespace: str, name: str) -> None:
        if not (self.pods[(namespace, name)].get("spec") or {}).get("nodeName"):
            self.schedule(namespace, name)
        started = {"running": {"startedAt": now_iso(self.clock())}}
        old = self.pods[(namespace, name)]["status"]
        conds = old.get("conditions") or []
        self._set(
            namespace,
            name,
            {
                "phase": "Running",
                "conditions": conds,
                "containerStatuses": [_container(started)],
                "startTime": old.get("startTime") or now_iso(self.clock()),  # the kubelet took it
            },
        )

    def finish(
        self,
        namespace: str,
        name: str,
        exit_code: int,
        message: str = "",
        *,
        reason: str = "",
        pod_reason: str = "",
        pod_message: str = "",
    ) -> None:
        """The container ends with `exit_code` (0: Succeeded) and a termination message."""
        if self.pods[(namespace, name)]["status"].get("phase") != "Running":
            self.run(namespace, name)
        terminated = {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error")}
        terminated["finishedAt"] = now_iso(self.clock())
        if message:
            terminated["message"] = message
        status: dict[str, Any] = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [_container({"terminated": terminated})],
        }
        if pod_reason:
            status["reason"] = pod_reason
        if pod_message:
            status["message"] = pod_message
        self._set(namespace, name, status)

    def terminate(self) -> None:
        """The kubelets: every pod being deleted stops (SIGTERM, exit 143) and is removed."""
        for key, pod in list(self.pods.items()):
            if pod["metadata"].get("deletionTimestamp") and not pod["metadata"].get("finalizers"):
                del self.pods[key]

    def remove_pod(self, namespace: str, name: str) -> None:
        """The pod vanishes (a user, a drain, pod garbage collection)."""
        del self.pods[(namespace, name)]

    def active_pods(self, namespace: str, name: str) -> list[str]:
        """The job's pods that run or may still run (Pending/Running, being deleted or not)."""
        return sorted(
            p["metadata"]["name"] for p in self.job_pods(namespace, name).values() if not _terminal(p)
        )


def _container(state: dict[str, Any]) -> dict[str, Any]:
    return {"name": "trainer", "state": state}


def _terminal(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def forbidden(message: str, kind: str = "pods", name: str = "") -> ApiException:
    """A 403 as the API server sends it for a refused create."""
    return api_error(403, "Forbidden", message, {"name": name, "kind": kind} if name else {"kind": kind})


# ---------------------------------------------------------------------------- a fake Kueue
def kueue_says(kube: FakeKube, namespace: str, group: str, reason: str, message: str) -> None:
    """The group's Workload is not admitted, in Kueue's words (QuotaReserved=False)."""
    cond = {"type": "QuotaReserved", "status": "False", "reason": reason, "message": message}
    kube.workloads[(namespace, group)] = {"metadata": {"name": group}, "status": {"conditions": [cond]}}


def kueue_admit(kube: FakeKube, namespace: str, name: str) -> None:
    """Kueue admits the pod's group: it removes the pod's gates."""
    pod = kube.pods[(namespace, name)]
    pod["spec"]["schedulingGates"] = []
    pod["metadata"]["resourceVersion"] = kube._next_rv()


def kueue_preempt(kube: FakeKube, namespace: str, name: str, message: str, hold: bool = False) -> None:
    """Kueue preempts the pod: the TerminationTarget condition, then a graceful deletion
    (`terminate()`: the kubelet stops it once the trainer has checkpointed). `hold`: the trainer
    is still checkpointing; the pod stays until `checkpointed()`."""
    pod = kube.pods[(namespace, name)]
    if hold:
        pod["metadata"]["finalizers"] = [HOLD]
    cond = {
        "type": "TerminationTarget",
        "status": "True",
        "reason": "WorkloadEvictedDueToPreempted",
        "message": message,
        "lastTransitionTime": now_iso(kube.clock()),
    }
    pod["status"].setdefault("conditions", []).append(cond)
    pod["metadata"]["deletionTimestamp"] = now_iso(kube.clock())
    pod["metadata"]["resourceVersion"] = kube._next_rv()


def kueue_evicted(kube: FakeKube, namespace: str, group: str, reason: str, message: str) -> None:
    """The group's Workload after Kueue evicted it (``Evicted=True``, e.g. reason ``Preempted``),
    before garbage collection removes it with its pods."""
    cond = {"type": "Evicted", "status": "True", "reason": reason, "message": message}
    kube.workloads[(namespace, group)] = {"metadata": {"name": group}, "status": {"conditions": [cond]}}


HOLD = "pfo.dev/test-kubelet"  # the kubelet's graceful termination, as a finalizer: terminate() waits


def checkpointed(kube: FakeKube, namespace: str, name: str) -> None:
    """The preempted trainer wrote its checkpoint and exited 143: the pod is Failed (keeping its
    conditions, as the kubelet does) and removed by the next `terminate()`."""
    pod = kube.pods[(namespace, name)]
    conditions = pod["status"].get("conditions") or []
    kube.finish(namespace, name, 143)
    pod = kube.pods[(namespace, name)]
    pod["status"]["conditions"] = conditions
    pod["metadata"].pop("finalizers", None)
