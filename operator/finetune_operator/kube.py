"""The few Kubernetes API calls the operator makes, with plain dicts in and out.

Built on the kubernetes client's ApiClient (kubeconfig or in-cluster credentials, TLS, retries of
the connection pool) the way its DynamicClient is, but without discovery or model classes: the
operator renders manifests as dicts and reads camelCase dicts back. RBAC.md lists every call.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

import kubernetes
from kubernetes.client.exceptions import ApiException

from .api import API_VERSION, FIELD_MANAGER, GROUP, KIND, PLURAL, VERSION

_JOBS = f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}"


def load_api_client() -> kubernetes.client.ApiClient:
    """In-cluster credentials when running in a pod, else $KUBECONFIG / ~/.kube/config."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


def is_status(exc: Exception, code: int) -> bool:
    return isinstance(exc, ApiException) and exc.status == code


def api_message(exc: Exception) -> str:
    """The API server's message from an ApiException (its Status body), else the exception."""
    try:
        return str(json.loads(getattr(exc, "body", "") or "")["message"])
    except (ValueError, KeyError, TypeError):
        return str(exc)


class Kube:
    """Synchronous calls (the controller runs them in worker threads)."""

    def __init__(self, api_client: kubernetes.client.ApiClient, timeout: float = 30.0) -> None:
        self.api = api_client
        self.timeout = timeout

    def _request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        raw: bool = False,
    ) -> Any:
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

    def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return self._request(
            "PATCH",
            f"{_JOBS.format(ns=namespace)}/{quote(name)}/status",
            query=[("fieldManager", FIELD_MANAGER)],
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        # The uid precondition: never delete a newer job that reuses the name.
        body = {"propagationPolicy": "Background", "preconditions": {"uid": uid}}
        self._request("DELETE", f"{_JOBS.format(ns=namespace)}/{quote(name)}", body=body)

    # Pods -----------------------------------------------------------------------------------
    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        data = self._request(
            "GET", f"/api/v1/namespaces/{namespace}/pods", query=[("labelSelector", selector)]
        )
        return data.get("items") or []

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

    def pod_log_tail(
        self, namespace: str, name: str, container: str, lines: int, limit_bytes: int, since_seconds: int
    ) -> str:
        """The last `lines` lines written in the last `since_seconds`, at most `limit_bytes`."""
        query = [("container", container), ("tailLines", lines), ("limitBytes", limit_bytes)]
        query.append(("sinceSeconds", since_seconds))
        return self._request(
            "GET", f"/api/v1/namespaces/{namespace}/pods/{quote(name)}/log", query=query, raw=True
        )

    # Events ---------------------------------------------------------------------------------
    def job_event(self, job: dict[str, Any], event_type: str, reason: str, message: str, now: str) -> None:
        """A core/v1 Event (``Normal`` or ``Warning``) on the job: `kubectl describe ftj` shows these."""
        meta = job["metadata"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            # As client-go's recorder names them: <object>.<unix nanoseconds in hex>, which sorts.
            "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": meta["namespace"]},
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
        self._request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=event)
