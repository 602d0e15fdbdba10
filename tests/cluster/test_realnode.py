"""The real node (realnode.py): a kubelet v1.35.4 with containerd and runc runs pods from images
built and imported here, with bridge networking, volumes, logs and termination messages through
the API server, and its teardown leaves the host as it found it."""

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

from tests.cluster import nodeimages, realnode
from tests.cluster.harness import Cluster, stop_state_dir
from tests.cluster.hoststate import HostRegistry
from tests.cluster.test_control_plane import pinned_k8s_version


@pytest.fixture(scope="module")
def busybox(cluster: Cluster) -> str:
    """The busybox test image, imported into the node's containerd; its reference."""
    archive, ref = nodeimages.busybox_image()
    cluster.import_image(archive)
    return ref


def node_pod(
    cluster: Cluster, name: str, image: str, script: str | None = None, **spec: Any
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image, "imagePullPolicy": "Never"}
    if script is not None:
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


def test_only_pods_that_tolerate_the_taint_land_there(cluster: Cluster, namespace: str, busybox: str) -> None:
    pod = node_pod(cluster, "no-toleration", busybox, "true")
    del pod["spec"]["tolerations"]
    create(cluster, namespace, pod)

    def unschedulable(p: dict[str, Any]) -> bool:
        conditions = p.get("status", {}).get("conditions", [])
        return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conditions)

    p = cluster.wait_pod(namespace, "no-toleration", unschedulable, "Unschedulable")
    assert "untolerated taint" in json.dumps(p["status"]["conditions"])
    assert "nodeName" not in p["spec"]


def test_a_container_runs_to_succeeded_with_logs_and_message(
    cluster: Cluster, namespace: str, busybox: str
) -> None:
    script = 'echo "hello from $(hostname)"; echo "to stderr" >&2; printf done > /dev/termination-log'
    t0 = time.monotonic()
    create(cluster, namespace, node_pod(cluster, "hello", busybox, script))
    pod = cluster.wait_pod_phase(namespace, "hello", "Succeeded", timeout=60)
    print(f"pod create -> Succeeded: {time.monotonic() - t0:.1f}s")
    assert pod["spec"]["nodeName"] == realnode.NODE_NAME
    state = terminated(pod)
    assert (state["exitCode"], state["reason"], state["message"]) == (0, "Completed", "done")
    assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    assert "sha256:" in pod["status"]["containerStatuses"][0]["imageID"]  # the imported image's digest
    logs = cluster.kubectl("logs", "hello", namespace=namespace).stdout
    assert sorted(logs.splitlines()) == ["hello from hello", "to stderr"]  # two pipes: either order


def test_failing_containers_report_their_exit_code(cluster: Cluster, namespace: str, busybox: str) -> None:
    fallback = {"terminationMessagePolicy": "FallbackToLogsOnError"}
    create(
        cluster, namespace,
        node_pod(cluster, "exit-3", busybox, "echo failing; exit 3"),
        node_pod(cluster, "oom", busybox, "exec dd if=/dev/zero of=/dev/null bs=64M count=1",
                 container={"resources": {"limits": {"memory": "16Mi"}}}),
        node_pod(cluster, "fallback", busybox, "echo last words; exit 1", container=fallback),
        node_pod(cluster, "no-such-command", busybox, container={"command": ["/no/such/binary"]}),
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


def test_an_absent_image_with_pull_policy_never(cluster: Cluster, namespace: str) -> None:
    create(cluster, namespace, node_pod(cluster, "absent", "pfo.local/absent:0.0.1", "true"))

    def waiting_reason(p: dict[str, Any]) -> bool:
        statuses = p.get("status", {}).get("containerStatuses", [])
        return bool(statuses) and statuses[0]["state"].get("waiting", {}).get("reason") == "ErrImageNeverPull"

    pod = cluster.wait_pod(namespace, "absent", waiting_reason, "waiting with ErrImageNeverPull", timeout=60)
    assert pod["status"]["phase"] == "Pending"
    assert "pfo.local/absent:0.0.1" in pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]


def test_pods_reach_each_other_and_the_host_reaches_them(
    cluster: Cluster, namespace: str, busybox: str
) -> None:
    server = node_pod(
        cluster, "server", busybox,
        "mkdir /www && echo 'served by pod' > /www/index.html && exec httpd -f -p 8080 -h /www",
        container={"readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}},
    )  # fmt: skip
    create(cluster, namespace, server)
    pod = cluster.wait_pod(namespace, "server", pod_ready, "Ready", timeout=60)
    ip = pod["status"]["podIP"]
    node = realnode.RealNode.load(cluster.state_dir)
    assert node is not None
    assert ip in _subnet(node)
    # (nc rather than wget: busybox's wget looks up the "http" service through NSS, which a static
    # binary in an image without NSS libraries cannot load)
    request = r"printf 'GET /index.html HTTP/1.0\r\n\r\n'"
    client = node_pod(cluster, "client", busybox, f"{request} | nc -w 5 {ip} 8080 | tail -n 1")
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


def test_a_persistent_volume_on_the_node(cluster: Cluster, namespace: str, busybox: str) -> None:
    folder = cluster.state_dir / "volumes" / namespace
    folder.mkdir(parents=True)
    (folder / "input.txt").write_text("from the host\n")
    pv_name = f"real-{namespace}"
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "local": {"path": str(folder)},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [realnode.NODE_NAME]}
            ]}]}},
            "claimRef": {"namespace": namespace, "name": "data"},
        },
    }  # fmt: skip
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "volumeName": pv_name,
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    pod = node_pod(
        cluster, "writer", busybox, "cat /data/input.txt; echo written > /data/output.txt",
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
    )  # fmt: skip
    create(cluster, namespace, pv, pvc)
    try:
        create(cluster, namespace, pod)
        cluster.wait_pod_phase(namespace, "writer", "Succeeded", timeout=60)
        assert cluster.kubectl("logs", "writer", namespace=namespace).stdout == "from the host\n"
        assert (folder / "output.txt").read_text() == "written\n"
    finally:
        cluster.kubectl("delete", "pod", "writer", "--wait=true", namespace=namespace, check=False)
        cluster.kubectl("delete", "pvc", "data", "--wait=false", namespace=namespace, check=False)
        cluster.kubectl("delete", "pv", pv_name, "--wait=false", check=False)


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
        cluster, "server", image, "exec httpd -f -p 8080 -h /scratch",
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
        cluster = Cluster.start(state_dir, owner_pid=os.getpid(), gpu_nodes=1)
        archive, image = nodeimages.busybox_image()
        cluster.import_image(archive)
        run_pods_for_teardown(cluster, "teardown", image)
        during = host_snapshot(node_dir, names)
        # The snapshot sees what the node adds, so an equal snapshot afterwards means it is gone.
        assert during["processes"] and during["mounts"] and during["bridge"] and during["cgroups"]
        assert len(during["veths of the bridge"]) == 2 and len(during["log links"]) == 2
        if alone:
            assert during["sysctls"] != before["sysctls"], (
                "the kubelet changed no sysctl: nothing to restore?"
            )
    finally:
        t0 = time.monotonic()
        stop_state_dir(state_dir)
        print(f"teardown with 2 running pods: {time.monotonic() - t0:.1f}s")
    after = host_snapshot(node_dir, names)
    assert after == before
    assert not state_dir.exists()


def test_two_nodes_side_by_side(cluster: Cluster, namespace: str, busybox: str) -> None:
    """A second cluster's node runs beside the session's (its own containerd, bridge, subnet and
    cgroups); stopping it leaves the session's node working."""
    state_dir = Path(tempfile.mkdtemp(prefix="pfo-cluster-second-"))
    try:
        second = Cluster.start(state_dir, owner_pid=os.getpid(), gpu_nodes=1)
        a, b = (realnode.RealNode.load(c.state_dir) for c in (cluster, second))
        assert a is not None and b is not None
        for key in ("bridge", "subnet", "cgroup_root", "network"):
            assert a.info[key] != b.info[key], key
        assert "pfo.local/busybox" not in " ".join(b.containerd.images()), "images are per node"
        archive, image = nodeimages.busybox_image()
        second.import_image(archive)
        second.kubectl("create", "namespace", namespace)
        second.wait_for(
            "the default ServiceAccount",
            lambda: second.kubectl("get", "sa", "default", namespace=namespace, check=False).returncode == 0,
        )
        script = "cat /proc/self/cgroup | grep memory"
        for c in (cluster, second):
            create(c, namespace, node_pod(c, "where", busybox, script))
        for c, node in ((cluster, a), (second, b)):
            c.wait_pod_phase(namespace, "where", "Succeeded", timeout=60)
            memory_cgroup = c.kubectl("logs", "where", namespace=namespace).stdout
            assert f":memory:{node.info['cgroup_root']}/kubepods/" in memory_cgroup
    finally:
        stop_state_dir(state_dir)
    assert realnode.RealNode.load(cluster.state_dir) is not None
    create(cluster, namespace, node_pod(cluster, "after", busybox, "echo still here"))
    cluster.wait_pod_phase(namespace, "after", "Succeeded", timeout=60)
    assert cluster.kubectl("logs", "after", namespace=namespace).stdout == "still here\n"
