"""A small JSON client for the Kubernetes REST API, used by the benchmarks.

It drives many fake pods at once: raw objects (dicts with the API's own field names), watch
streams and merge patches, which plain HTTP gives directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
import yaml


class KubeError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class KubeRest:
    """Authenticates with the client certificate of a kubeconfig (its current context)."""

    def __init__(self, kubeconfig: Path) -> None:
        cfg = yaml.safe_load(Path(kubeconfig).read_text())
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == cfg["current-context"])
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
        self.server = cluster["server"].rstrip("/")
        self.session = requests.Session()
        # Only the kubeconfig decides trust: REQUESTS_CA_BUNDLE and proxies from the environment
        # would otherwise override `verify` (a requests quirk).
        self.session.trust_env = False
        self.session.verify = cluster["certificate-authority"]
        self.session.cert = (user["client-certificate"], user["client-key"])

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: dict[str, Any] | None = None,
        timeout: float = 30,
    ) -> Any:
        data = None if body is None else json.dumps(body)
        resp = self.session.request(
            method,
            self.server + path,
            data=data,
            params=params,
            timeout=timeout,
            headers={"Content-Type": content_type, "Accept": "application/json"},
        )
        if resp.status_code >= 400:
            try:
                message = resp.json().get("message", resp.text)
            except ValueError:
                message = resp.text
            raise KubeError(resp.status_code, f"{method} {path}: {message}")
        return resp.json() if resp.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def create(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Any, kind: str = "strategic-merge-patch") -> Any:
        return self.request("PATCH", path, body, content_type=f"application/{kind}+json")

    def delete(self, path: str, body: Any = None) -> Any:
        return self.request("DELETE", path, body)

    def watch(self, path: str, timeout_seconds: int = 120, **params: Any) -> Iterator[dict[str, Any]]:
        """Yields watch events ({"type", "object"}) until the server ends the stream."""
        params = {
            **params,
            "watch": "true",
            "timeoutSeconds": str(timeout_seconds),
            "allowWatchBookmarks": "false",
        }
        with self.session.get(
            self.server + path, params=params, stream=True, timeout=timeout_seconds + 30
        ) as resp:
            if resp.status_code >= 400:
                raise KubeError(resp.status_code, f"watch {path}: {resp.text}")
            for line in resp.iter_lines():
                if line:
                    yield json.loads(line)
