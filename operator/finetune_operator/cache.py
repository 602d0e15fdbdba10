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

A stream that relists after a watch gap (410 Gone) sees nothing of what was deleted during it,
so `relist()`, called by the reconciler's periodic sweep, lists the jobs and the operator's pods
and drops what the cache holds beyond them that is not newer than the list's snapshot (as an
informer's relist replaces its store): what was created or written while the list was on its
way stays. Dropping too much would be safe, since the reconciler never trusts an absence, but
costs a pass on the API server for each job (a sweep during a burst of new jobs).

Each object is held as an `_Entry`: what the reconciler reads of it (no managedFields, a pod's
spec only where it runs and whether Kueue gates it) as compressed JSON, with its uid, version and
job beside it; a read parses a fresh copy. The compression starts from a preset dictionary per
kind (`_Dictionaries`), so what one object shares with the others of its kind costs next to
nothing.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import threading
import zlib
from typing import Any

from .api import LABEL_JOB, LABEL_MANAGED_BY, MANAGED_BY
from .kube import Keep, KubeApi

_Key = tuple[str, str]
_POD_SPEC_READ = ("nodeName", "schedulingGates")  # all of a pod's spec the reconciler reads
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
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


class _Dictionaries:
    """zlib preset dictionaries (RFC 1950's FDICT), one per kind: the first object of that kind
    the cache is given, as JSON. The jobs of one cluster share most of their text (the keys, the
    labels, the image, the settings, the condition types), and so do its pods; compressed after
    the dictionary, an object costs what is its own (names, uids, times, figures). Set once and
    kept for the process's life: an entry is read with the dictionary it was written with, so a
    first object unlike the rest only compresses the rest less well."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_kind: dict[str, bytes] = {}

    def of(self, kind: str, text: bytes) -> bytes:
        """The dictionary of `kind` (`text` becomes it if there is none yet)."""
        found = self._by_kind.get(kind)
        if found is None:
            with self._lock:
                found = self._by_kind.setdefault(kind, text)
        return found


class _Entry:
    """One cached object: its slim copy as compact JSON, zlib-compressed (level 1, after its
    kind's preset dictionary), parsed anew for every read (the fresh copy a reader may change),
    and what the cache decides on without parsing it. As Python dicts and strings (each watch
    event parsed on its own, so not even the keys are shared) 10,000 jobs and their pods took 193
    MiB; as entries compressed alone 27 MiB, less than their JSON text (40 MiB), and a read costs
    less than the `copy.deepcopy` it replaces (bench/watch_cache.py, bench/README.md)."""

    __slots__ = ("key", "uid", "version", "job", "essence", "packed", "zdict")

    def __init__(self, kind: str, obj: dict[str, Any], dictionaries: _Dictionaries) -> None:
        slim = _slim(kind, obj)
        meta = slim.get("metadata") or {}
        self.key: _Key = (meta.get("namespace", ""), meta.get("name", ""))
        self.uid: str | None = meta.get("uid")
        self.version: str | None = meta.get("resourceVersion")
        self.job: str | None = (meta.get("labels") or {}).get(LABEL_JOB) if kind == "pod" else None
        # A job's all-but-status, as a digest: whether an event changed more than the status.
        self.essence = _digest(_beyond_status(slim)) if kind == "job" else b""
        text = json.dumps(slim, separators=(",", ":")).encode()
        self.zdict = dictionaries.of(kind, text)
        packer = zlib.compressobj(1, zdict=self.zdict)
        self.packed = packer.compress(text) + packer.flush()

    def read(self) -> dict[str, Any]:
        return json.loads(zlib.decompressobj(zdict=self.zdict).decompress(self.packed))


class _Store:
    """Objects of one kind by (namespace, name), the newest resourceVersion winning."""

    def __init__(self) -> None:
        self.objects: dict[_Key, _Entry] = {}
        self._gone: collections.OrderedDict[str, None] = collections.OrderedDict()

    def stale(self, key: _Key, uid: str | None, version: str | None) -> bool:
        """Whether an object at `key` of `uid` and `version` would tell nothing new: it was
        deleted already (an answer or event that arrived late), or this or a newer version of
        it is held (the watch event of a write the cache was given the answer of)."""
        if uid in self._gone:
            return True
        old = self.objects.get(key)
        return old is not None and old.uid == uid and not newer(version, old.version)

    def put(self, entry: _Entry) -> bool:
        if self.stale(entry.key, entry.uid, entry.version):
            return False
        self.objects[entry.key] = entry
        return True

    def remove(self, key: _Key, uid: str | None) -> _Entry | None:
        """Forget the object at `key` if it is `uid`'s; returns what was held."""
        if uid:
            self._gone[uid] = None
            while len(self._gone) > _TOMBSTONES:
                self._gone.popitem(last=False)
        old = self.objects.get(key)
        if old is None or (uid and old.uid != uid):
            return None  # a newer object of the same name stays
        del self.objects[key]
        return old


class CachedKube:
    """KubeApi with reads from the watch cache and writes through to `live`."""

    def __init__(self, live: KubeApi) -> None:
        self.live = live
        self._lock = threading.Lock()
        self._jobs = _Store()
        self._pods = _Store()
        self._pods_by_job: dict[_Key, set[str]] = collections.defaultdict(set)
        self._dictionaries = _Dictionaries()
        self.hits = 0  # reads served from memory
        self.misses = 0  # reads that went to the API server (a job the watch has not shown yet)

    # ------------------------------------------------------------------------ feeding the cache
    def observe(self, kind: str, event_type: str | None, obj: dict[str, Any]) -> bool:
        """A watch event (`kind` "job" or "pod"; `event_type` ADDED, MODIFIED, DELETED, or None
        for an object of the initial listing). True if it told the cache anything new."""
        meta = obj.get("metadata") or {}
        if event_type == "DELETED":
            with self._lock:
                return self._remove(kind, _key(obj), meta.get("uid"))
        store = self._jobs if kind == "job" else self._pods
        with self._lock:  # the events of the operator's own writes: not serialised at all
            if store.stale(_key(obj), meta.get("uid"), meta.get("resourceVersion")):
                return False
        entry = self._entry(kind, obj)  # serialised outside the lock
        with self._lock:
            return self._put(kind, entry)

    def _entry(self, kind: str, obj: dict[str, Any]) -> _Entry:
        return _Entry(kind, obj, self._dictionaries)

    def _put(self, kind: str, entry: _Entry) -> bool:
        if kind == "job":
            old = self._jobs.objects.get(entry.key)
            return self._jobs.put(entry) and (old is None or old.essence != entry.essence)
        old = self._pods.objects.get(entry.key)
        if not self._pods.put(entry):
            return False
        if old is not None:
            self._unindex(old)
        if entry.job is not None:
            self._pods_by_job[(entry.key[0], entry.job)].add(entry.key[1])
        return True

    def _remove(self, kind: str, key: _Key, uid: str | None) -> bool:
        if kind == "job":
            return self._jobs.remove(key, uid) is not None
        old = self._pods.remove(key, uid)
        if old is not None:
            self._unindex(old)
        return old is not None

    def _unindex(self, pod: _Entry) -> None:
        if pod.job is None:
            return
        key = (pod.key[0], pod.job)
        names = self._pods_by_job.get(key)
        if names is not None:
            names.discard(pod.key[1])
            if not names:
                del self._pods_by_job[key]

    def sizes(self) -> tuple[int, int]:
        """(jobs, pods) held."""
        with self._lock:
            return len(self._jobs.objects), len(self._pods.objects)

    def relist(self, namespace: str | None) -> list[dict[str, Any]]:
        """List the jobs and the operator's pods of a namespace (None: all) from the API server,
        and make the cache hold just those; returns the jobs' names and uids (as `metadata`).
        What the cache holds unlisted but newer than the list's snapshot (created, or written
        through, while the list was on its way) stays: only what the snapshot shows gone goes."""
        jobs, jobs_version = self.live.list_snapshot(
            "job", namespace, "", functools.partial(self._keep, "job")
        )
        ours = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        pods, pods_version = self.live.list_snapshot(
            "pod", namespace, ours, functools.partial(self._keep, "pod")
        )
        with self._lock:
            for kind, store, listed, version in (
                ("job", self._jobs, jobs, jobs_version),
                ("pod", self._pods, pods, pods_version),
            ):
                keep = {key for key, _ in listed}
                for key, old in list(store.objects.items()):
                    if (namespace is None or key[0] == namespace) and key not in keep:
                        if version and newer(old.version, version):
                            continue  # came after the snapshot: not gone
                        del store.objects[key]
                        if kind == "pod":
                            self._unindex(old)
        return [{"metadata": {"namespace": key[0], "name": key[1], "uid": uid}} for key, uid in jobs]

    def _keep(self, kind: str, obj: dict[str, Any]) -> tuple[_Key, str | None]:
        """One listed object, as its page arrives: into the cache unless it holds that version
        already (a relist of 10,000 unchanged objects builds no second copy of them); its key
        and uid for the rest of the relist."""
        key, meta = _key(obj), obj.get("metadata") or {}
        held = (self._jobs if kind == "job" else self._pods).objects.get(key)
        if held is None or (held.uid, held.version) != (meta.get("uid"), meta.get("resourceVersion")):
            entry = self._entry(kind, obj)
            with self._lock:
                self._put(kind, entry)
        return key, meta.get("uid")

    def refresh(self, namespace: str, selector: str, job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        """What a pass read from the API server (the cache had lagged): the job, and exactly
        these pods for that selector."""
        terms = selector_terms(selector)
        keep = {_key(pod) for pod in pods}
        entries = [self._entry("job", job)] + [self._entry("pod", pod) for pod in pods]
        with self._lock:
            self._put("job", entries[0])
            for old in self._candidates(namespace, terms):
                if old.key not in keep and terms.items() <= _labels(old.read()).items():
                    del self._pods.objects[old.key]
                    self._unindex(old)
            for entry in entries[1:]:
                self._put("pod", entry)

    def _candidates(self, namespace: str, terms: dict[str, str]) -> list[_Entry]:
        """The pods of a namespace that may match `terms`, in name order: by the job index when
        the selector names a job (as the reconciler's always do), so no other entry is parsed."""
        if LABEL_JOB in terms:
            names = self._pods_by_job.get((namespace, terms[LABEL_JOB]), ())
            return [self._pods.objects[(namespace, n)] for n in sorted(names)]
        return [p for (ns, _), p in sorted(self._pods.objects.items()) if ns == namespace]

    # ------------------------------------------------------------------------ reads
    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            entry = self._jobs.objects.get((namespace, name))
            if entry is not None:
                self.hits += 1
        if entry is not None:
            return entry.read()
        with self._lock:
            self.misses += 1
        job = self.live.get_job(namespace, name)  # 404 propagates: the job is gone
        entry = self._entry("job", job)
        with self._lock:
            self._jobs.put(entry)
        return job

    def list_jobs(self, namespace: str | None, each: Keep | None = None) -> list[dict[str, Any]]:
        # The sweep looks for jobs the watch missed: only the API server can say.
        return self.live.list_jobs(namespace, each)

    def list_snapshot(
        self, kind: str, namespace: str | None, selector: str = "", each: Keep | None = None
    ) -> tuple[list[Any], str]:
        return self.live.list_snapshot(kind, namespace, selector, each)

    def list_pods(self, namespace: str, selector: str, each: Keep | None = None) -> list[dict[str, Any]]:
        terms = selector_terms(selector)
        with self._lock:
            self.hits += 1
            candidates = self._candidates(namespace, terms)
        pods = [p for p in (e.read() for e in candidates) if terms.items() <= _labels(p).items()]
        return pods if each is None else [each(p) for p in pods]

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
        self,
        job: dict[str, Any],
        event_type: str,
        reason: str,
        message: str,
        now: str,
        seq: int = 0,
        closing: bool = False,
    ) -> None:
        self.live.job_event(job, event_type, reason, message, now, seq, closing)


def _slim(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """What the reconciler reads (a shallow copy, serialised at once): never managedFields (often a
    third of an object) nor kubectl's last-applied-configuration (the whole manifest again, as a
    string), and of a pod's spec only where it was placed and whether Kueue gates it (the
    containers, volumes and security context are most of a pod, and the pod is rendered from its
    job, not read)."""
    out = {}
    for key, value in obj.items():
        if key == "metadata":
            value = {k: v for k, v in value.items() if k != "managedFields"}
            annotations = value.get("annotations")
            if annotations and LAST_APPLIED in annotations:
                value["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
        elif key == "spec" and kind != "job":
            value = {k: value[k] for k in _POD_SPEC_READ if k in value}
        out[key] = value
    return out


def _digest(value: Any) -> bytes:
    return hashlib.blake2b(json.dumps(value, sort_keys=True).encode(), digest_size=16).digest()


def _beyond_status(job: dict[str, Any]) -> tuple[Any, ...]:
    """What of a job others than the operator change: all but its status (and the bookkeeping
    every write moves: resourceVersion, managedFields)."""
    meta = {
        k: v for k, v in (job.get("metadata") or {}).items() if k not in ("resourceVersion", "managedFields")
    }
    return meta, {k: v for k, v in job.items() if k not in ("metadata", "status")}


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _key(obj: dict[str, Any]) -> _Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")
