"""Reads from the watch streams: FineTuneJobs and their pods in memory, fed by the watch events
the operator receives anyway (kopf's watches: one LIST at start, then events), so a reconcile
pass sends no GET or LIST of its own.

`CachedKube` implements `KubeApi` over another one (`live`, the API server): reads come from the
cache, writes go to `live` and their answers go into the cache at once (write-through), so the
pass after a write sees it even before its watch event arrives. What keeps a cache that lags
behind the API server from ever doing harm is in the reconciler (controller.py), which trusts
the cache for what it shows and never for an absence or an old status:
* a pod the cache does not show is confirmed with a LIST before it counts as missing, and before
  a retry's pod is created (an earlier attempt's pod might still run);
* a pod created under a name in use (409) sends the pass back to the API server;
* every status write carries the job's resourceVersion (a 409 Conflict if the cached job was
  stale), and the pass is redone on what the API server holds.

`observe()` says whether an event calls for a pass: not the watch event of the operator's own
write, which carries the resourceVersion the write-through stored already, nor, should it arrive
before the write's answer, a job event that changed nothing but the status: only the operator
writes a job's status (one replica acts at a time).

kopf relists after a watch gap (410 Gone) but reports nothing of what was deleted during it, so
`relist()`, called by the reconciler's periodic sweep, lists the jobs and the operator's pods and
drops what the cache holds beyond them (as an informer's relist replaces its store). An object
created while the list was on its way may be dropped too; that is safe, since the reconciler
never trusts an absence, and the next event or write brings it back.
"""

from __future__ import annotations

import collections
import copy
import functools
import threading
from typing import Any

from .api import LABEL_JOB, LABEL_MANAGED_BY, MANAGED_BY
from .kube import Keep, KubeApi

_Key = tuple[str, str]
_POD_SPEC_READ = ("nodeName", "schedulingGates")  # all of a pod's spec the reconciler reads
_TOMBSTONES = 4096  # uids of deleted objects remembered, so a late write-through cannot revive one


def newer(version: str | None, than: str | None) -> bool:
    """Whether resourceVersion `version` is newer than `than` (None: nothing known). The API server
    treats them as opaque; etcd revisions only grow, and the operator already relies on that for
    its Event names. Two that are not both numbers count as different, hence newer."""
    if than is None:
        return True
    if version is None:
        return False
    if version.isdigit() and than.isdigit():
        return int(version) > int(than)
    return version != than


def selector_terms(selector: str) -> dict[str, str]:
    """`a=b,c=d` (equality terms only, as the reconciler writes them)."""
    terms = {}
    for term in selector.split(","):
        key, sep, value = term.partition("=")
        if not sep or not key:
            raise ValueError(f"label selector {selector!r}: only key=value terms are supported")
        terms[key.strip()] = value.strip()
    return terms


class _Store:
    """Objects of one kind by (namespace, name), the newest resourceVersion winning."""

    def __init__(self) -> None:
        self.objects: dict[_Key, dict[str, Any]] = {}
        self._gone: collections.OrderedDict[str, None] = collections.OrderedDict()

    def put(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if meta.get("uid") in self._gone:
            return False  # deleted already: an answer or event that arrived late
        old = self.objects.get(key)
        same = old is not None and old["metadata"].get("uid") == meta.get("uid")
        if same and not newer(meta.get("resourceVersion"), old["metadata"].get("resourceVersion")):
            return False
        self.objects[key] = obj
        return True

    def remove(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        uid = meta.get("uid")
        if uid:
            self._gone[uid] = None
            while len(self._gone) > _TOMBSTONES:
                self._gone.popitem(last=False)
        old = self.objects.get(key)
        if old is None or (uid and old["metadata"].get("uid") != uid):
            return False  # a newer object of the same name stays
        del self.objects[key]
        return True


class CachedKube:
    """KubeApi with reads from the watch cache and writes through to `live`."""

    def __init__(self, live: KubeApi) -> None:
        self.live = live
        self._lock = threading.Lock()
        self._jobs = _Store()
        self._pods = _Store()
        self._pods_by_job: dict[_Key, set[str]] = collections.defaultdict(set)
        self.hits = 0  # reads served from memory
        self.misses = 0  # reads that went to the API server (a job the watch has not shown yet)

    # ------------------------------------------------------------------------ feeding the cache
    def observe(self, kind: str, event_type: str | None, obj: dict[str, Any]) -> bool:
        """A watch event (`kind` "job" or "pod"; `event_type` ADDED, MODIFIED, DELETED, or None
        for an object of the initial listing). True if it told the cache anything new."""
        with self._lock:
            if event_type == "DELETED":
                return self._remove(kind, obj)
            return self._put(kind, obj)

    def _put(self, kind: str, obj: dict[str, Any], slimmed: bool = False) -> bool:
        """Keep a slim copy of `obj` (`slimmed`: `obj` is one already, and nobody else's)."""
        if not slimmed:
            obj = _slim(kind, obj)
        if kind == "job":
            old = self._jobs.objects.get(_key(obj))
            return self._jobs.put(obj) and (old is None or _beyond_status(old) != _beyond_status(obj))
        old = self._pods.objects.get(_key(obj))
        if not self._pods.put(obj):
            return False
        if old is not None:
            self._unindex(old)
        job = (obj["metadata"].get("labels") or {}).get(LABEL_JOB)
        if job is not None:
            self._pods_by_job[(obj["metadata"]["namespace"], job)].add(obj["metadata"]["name"])
        return True

    def _remove(self, kind: str, obj: dict[str, Any]) -> bool:
        if kind == "job":
            return self._jobs.remove(obj)
        old = self._pods.objects.get(_key(obj))
        if not self._pods.remove(obj):
            return False
        if old is not None:
            self._unindex(old)
        return True

    def _unindex(self, pod: dict[str, Any]) -> None:
        job = (pod["metadata"].get("labels") or {}).get(LABEL_JOB)
        if job is None:
            return
        key = (pod["metadata"]["namespace"], job)
        names = self._pods_by_job.get(key)
        if names is not None:
            names.discard(pod["metadata"]["name"])
            if not names:
                del self._pods_by_job[key]

    def sizes(self) -> tuple[int, int]:
        """(jobs, pods) held."""
        with self._lock:
            return len(self._jobs.objects), len(self._pods.objects)

    def relist(self, namespace: str | None) -> list[dict[str, Any]]:
        """List the jobs and the operator's pods of a namespace (None: all) from the API server,
        and make the cache hold just those; returns the jobs."""
        # Slimmed page by page: the whole answer is never held as full objects.
        jobs = self.live.list_jobs(namespace, each=functools.partial(_slim, "job"))
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        pods = self.live.list_pods(namespace, selector, each=functools.partial(_slim, "pod"))  # type: ignore[arg-type]
        with self._lock:
            for kind, store, listed in (("job", self._jobs, jobs), ("pod", self._pods, pods)):
                keep = {_key(obj) for obj in listed}
                for key, obj in list(store.objects.items()):
                    if (namespace is None or key[0] == namespace) and key not in keep:
                        del store.objects[key]
                        if kind == "pod":
                            self._unindex(obj)
                for obj in listed:
                    self._put(kind, obj, slimmed=True)
        return jobs

    def refresh(self, namespace: str, selector: str, job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        """What a pass read from the API server (the cache had lagged): the job, and exactly
        these pods for that selector."""
        terms = selector_terms(selector)
        keep = {_key(pod) for pod in pods}
        with self._lock:
            self._put("job", job)
            for key, pod in list(self._pods.objects.items()):
                labels = pod["metadata"].get("labels") or {}
                if key[0] == namespace and key not in keep and terms.items() <= labels.items():
                    del self._pods.objects[key]
                    self._unindex(pod)
            for pod in pods:
                self._put("pod", pod)

    # ------------------------------------------------------------------------ reads
    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.objects.get((namespace, name))
            if job is not None:
                self.hits += 1
                return copy.deepcopy(job)
            self.misses += 1
        job = self.live.get_job(namespace, name)  # 404 propagates: the job is gone
        with self._lock:
            self._jobs.put(copy.deepcopy(job))
        return job

    def list_jobs(self, namespace: str | None, each: Keep | None = None) -> list[dict[str, Any]]:
        # The sweep looks for jobs the watch missed: only the API server can say.
        return self.live.list_jobs(namespace, each)

    def list_pods(self, namespace: str, selector: str, each: Keep | None = None) -> list[dict[str, Any]]:
        terms = selector_terms(selector)
        with self._lock:
            self.hits += 1
            if LABEL_JOB in terms:
                names = self._pods_by_job.get((namespace, terms[LABEL_JOB]), ())
                candidates = [self._pods.objects[(namespace, n)] for n in sorted(names)]
            else:
                candidates = [p for (ns, _), p in sorted(self._pods.objects.items()) if ns == namespace]
            copies = [
                copy.deepcopy(p)
                for p in candidates
                if terms.items() <= (p["metadata"].get("labels") or {}).items()
            ]
        return copies if each is None else [each(p) for p in copies]

    def pod_log_tail(
        self, namespace: str, name: str, container: str, lines: int, limit_bytes: int, since_seconds: int
    ) -> str:
        return self.live.pod_log_tail(namespace, name, container, lines, limit_bytes, since_seconds)

    def get_workload(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.live.get_workload(namespace, name)

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.live.get_config_map(namespace, name)  # rare (multi-node starts): not cached

    def can_i(self, verb: str, resource: str, namespace: str, group: str = "") -> bool:
        return self.live.can_i(verb, resource, namespace, group)

    # ------------------------------------------------------------------------ writes
    def patch_job_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any]:
        job = self.live.patch_job_status(namespace, name, status, resource_version)
        self.observe("job", "MODIFIED", job)
        return job

    def create_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        created = self.live.create_pod(pod)  # a 409 sends the pass to the API server
        self.observe("pod", "ADDED", created)
        return created

    def create_config_map(self, config_map: dict[str, Any]) -> dict[str, Any]:
        return self.live.create_config_map(config_map)

    def create_pod_group(self, group: dict[str, Any]) -> dict[str, Any]:
        return self.live.create_pod_group(group)

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        self.live.delete_pod(namespace, name, uid)  # the watch shows the pod going, then gone

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        self.live.delete_job(namespace, name, uid)
        self.observe("job", "DELETED", {"metadata": {"namespace": namespace, "name": name, "uid": uid}})

    def job_event(
        self, job: dict[str, Any], event_type: str, reason: str, message: str, now: str, seq: int = 0
    ) -> None:
        self.live.job_event(job, event_type, reason, message, now, seq)


def _slim(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of what the reconciler reads: never managedFields (often a third of an object), and
    of a pod's spec only where it was placed and whether Kueue gates it (the containers, volumes
    and security context are most of a pod, and the pod is rendered from its job, not read)."""
    out = {k: copy.deepcopy(v) for k, v in obj.items() if k not in ("metadata", "spec")}
    meta = obj.get("metadata") or {}
    out["metadata"] = {k: copy.deepcopy(v) for k, v in meta.items() if k != "managedFields"}
    spec = obj.get("spec")
    if spec is not None and kind != "job":
        spec = {k: spec[k] for k in _POD_SPEC_READ if k in spec}
    if spec is not None:
        out["spec"] = copy.deepcopy(spec)
    return out


def _beyond_status(job: dict[str, Any]) -> tuple[Any, ...]:
    """What of a job others than the operator change: all but its status (and the bookkeeping
    every write moves: resourceVersion, managedFields)."""
    meta = {
        k: v for k, v in (job.get("metadata") or {}).items() if k not in ("resourceVersion", "managedFields")
    }
    return meta, {k: v for k, v in job.items() if k not in ("metadata", "status")}


def _key(obj: dict[str, Any]) -> _Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")
