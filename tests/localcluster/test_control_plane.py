"""The local control plane is a real Kubernetes: pinned version, RBAC, ServiceAccount tokens, CRDs, GC."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

import localcluster
from localcluster import Cluster
from localcluster.binaries import pinned_versions


def pinned_k8s_version() -> str:
    return pinned_versions()["K8S_VERSION"]


def test_every_binary_reports_its_pinned_version(cluster: Cluster) -> None:
    v = pinned_versions()

    def version(*cmd: str) -> str:
        proc = subprocess.run(
            [str(cluster.bin_dir / cmd[0]), *cmd[1:]], capture_output=True, text=True, check=True
        )
        return proc.stdout

    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        assert version(name, "--version").strip() == f"Kubernetes {v['K8S_VERSION']}"
    assert f"Client Version: {v['K8S_VERSION']}" in version("kubectl", "version", "--client")
    assert version("etcd", "--version").startswith(f"etcd Version: {v['ETCD_VERSION'].removeprefix('v')}\n")
    assert version("kwok", "--version").startswith(f"kwok version {v['KWOK_VERSION']} ")
    assert version("helm", "version", "--template", "{{.Version}}") == v["HELM_VERSION"]


def test_api_server_reports_the_pinned_version(cluster: Cluster) -> None:
    expected = pinned_k8s_version()
    info = client.VersionApi(cluster.api_client()).get_code()
    assert info.git_version == expected
    both = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert both["clientVersion"]["gitVersion"] == expected
    assert both["serverVersion"]["gitVersion"] == expected


def test_service_account_token_is_refused_until_rbac_grants(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("create", "serviceaccount", "reader", namespace=namespace)
    token = cluster.kubectl(
        "create", "token", "reader", "--duration", "10m", namespace=namespace
    ).stdout.strip()
    core = client.CoreV1Api(cluster.token_client(token))

    # Authenticated (the token is valid) but authorized for nothing.
    review = json.loads(
        cluster.kubectl(
            "create", "-f", "-", "-o", "json",
            input=json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                              "spec": {"token": token}}),
        ).stdout
    )  # fmt: skip
    assert review["status"]["authenticated"] is True
    assert review["status"]["user"]["username"] == f"system:serviceaccount:{namespace}:reader"
    with pytest.raises(ApiException) as refused:
        core.list_namespaced_pod(namespace)
    assert refused.value.status == 403

    cluster.kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", namespace=namespace)
    cluster.kubectl(
        "create", "rolebinding", "reader-reads-pods", "--role=pod-reader",
        f"--serviceaccount={namespace}:reader", namespace=namespace,
    )  # fmt: skip
    deadline = time.monotonic() + 15  # RBAC changes reach the authorizer's cache quickly, not instantly
    while True:
        try:
            pods = core.list_namespaced_pod(namespace)
            break
        except ApiException as exc:
            if exc.status != 403 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert pods.items == []
    # ...and still nothing beyond the grant: other resources, other namespaces.
    with pytest.raises(ApiException) as secrets:
        core.list_namespaced_secret(namespace)
    assert secrets.value.status == 403
    with pytest.raises(ApiException) as elsewhere:
        core.list_namespaced_pod("default")
    assert elsewhere.value.status == 403


def test_a_crd_can_be_created_and_used(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    group = f"g{uuid.uuid4().hex[:8]}.harness.pfo.dev"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {"size": {"type": "integer", "minimum": 1, "default": 3}},
                                },
                                "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                            },
                        }
                    },
                }
            ],
        },
    }
    (tmp_path / "widgets.yaml").write_text(json.dumps(crd))
    try:
        # install_crds returns once the resource is served: usable by name at once.
        assert cluster.install_crds(tmp_path) == [f"widgets.{group}"]
        assert cluster.kubectl("get", f"widgets.{group}", namespace=namespace).returncode == 0
        api = client.CustomObjectsApi(cluster.api_client())
        body = {
            "apiVersion": f"{group}/v1",
            "kind": "Widget",
            "metadata": {"name": "w1"},
            "spec": {"size": 5},
        }
        created = api.create_namespaced_custom_object(group, "v1", namespace, "widgets", body)
        assert created["spec"]["size"] == 5

        bad = {**body, "metadata": {"name": "w2"}, "spec": {"size": 0}}
        with pytest.raises(ApiException) as invalid:
            api.create_namespaced_custom_object(group, "v1", namespace, "widgets", bad)
        assert invalid.value.status == 422
        assert "spec.size" in invalid.value.body

        # The status subresource: a status write through it sticks, spec changes there are ignored.
        api.patch_namespaced_custom_object_status(
            group, "v1", namespace, "widgets", "w1", {"status": {"phase": "Ready"}, "spec": {"size": 9}}
        )
        got = api.get_namespaced_custom_object(group, "v1", namespace, "widgets", "w1")
        assert got["status"] == {"phase": "Ready"}
        assert got["spec"]["size"] == 5
    finally:
        cluster.kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


def test_deleting_an_owner_deletes_its_pods(cluster: Cluster, namespace: str) -> None:
    owner = json.loads(
        cluster.kubectl("create", "configmap", "owner", "-o", "json", namespace=namespace).stdout
    )
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    for i in range(2):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"owned-{i}", "ownerReferences": [ref]},
            "spec": {"containers": [{"name": "main", "image": "fake"}], "nodeName": cluster.cpu_nodes[0]},
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(pod), namespace=namespace)
    cluster.kubectl("create", "configmap", "bystander", namespace=namespace)
    for i in range(2):
        cluster.wait_pod_phase(namespace, f"owned-{i}", "Running")

    cluster.kubectl("delete", "configmap", "owner", namespace=namespace)
    cluster.wait_for(
        "the garbage collector to delete the owned pods",
        lambda: cluster.kubectl("get", "pods", "-o", "name", namespace=namespace).stdout.strip() == "",
        timeout=60,
    )
    assert cluster.kubectl("get", "configmap", "bystander", namespace=namespace, check=False).returncode == 0


def test_a_second_cluster_coexists_and_stops_without_leftovers(cluster: Cluster, tmp_path: Path) -> None:
    second = localcluster.start(tmp_path / "second", real_node=False)  # test_realnode.py runs two nodes
    try:
        assert second.server != cluster.server
        assert second.kubectl("get", "--raw", "/readyz").stdout == "ok"
        assert cluster.kubectl("get", "--raw", "/readyz").stdout == "ok"
        pids = [p["pid"] for p in second.state["processes"]]
        assert len(pids) == 5  # etcd, apiserver, controller-manager, scheduler, kwok
    finally:
        second.stop()
    assert not (tmp_path / "second").exists()
    assert [pid for pid in pids if Path(f"/proc/{pid}").exists()] == []
    assert cluster.kubectl("get", "--raw", "/readyz").stdout == "ok"
