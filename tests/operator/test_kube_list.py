"""Lists come in pages: the sweep's relist of thousands of jobs and pods holds the full objects of
one page at a time (the API server's `limit` and `continue`), on the real API server."""

from __future__ import annotations

import json
from typing import Any

from finetune_operator.kube import Kube

from tests.operator import crd

JOBS = 7
PAGE = 3


def test_a_list_comes_in_pages_and_keeps_what_each_item_gives(
    cluster: Any, namespace: str, crd_installed: str
) -> None:
    names = [f"paged-{i}" for i in range(JOBS)]
    listing = {"apiVersion": "v1", "kind": "List", "items": [crd.minimal_job(n) for n in names]}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(listing), namespace=namespace)
    requests: list[tuple[str, str]] = []
    api_client = cluster.api_client()
    try:
        kube = Kube(api_client, on_request=lambda *kind: requests.append(kind), page=PAGE)
        kept = kube.list_jobs(namespace, each=lambda job: {"name": job["metadata"]["name"]})
        assert sorted(k["name"] for k in kept) == names  # each once, in ceil(7 / 3) requests
        assert len(requests) == -(-JOBS // PAGE)
        full = kube.list_jobs(namespace)
        assert sorted(j["metadata"]["name"] for j in full) == names and all("spec" in j for j in full)
        assert kube.list_pods(namespace, "app=none") == []  # an empty answer is one page
    finally:
        api_client.close()
