"""The few Kubernetes API calls the operator makes, with plain dicts in and out.

`KubeReads` and `KubeWrites` are the interface the reconciler uses: reads (a job, its pods, a log
tail, an access review) apart from writes (the job's status, pods, the job itself, Events), so
that reads can later come from watch caches while every write still goes to the API server.
`Kube` implements both on the kubernetes client's ApiClient (kubeconfig or in-cluster
credentials, TLS, retries of the connection pool) the way its DynamicClient is, but without
discovery or model classes: the operator renders manifests as dicts and reads camelCase dicts
back. The tests use an in-memory implementation of the same interface
(tests/operator/fake_kube.py). RBAC.md lists every call.

Errors are the client's ApiException, whose body is the API server's Status object:
`api_status()` reads its code, reason (NotFound, AlreadyExists, Conflict, Forbidden, Invalid,
...), message and details.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import kubernetes
from kubernetes.client.exceptions import ApiException

from .api import API_VERSION, FIELD_MANAGER, GROUP, KIND, PLURAL, VERSION

_JOBS = f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}"
_WORKLOADS = "/apis/kueue.x-k8s.io/v1beta2/namespaces/{ns}/workloads"


def load_api_client(threads: int = 0) -> kubernetes.client.ApiClient:
    """In-cluster credentials when running in a pod, else $KUBECONFIG / ~/.kube/config.

    `threads`: how many threads share the client. Its connection pool keeps at least that many
    connections: the kubernetes client keeps 5 per CPU by default (10 on 2 cores) and closes the
    connection of every request past that, so a later one pays a new TLS handshake (96 times in
    a burst of 1,000 jobs with 16 workers)."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize, threads)
    return kubernetes.client.ApiClient(configuration)


def is_status(exc: BaseException, code: int) -> bool:
    return isinstance(exc, ApiException) and exc.status == code


@dataclass(frozen=True)
class ApiStatus:
    """The API server's Status object of a failed request (metav1.Status)."""

    code: int
    reason: str = ""  # NotFound, AlreadyExists, Conflict, Forbidden, Invalid, ...
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # name, kind, causes

    @property
    def causes(self) -> list[dict[str, Any]]:
        return list(self.details.get("causes") or [])


def api_status(exc: BaseException) -> ApiStatus | None:
    """The Status of an ApiException (None for anything else, such as a dropped connection)."""
    if not isinstance(exc, ApiException):
        return None
    try:
        body = json.loads(getattr(exc, "body", "") or "")
    except (ValueError, TypeError):
        body = None
    if not isinstance(body, dict):
        return ApiStatus(exc.status or 0, str(exc.reason or ""), str(exc))
    details = body.get("details")
    return ApiStatus(
        int(body.get("code") or exc.status or 0),
        str(body.get("reason") or ""),
        str(body.get("message") or exc),
        details if isinstance(details, dict) else {},
    )


def api_message(exc: BaseException) -> str:
    """The API server's message from an ApiException (its Status body), else the exception."""
    status = api_status(exc)
    return status.message if status else str(exc)


Keep = Callable[[dict[str, Any]], Any]  # what a list keeps of each item it reads (default: the item)
WATCH_CHUNK = 1 << 16  # bytes read at most per call on a watch stream
WATCH_SLACK_SECONDS = 30  # a watch's read timeout beyond the server's timeoutSeconds
LIST_PAGE = 100  # items per LIST request (the API server's `limit`): a relist of thousands of
# pods held them all as Python objects before the cache kept its slim copies (964 MiB at 10,000);
# a page of 500 full pods (managedFields and all) still lifted RSS by tens of MiB
# while it was parsed (the sweep's relist, 10,000 jobs: +45 MiB)


class KubeReads(Protocol):
    """What the reconciler reads. Nothing here changes the cluster."""

    def get_job(self, namespace: str, name: str) -> dict[str, Any]: ...

    def list_jobs(self, namespace: str | None, each: Keep | None = None) -> list[dict[str, Any]]:
        """The FineTuneJobs of a namespace, or of all namespaces (None); `each` is applied to
        every item as its page arrives, so the full objects of only one page are held at once."""
        ...

    def list_pods(self, namespace: str, selector: str, each: Keep | None = None) -> list[dict[str, Any]]: ...

    def list_snapshot(
        self, kind: str, namespace: str | None, selector: str = "", each: Keep | None = None
    ) -> tuple[list[Any], str]:
        """The jobs or pods (`kind` "job" or "pod") of a namespace (None: all) matching
        `selector`, and the resourceVersion of the snapshot they come from: what changed after
        it is newer than it."""
        ...

    def pod_log_tail(
        self, namespace: str, name: str, container: str, lines: int, limit_bytes: int, since_seconds: int
    ) -> str: ...

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ConfigMap of that name, None if there is none."""
        ...

    def get_workload(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Kueue's Workload of that name (kueue.x-k8s.io/v1beta2), None if there is none."""
        ...

    def can_i(self, verb: str, resource: str, namespace: str, group: str = "") -> bool:
        """Whether the operator's own identity may do this (a SelfSubjectAccessReview: a question
        to the API server, which every authenticated client may ask; it stores nothing)."""
        ...


class KubeWrites(Protocol):
    """Every change the reconciler makes to the cluster."""

    def patch_job_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any]:
        """A JSON merge patch of the status (None deletes a key). With `resource_version`, a 409
        Conflict if the job changed since it was read."""
        ...

    def create_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        """409 AlreadyExists if a pod of that name exists."""
        ...

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Delete that very pod (uid precondition); nothing happens if it is gone or replaced."""
        ...

    def create_config_map(self, config_map: dict[str, Any]) -> dict[str, Any]:
        """409 AlreadyExists if one of that name exists."""
        ...

    def create_pod_group(self, group: dict[str, Any]) -> dict[str, Any]:
        """A gang scheduler's PodGroup (its apiVersion says which); 409 AlreadyExists if one of
        that name exists."""
        ...

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        """Delete that very job (uid precondition: 409 for a newer job of the same name, 404 when
        gone); the garbage collector removes its pods."""
        ...

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
        """An Event on the job as this pass read it (`seq`: its place among the pass's Events;
        `closing`: the job's last transition). Posting it again adds nothing (see `event_name`)."""
        ...


class KubeApi(KubeReads, KubeWrites, Protocol):
    """The whole interface: what `Reconciler` is given."""


class Kube:
    """KubeApi on the API server. Synchronous calls (the controller runs them in worker threads)."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        timeout: float = 30.0,
        on_request: Callable[[str, str], None] | None = None,
        page: int = LIST_PAGE,
    ) -> None:
        """`on_request(verb, resource)` is told of every request (the request counter)."""
        self.api = api_client
        self.timeout = timeout
        self.on_request = on_request
        self.page = page

    def _request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        raw: bool = False,
    ) -> Any:
        if self.on_request is not None:
            self.on_request(*request_kind(method, path))
        headers = {"Accept": "application/json", "Content-Type": content_type}
        request = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request, _request_timeout=self.timeout)
        response.read()
        if not 200 <= response.status <= 299:
            self.api.response_deserialize(response, {})  # raises ApiException with the body
        data = response.data or b""
        if raw:
            return data.decode("utf-8", errors="replace")
        return json.loads(data) if data else {}

    # FineTuneJobs ---------------------------------------------------------------------------
    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        return self._request("GET", f"{_JOBS.format(ns=namespace)}/{quote(name)}")

    def _list(self, path: str, query: list[tuple[str, Any]], each: Keep | None) -> list[dict[str, Any]]:
        return self.list_versioned(path, query, each)[0]

    def list_versioned(
        self, path: str, query: list[tuple[str, Any]], each: Keep | None = None
    ) -> tuple[list[Any], str]:
        """Every item of a collection, a page of `page` at a time, and the resourceVersion of the
        snapshot they come from (a watch from it misses nothing). The continue token keeps one
        snapshot; one that expired mid-list raises 410, and the caller lists again later."""
        kept: list[Any] = []
        token = version = ""
        while True:
            more = [("continue", token)] if token else []
            data = self._request("GET", path, query=[*query, ("limit", self.page), *more])
            items = data.get("items") or []
            kept.extend(items if each is None else map(each, items))
            meta = data.get("metadata") or {}
            version = version or meta.get("resourceVersion") or ""
            token = meta.get("continue") or ""
            if not token:
                return kept, version

    def watch(
        self,
        path: str,
        query: list[tuple[str, Any]],
        version: str,
        seconds: int,
        opened: Callable[[Any], None],
    ) -> Iterator[dict[str, Any]]:
        """The events of one watch request on a collection from `version` on, bookmarks
        included, until the API server ends it after `seconds`. `opened(response)` is told of the
        open response (closing it ends the iteration from another thread)."""
        if self.on_request is not None:
            self.on_request("watch", request_kind("GET", path)[1])
        query = [
            *query,
            ("watch", "true"),
            ("resourceVersion", version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", seconds),
        ]
        headers = {"Accept": "application/json"}
        request = self.api.param_serialize(
            "GET", path, query_params=query, header_params=headers, auth_settings=["BearerToken"]
        )
        # Connect within the usual timeout; a read may wait for the server's own end of the watch.
        response = self.api.call_api(*request, _request_timeout=(self.timeout, seconds + WATCH_SLACK_SECONDS))
        if not 200 <= response.status <= 299:
            response.read()
            self.api.response_deserialize(response, {})  # raises ApiException with the body
        raw = response.response
        opened(raw)
        try:
            rest = b""
            for chunk in raw.stream(WATCH_CHUNK):  # one chunk per event, as the server flushes them
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        finally:
            raw.close()  # ended, or left early: the connection is not reused mid-stream
            raw.release_conn()

    def list_jobs(self, namespace: str | None, each: Keep | None = None) -> list[dict[str, Any]]:
        return self._list(collection_path("job", namespace), [], each)

    def list_snapshot(
        self, kind: str, namespace: str | None, selector: str = "", each: Keep | None = None
    ) -> tuple[list[Any], str]:
        query = [("labelSelector", selector)] if selector else []
        return self.list_versioned(collection_path(kind, namespace), query, each)

    def patch_job_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:  # a merge patch carrying it is an optimistic lock
            body["metadata"] = {"resourceVersion": resource_version}
        return self._request(
            "PATCH",
            f"{_JOBS.format(ns=namespace)}/{quote(name)}/status",
            query=[("fieldManager", FIELD_MANAGER)],
            body=body,
            content_type="application/merge-patch+json",
        )

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        # The uid precondition: never delete a newer job that reuses the name.
        body = {"propagationPolicy": "Background", "preconditions": {"uid": uid}}
        self._request("DELETE", f"{_JOBS.format(ns=namespace)}/{quote(name)}", body=body)

    # Pods -----------------------------------------------------------------------------------
    def list_pods(
        self, namespace: str | None, selector: str, each: Keep | None = None
    ) -> list[dict[str, Any]]:
        """The pods matching `selector` in a namespace, or in all of them (None)."""
        return self._list(collection_path("pod", namespace), [("labelSelector", selector)], each)

    def create_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        ns = pod["metadata"]["namespace"]
        return self._request(
            "POST", f"/api/v1/namespaces/{ns}/pods", query=[("fieldManager", FIELD_MANAGER)], body=pod
        )

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        body = {"propagationPolicy": "Background", "preconditions": {"uid": uid}}
        try:
            self._request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{quote(name)}", body=body)
        except ApiException as exc:
            if exc.status not in (404, 409):  # already gone, or replaced by another pod
                raise

    # ConfigMaps (a multi-node attempt's rank 0 address) and PodGroups ---------------------------
    def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{quote(name)}")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_config_map(self, config_map: dict[str, Any]) -> dict[str, Any]:
        ns = config_map["metadata"]["namespace"]
        query = [("fieldManager", FIELD_MANAGER)]
        return self._request("POST", f"/api/v1/namespaces/{ns}/configmaps", query=query, body=config_map)

    def create_pod_group(self, group: dict[str, Any]) -> dict[str, Any]:
        ns = group["metadata"]["namespace"]
        path = f"/apis/{group['apiVersion']}/namespaces/{ns}/podgroups"
        return self._request("POST", path, query=[("fieldManager", FIELD_MANAGER)], body=group)

    def pod_log_tail(
        self, namespace: str, name: str, container: str, lines: int, limit_bytes: int, since_seconds: int
    ) -> str:
        """The last `lines` lines written in the last `since_seconds`, at most `limit_bytes`, each
        after the kubelet's RFC 3339 timestamp and a space."""
        query = [("container", container), ("tailLines", lines), ("limitBytes", limit_bytes)]
        # With the kubelet's timestamp of each line: when the trainer printed its progress
        # (progress_pace.py times the next read by it).
        query += [("sinceSeconds", since_seconds), ("timestamps", "true")]
        return self._request(
            "GET", f"/api/v1/namespaces/{namespace}/pods/{quote(name)}/log", query=query, raw=True
        )

    def get_workload(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._request("GET", f"{_WORKLOADS.format(ns=namespace)}/{quote(name)}")
        except ApiException as exc:
            if exc.status == 404:  # not created yet, gone with its pods, or Kueue not installed
                return None
            raise

    def can_i(self, verb: str, resource: str, namespace: str, group: str = "") -> bool:
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                }
            },
        }
        answer = self._request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review)
        return bool((answer.get("status") or {}).get("allowed"))

    def review_token(self, token: str, audience: str) -> dict[str, Any]:
        """A TokenReview of `token` for `audience`: its status (authenticated, user, audiences)."""
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        }
        answer = self._request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body=review)
        return answer.get("status") or {}

    # Events ---------------------------------------------------------------------------------
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
        """A core/v1 Event (``Normal`` or ``Warning``) on the job: `kubectl describe ftj` shows these.
        Posting the same Event again (same name: see `event_name`) is a no-op."""
        meta = job["metadata"]
        name = event_name(job, event_type, reason, message, seq, closing)
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=event)
        except ApiException as exc:
            if not is_status(exc, 409):
                raise
            # AlreadyExists: posted by a pass that died before its status write (or, for the
            # closing Event, by the pass a restart repeats it for); once is enough.


def collection_path(kind: str, namespace: str | None) -> str:
    """The API path of the FineTuneJobs ("job") or pods ("pod") of a namespace (None: all)."""
    if kind == "job":
        return f"/apis/{GROUP}/{VERSION}/{PLURAL}" if namespace is None else _JOBS.format(ns=namespace)
    return "/api/v1/pods" if namespace is None else f"/api/v1/namespaces/{namespace}/pods"


def request_kind(method: str, path: str) -> tuple[str, str]:
    """(verb, resource) of a request, as the API server's metrics name them: ("list", "pods"),
    ("get", "pods/log"), ("patch", "finetunejobs/status")."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if "namespaces" in parts:
        parts = parts[parts.index("namespaces") + 2 :]
    else:
        parts = parts[3:] if parts[:1] == ["apis"] else parts[2:]
    resource = parts[0] if parts else ""
    if len(parts) > 2:
        resource += "/" + parts[2]
    verb = {"POST": "create", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}.get(method, "")
    if not verb:
        verb = "get" if len(parts) > 1 else "list"
    return verb, resource


def event_name(
    job: dict[str, Any], event_type: str, reason: str, message: str, seq: int = 0, closing: bool = False
) -> str:
    """The Event's name. A pass repeated on the same version of the job (the process died between
    its Events and the status write that follows them) names its Events the same, so the API
    server keeps one of each (409 AlreadyExists): a transition is reported once, through crashes
    and leader handovers. A later transition comes from a later version of the job (the status
    write between them). The name sorts as the Events were posted, as client-go's
    <object>.<nanoseconds in hex> names do (the API server lists objects by name): the job's
    resourceVersion (an etcd revision, which grows), the Event's place in its pass, then a
    digest of the job's uid and the Event. An object read without a resourceVersion (a
    ReconcileError report) gets client-go's name: never a repeat, always posted.

    `closing`: the job's last transition (Succeeded or Failed), which a job makes once and which
    is posted after the status that records it; a pass after a restart posts it again from that
    status alone (where the message may be shortened). Its name is the uid and the reason, and
    sorts after the job's other transitions."""
    meta = job["metadata"]
    # An object name is at most 253 characters, each dot-separated part starting and ending
    # with a letter or digit; 37 are the suffix.
    prefix = meta["name"][:216].rstrip("-.")
    version = meta.get("resourceVersion") or ""
    if not closing and not version.isdigit():
        return f"{prefix}.{time.time_ns():x}"
    parts = (meta.get("uid", ""), event_type, reason) + (() if closing else (message[:1024],))
    digest = hashlib.sha256("\0".join(parts).encode("utf-8", errors="replace")).hexdigest()[:16]
    place = "f" * 18 if closing else f"{int(version):016x}{seq % 256:02x}"
    return f"{prefix}.{place}.{digest}"
