"""The real node (localcluster/realnode/): a kubelet v1.35.4 with containerd and runc runs pods
from the images built here (the operator image: Python, dash and coreutils on a read-only Debian
base), with bridge networking, the API server reachable at the `kubernetes` Service, GPUs as an
extended resource, volumes, logs and termination messages through the API server, and its
teardown leaves the host as it found it."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import localcluster
from localcluster import Cluster, realnode
from localcluster.realnode import apiservice
from localcluster.realnode.hoststate import HostRegistry
from tests.localcluster.test_control_plane import pinned_k8s_version


@pytest.fixture(scope="module")
def image(cluster: Cluster) -> str:
    """The operator image, imported into the node's containerd: its reference."""
    (built,) = cluster.load_images(["operator"])
    return built.reference


def python(code: str) -> list[str]:
    return ["python", "-c", code]


def node_pod(
    cluster: Cluster, name: str, image: str, script: str | list[str] | None = None, **spec: Any
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image, "imagePullPolicy": "Never"}
    if isinstance(script, list):
        container["command"] = script
    elif script is not None:
        container["command"] = ["/bin/sh", "-c", script]
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "containers": [container],
            **cluster.real_node_pod_spec_extras(),
            **spec,
        },
    }


def create(cluster: Cluster, namespace: str, *objects: dict[str, Any]) -> None:
    items = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(items), namespace=namespace)


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    (status,) = pod["status"]["containerStatuses"]
    return status["state"]["terminated"]


def test_node_registers_ready_with_its_label_and_taint(cluster: Cluster) -> None:
    assert cluster.real_node == realnode.NODE_NAME
    node = json.loads(cluster.kubectl("get", "node", realnode.NODE_NAME, "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    assert node["metadata"]["labels"][realnode.LABEL] == "true"
    assert {"key": realnode.LABEL, "value": "true", "effect": "NoSchedule"} in node["spec"]["taints"]
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == pinned_k8s_version()
    assert info["containerRuntimeVersion"].startswith("containerd://1.")
    assert {"type": "InternalIP", "address": "127.0.0.1"} in node["status"]["addresses"]
    assert (
        int(node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]) == cluster.state["ports"]["kubelet"]
    )


def test_only_pods_that_tolerate_the_taint_land_there(cluster: Cluster, namespace: str, image: str) -> None:
    pod = node_pod(cluster, "no-toleration", image, "true")
    del pod["spec"]["tolerations"]
    create(cluster, namespace, pod)

    def unschedulable(p: dict[str, Any]) -> bool:
        conditions = p.get("status", {}).get("conditions", [])
        return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conditions)

    p = cluster.wait_pod(namespace, "no-toleration", unschedulable, "Unschedulable")
    assert "untolerated taint" in json.dumps(p["status"]["conditions"])
    assert "nodeName" not in p["spec"]


def test_a_container_runs_to_succeeded_with_logs_and_message(
    cluster: Cluster, namespace: str, image: str
) -> None:
    script = (
        'echo "hello from $(cat /etc/hostname)"; echo "to stderr" >&2; printf done > /dev/termination-log'
    )
    t0 = time.monotonic()
    create(cluster, namespace, node_pod(cluster, "hello", image, script))
    pod = cluster.wait_pod_phase(namespace, "hello", "Succeeded", timeout=60)
    print(f"pod create -> Succeeded: {time.monotonic() - t0:.1f}s")
    assert pod["spec"]["nodeName"] == realnode.NODE_NAME
    state = terminated(pod)
    assert (state["exitCode"], state["reason"], state["message"]) == (0, "Completed", "done")
    assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    assert "sha256:" in pod["status"]["containerStatuses"][0]["imageID"]  # the imported image's digest
    logs = cluster.kubectl("logs", "hello", namespace=namespace).stdout
    assert sorted(logs.splitlines()) == ["hello from hello", "to stderr"]  # two pipes: either order


def test_failing_containers_report_their_exit_code(cluster: Cluster, namespace: str, image: str) -> None:
    fallback = {"terminationMessagePolicy": "FallbackToLogsOnError"}
    create(
        cluster, namespace,
        node_pod(cluster, "exit-3", image, "echo failing; exit 3"),
        # (bytes * n writes every page; a bytearray of zeros would stay untouched and unbilled)
        node_pod(cluster, "oom", image, python("b = b'x' * (256 << 20)"),
                 container={"resources": {"limits": {"memory": "48Mi"}}}),
        node_pod(cluster, "fallback", image, "echo last words; exit 1", container=fallback),
        node_pod(cluster, "no-such-command", image, container={"command": ["/no/such/binary"]}),
    )  # fmt: skip
    exit_3 = terminated(cluster.wait_pod_phase(namespace, "exit-3", "Failed", timeout=60))
    assert (exit_3["exitCode"], exit_3["reason"]) == (3, "Error")
    oom = terminated(cluster.wait_pod_phase(namespace, "oom", "Failed", timeout=60))
    assert (oom["exitCode"], oom["reason"]) == (137, "OOMKilled")  # the memory limit is real
    fallback_state = terminated(cluster.wait_pod_phase(namespace, "fallback", "Failed", timeout=60))
    assert fallback_state["message"] == "last words\n"
    start_error = terminated(cluster.wait_pod_phase(namespace, "no-such-command", "Failed", timeout=60))
    assert (start_error["exitCode"], start_error["reason"]) == (128, "StartError")
    assert "/no/such/binary" in start_error["message"]


GPU = localcluster.GPU_RESOURCE


def test_an_absent_image_with_pull_policy_never(cluster: Cluster, namespace: str) -> None:
    create(cluster, namespace, node_pod(cluster, "absent", "pfo.local/absent:0.0.1", "true"))

    def waiting_reason(p: dict[str, Any]) -> bool:
        statuses = p.get("status", {}).get("containerStatuses", [])
        return bool(statuses) and statuses[0]["state"].get("waiting", {}).get("reason") == "ErrImageNeverPull"

    pod = cluster.wait_pod(namespace, "absent", waiting_reason, "waiting with ErrImageNeverPull", timeout=60)
    assert pod["status"]["phase"] == "Pending"
    assert "pfo.local/absent:0.0.1" in pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]


def test_pods_reach_each_other_and_the_host_reaches_them(
    cluster: Cluster, namespace: str, image: str
) -> None:
    server = node_pod(
        cluster, "server", image,
        "echo 'served by pod' > /www/index.html && exec python -m http.server 8080 -d /www",
        volumes=[{"name": "www", "emptyDir": {}}],
        container={"readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                   "volumeMounts": [{"name": "www", "mountPath": "/www"}]},
    )  # fmt: skip
    create(cluster, namespace, server)
    pod = cluster.wait_pod(namespace, "server", pod_ready, "Ready", timeout=60)
    ip = pod["status"]["podIP"]
    node = realnode.RealNode.load(cluster.state_dir)
    assert node is not None
    assert ip in _subnet(node)
    fetch = f"import urllib.request as r; print(r.urlopen('http://{ip}:8080/').read().decode(), end='')"
    client = node_pod(cluster, "client", image, python(fetch))
    create(cluster, namespace, client)
    cluster.wait_pod_phase(namespace, "client", "Succeeded", timeout=60)
    assert cluster.kubectl("logs", "client", namespace=namespace).stdout == "served by pod\n"
    client_ip = cluster.get_pod(namespace, "client")["status"]["podIP"]  # type: ignore[index]
    assert client_ip != ip and client_ip in _subnet(node)
    # The bridge holds the subnet's first address, so the host reaches pods directly.
    with urllib.request.urlopen(f"http://{ip}:8080/index.html", timeout=5) as response:
        assert response.read() == b"served by pod\n"


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def _subnet(node: realnode.RealNode) -> Any:
    import ipaddress

    net = ipaddress.ip_network(node.info["subnet"])
    return {str(h) for h in net.hosts()}


def test_a_persistent_volume_on_the_node(cluster: Cluster, namespace: str, image: str) -> None:
    """Cluster.create_node_pvc: a `local` PersistentVolume on the node, bind-mounted by the kubelet,
    which gives the pod's fsGroup write access (the image runs as 1000, the folder is root's)."""
    folder = cluster.create_node_pvc(namespace, "data")
    (folder / "input.txt").write_text("from the host\n")
    pod = node_pod(
        cluster, "writer", image, "cat /data/input.txt; echo written > /data/output.txt; id -u",
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        securityContext={"fsGroup": 2000},
    )  # fmt: skip
    create(cluster, namespace, pod)
    cluster.wait_pod_phase(namespace, "writer", "Succeeded", timeout=60)
    assert cluster.kubectl("logs", "writer", namespace=namespace).stdout == "from the host\n1000\n"
    assert (folder / "output.txt").read_text() == "written\n"
    assert (folder.stat().st_gid, (folder / "output.txt").stat().st_gid) == (2000, 2000)


def test_pods_reach_the_api_server_at_the_kubernetes_service(
    cluster: Cluster, namespace: str, image: str
) -> None:
    """In-cluster configuration works as on a real cluster: KUBERNETES_SERVICE_HOST/PORT (the
    `kubernetes` Service's ClusterIP, routed to the API server by the node: apiservice.py), the
    pod's ServiceAccount token and the cluster CA from its projected volume."""
    code = (
        "import os; from kubernetes import client, config; config.load_incluster_config(); "
        "print(os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT']); "
        "print(client.VersionApi().get_code().git_version); "
        f"print(len(client.CoreV1Api().list_namespaced_pod('{namespace}').items))"
    )
    cluster.kubectl(
        "create", "rolebinding", "view", "--clusterrole=view", f"--serviceaccount={namespace}:default",
        namespace=namespace,
    )  # fmt: skip
    create(cluster, namespace, node_pod(cluster, "incluster", image, python(code)))
    cluster.wait_pod_phase(namespace, "incluster", "Succeeded", timeout=60)
    lines = cluster.kubectl("logs", "incluster", namespace=namespace).stdout.splitlines()
    assert lines == [f"{apiservice.SERVICE_IP} {apiservice.SERVICE_PORT}", pinned_k8s_version(), "1"]


def test_gpus_are_an_extended_resource_that_pods_run_on_cpu(
    cluster: Cluster, namespace: str, image: str
) -> None:
    """The node advertises nvidia.com/gpu (a PATCH of its status capacity) and kubelet 1.35 keeps
    it through its own status updates; a pod asking for GPUs is placed there, admitted and runs
    (without devices), and the scheduler counts the node's GPUs."""
    gpus = localcluster.REAL_NODE_GPUS

    def node_gpus() -> tuple[str | None, str | None, str]:
        node = json.loads(cluster.kubectl("get", "node", realnode.NODE_NAME, "-o", "json").stdout)
        heartbeat = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")["lastHeartbeatTime"]
        status = node["status"]
        return status["capacity"].get(GPU), status["allocatable"].get(GPU), heartbeat

    before = node_gpus()
    assert before[:2] == (str(gpus), str(gpus))
    wants = {"resources": {"limits": {GPU: str(gpus)}}}
    create(
        cluster, namespace,
        node_pod(cluster, "gpu", image, "sleep 2; ls /dev | grep -c nvidia || true", container=wants),
        node_pod(cluster, "one-too-many", image, "true", container={"resources": {"limits": {GPU: "1"}}}),
    )  # fmt: skip
    pod = cluster.wait_pod_phase(namespace, "gpu", "Succeeded", timeout=60)
    assert pod["spec"]["nodeName"] == realnode.NODE_NAME
    assert cluster.kubectl("logs", "gpu", namespace=namespace).stdout == "0\n"  # no device: CPU only
    # While "gpu" held both, the scheduler had no room for a third; it runs once they are free.
    waited = cluster.wait_pod_phase(namespace, "one-too-many", "Succeeded", timeout=60)
    scheduled = next(c for c in waited["status"]["conditions"] if c["type"] == "PodScheduled")
    assert scheduled["status"] == "True"
    # A status update of the kubelet's own (heartbeat every 10 s) keeps the resource.
    cluster.wait_for("a node status update", lambda: node_gpus()[2] != before[2], timeout=30)
    assert node_gpus()[:2] == (str(gpus), str(gpus))


# --------------------------------------------------------------------- host state
# Host-wide paths a kubelet, containerd or the CNI plugins use by default: the node either keeps
# them private or removes them again.
HOST_PATHS = (
    "/var/log/containers", "/var/log/pods", "/run/containerd", "/var/lib/cni", "/run/pfo-realnode",
    "/var/run/netns", "/var/lib/kubelet", "/etc/cni", "/opt/cni", "/opt/containerd", "/var/lib/containerd",
    "/etc/kubernetes", "/usr/libexec/kubernetes",
)  # fmt: skip


def host_snapshot(node_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    """What a node may leave behind on the host: processes naming its directory, mounts under it,
    its bridge and veths, its cgroups in every hierarchy, links to its logs, the kubelet's sysctls
    and what lies in the host-wide paths a kubelet, containerd or CNI plugin use by default."""
    processes = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if f"{node_dir}/" in cmdline:
                processes.append(cmdline)
    mounts = [line for line in Path("/proc/mounts").read_text().splitlines() if f" {node_dir}" in line]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    cgroups = [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{info['cgroup_root'].lstrip('/')}")]
    logs = Path("/var/log/containers")
    log_links = [str(p) for p in logs.iterdir() if str(node_dir) in os.readlink(p)] if logs.is_dir() else []
    return {
        "processes": processes,
        "mounts": mounts,
        "bridge": [line for line in links.splitlines() if info["bridge"] in line],
        "veths of the bridge": [line for line in links.splitlines() if f"master {info['bridge']}" in line],
        "cgroups": cgroups,
        "log links": log_links,
        "sysctls": HostRegistry().read_sysctls(),
        "nftables": subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout,
        "host paths": {d: _listing(Path(d)) for d in HOST_PATHS},
    }


def _listing(path: Path) -> list[str] | None:
    """Everything under `path` (None if it does not exist)."""
    return sorted(str(p) for p in path.rglob("*")) if path.exists() else None


def run_pods_for_teardown(cluster: Cluster, namespace: str, image: str) -> None:
    """Pods that keep running into the teardown: a server with an emptyDir and a Secret volume
    (tmpfs mounts under the kubelet's directory) and a sleeper in its own network namespace."""
    cluster.kubectl("create", "namespace", namespace)
    cluster.wait_for(
        "the default ServiceAccount",
        lambda: cluster.kubectl("get", "sa", "default", namespace=namespace, check=False).returncode == 0,
    )
    cluster.kubectl("create", "secret", "generic", "s", "--from-literal=k=v", namespace=namespace)
    server = node_pod(
        cluster, "server", image, "exec python -m http.server 8080 -d /scratch",
        volumes=[{"name": "scratch", "emptyDir": {"medium": "Memory"}},
                 {"name": "secret", "secret": {"secretName": "s"}}],
        container={"volumeMounts": [{"name": "scratch", "mountPath": "/scratch"},
                                    {"name": "secret", "mountPath": "/secret"}]},
    )  # fmt: skip
    sleeper = node_pod(cluster, "sleeper", image, "exec sleep 3600")
    sleeper["spec"]["terminationGracePeriodSeconds"] = 30  # the teardown must not wait for it
    create(cluster, namespace, server, sleeper)
    for name in ("server", "sleeper"):
        cluster.wait_pod_phase(namespace, name, "Running", timeout=60)


@pytest.mark.cluster
@pytest.mark.pristine_host
def test_teardown_leaves_the_host_as_it_was() -> None:
    """Start a cluster with a real node, run pods, stop it: no process, mount, bridge, veth,
    cgroup or log link of it is left, and the sysctls the kubelet set are back (when no other
    node runs on this host; otherwise they must stay as the other node needs them)."""
    state_dir = Path(tempfile.mkdtemp(prefix="pfo-cluster-teardown-"))
    node_dir = (state_dir / "node").resolve()
    names = realnode.host_names(node_dir)
    alone = not HostRegistry().live_nodes()
    before = host_snapshot(node_dir, names)
    try:
        cluster = localcluster.start(state_dir, owner_pid=os.getpid(), gpu_nodes=1)
        (image,) = cluster.load_images(["operator"])
        run_pods_for_teardown(cluster, "teardown", image.reference)
        during = host_snapshot(node_dir, names)
        # The snapshot sees what the node adds, so an equal snapshot afterwards means it is gone.
        assert during["processes"] and during["mounts"] and during["bridge"] and during["cgroups"]
        assert during["nftables"] != before["nftables"]  # the node's table (apiservice.py)
        assert len(during["veths of the bridge"]) == 2 and len(during["log links"]) == 2
        if alone:
            assert during["sysctls"] != before["sysctls"], (
                "the kubelet changed no sysctl: nothing to restore?"
            )
    finally:
        t0 = time.monotonic()
        localcluster.stop(state_dir)
        print(f"teardown with 2 running pods: {time.monotonic() - t0:.1f}s")
    after = host_snapshot(node_dir, names)
    assert after == before
    assert not state_dir.exists()


def test_two_nodes_side_by_side(cluster: Cluster, namespace: str, image: str) -> None:
    """A second cluster's node runs beside the session's (its own containerd, bridge, subnet and
    cgroups); stopping it leaves the session's node working."""
    state_dir = Path(tempfile.mkdtemp(prefix="pfo-cluster-second-"))
    try:
        second = localcluster.start(state_dir, owner_pid=os.getpid(), gpu_nodes=1)
        a, b = (realnode.RealNode.load(c.state_dir) for c in (cluster, second))
        assert a is not None and b is not None
        for key in ("bridge", "subnet", "cgroup_root", "network"):
            assert a.info[key] != b.info[key], key
        assert b.containerd.image_digest(image) is None, "images are per node"
        second.load_images(["operator"])
        second.kubectl("create", "namespace", namespace)
        second.wait_for(
            "the default ServiceAccount",
            lambda: second.kubectl("get", "sa", "default", namespace=namespace, check=False).returncode == 0,
        )
        script = "cat /proc/self/cgroup | grep memory"
        for c in (cluster, second):
            create(c, namespace, node_pod(c, "where", image, script))
        for c, node in ((cluster, a), (second, b)):
            c.wait_pod_phase(namespace, "where", "Succeeded", timeout=60)
            memory_cgroup = c.kubectl("logs", "where", namespace=namespace).stdout
            assert f":memory:{node.info['cgroup_root']}/kubepods/" in memory_cgroup
    finally:
        localcluster.stop(state_dir)
    assert realnode.RealNode.load(cluster.state_dir) is not None
    create(cluster, namespace, node_pod(cluster, "after", image, "echo still here"))
    cluster.wait_pod_phase(namespace, "after", "Succeeded", timeout=60)
    assert cluster.kubectl("logs", "after", namespace=namespace).stdout == "still here\n"
